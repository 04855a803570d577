"""Checkpoints (safe loading, round trips), the Predictor API on every image type, and the visualisation."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgeseg.checkpoints import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    convert_checkpoint,
    load_model,
    save_checkpoint,
)
from bridgeseg.images import to_tensor
from bridgeseg.models import SegmentationModel, create_model
from bridgeseg.predictor import Predictor
from bridgeseg.visualize import colorize, overlay, palette
from tests.conftest import CLASSES

TINY = dict(backbone="test_resnet", fusion_dim=32, decoder_channels=16)


def tiny(method: str = "bridge", class_embeddings: torch.Tensor | None = None, **options) -> SegmentationModel:
    return create_model(method, class_embeddings=class_embeddings, **(TINY | {"classes": CLASSES} | options)).eval()


def logits(model: SegmentationModel, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


@pytest.fixture(scope="module")
def open_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bridge checkpoint with a real (offline) text encoder, for open-vocabulary tests."""
    return save_checkpoint(tiny("bridge", text_encoder="minilm"), tmp_path_factory.mktemp("open") / "model")


@pytest.fixture(scope="module")
def open_vocab(open_vocab_dir: Path) -> Predictor:
    return Predictor.from_checkpoint(open_vocab_dir)


# -- checkpoints --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bridge", "lseg", "denseclip", "fpn"])
def test_round_trip_gives_identical_logits(method: str, class_embeddings: torch.Tensor, tmp_path: Path) -> None:
    model = tiny(method, class_embeddings)
    save_checkpoint(model, tmp_path / "model")
    images = torch.rand(2, 3, 64, 96)
    expected = logits(model, images)
    for path in (tmp_path / "model", tmp_path / "model" / WEIGHTS_NAME, tmp_path / "model" / CONFIG_NAME):
        loaded = load_model(path)
        assert type(loaded) is type(model) and loaded.classes == CLASSES and not loaded.training
        assert torch.equal(logits(loaded, images), expected), path


def test_checkpoint_folder_carries_its_metadata(class_embeddings: torch.Tensor, tmp_path: Path) -> None:
    from safetensors import safe_open

    model = tiny("bridge", class_embeddings, templates=["a photo of a {}."])
    save_checkpoint(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["format"] == "bridgeseg" and config["format_version"] == FORMAT_VERSION
    assert config["bridgeseg_version"] and config["method"] == "bridge" and config["open_vocabulary"] is True
    assert config["classes"] == CLASSES and config["model"]["classes"] == CLASSES
    assert config["text"]["encoder"] == "minilm" and config["text"]["templates"] == ["a photo of a {}."]
    assert config["text"]["prompt_names"] == CLASSES and config["text"]["embedding_dim"] == 384
    assert config["normalization"] == {"mean": list(model.backbone.mean), "std": list(model.backbone.std)}
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as file:
        keys = set(file.keys())
        assert torch.equal(file.get_tensor("class_embeddings"), class_embeddings)
    assert not any(key.startswith("text_encoder.") for key in keys)


def test_weights_file_alone_and_interrupted_save(class_embeddings: torch.Tensor, tmp_path: Path, caplog) -> None:
    old, new = tiny("bridge", class_embeddings), tiny("bridge", class_embeddings, fusion_blocks=1)
    save_checkpoint(old, tmp_path / "old")
    save_checkpoint(new, tmp_path / "new")
    images = torch.rand(1, 3, 64, 64)

    # The weights file keeps a copy of the config: it loads on its own.
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((tmp_path / "new" / WEIGHTS_NAME).read_bytes())
    assert torch.equal(logits(load_model(alone), images), logits(new, images))

    # New weights beside an old config.json (a save killed between the two files): the weights' config wins.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / WEIGHTS_NAME).write_bytes((tmp_path / "new" / WEIGHTS_NAME).read_bytes())
    (mixed / CONFIG_NAME).write_bytes((tmp_path / "old" / CONFIG_NAME).read_bytes())
    with caplog.at_level(logging.WARNING, logger="bridgeseg.checkpoints"):
        loaded = load_model(mixed)
    assert loaded.config.fusion_blocks == 1 and "different saves" in caplog.text


def test_lightning_checkpoint_loads_and_converts(tmp_path: Path) -> None:
    from bridgeseg.engine.module import SegmentationTask

    module = SegmentationTask(net={"method": "bridge", "text_encoder": "minilm", **TINY}, classes=CLASSES)
    ckpt = tmp_path / "best.ckpt"
    optimizer = torch.optim.AdamW(module.parameters())
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "optimizer_states": [optimizer.state_dict()],
        },
        ckpt,
    )
    images = torch.rand(1, 3, 64, 64)
    expected = logits(module.model, images)

    loaded = load_model(ckpt)
    assert loaded.classes == CLASSES and loaded.text_encoder is None  # embeddings come from the checkpoint
    assert torch.equal(logits(loaded, images), expected)

    out = convert_checkpoint(ckpt, tmp_path / "model")
    assert torch.equal(logits(load_model(out), images), expected)

    with pytest.raises(CheckpointError, match="holds a 'bridge' model, expected 'lseg'"):
        load_model(ckpt, method="lseg")


class _TouchesAFile:
    """A pickle payload that would create `path` if it were ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_without_running(container: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"model.x": _TouchesAFile(marker)}, "hyper_parameters": {"net": {}}}
    if container == "torch.save":
        torch.save(payload, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="not a safe checkpoint") as error:
        load_model(checkpoint)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_broken_checkpoints_give_one_line_errors(class_embeddings: torch.Tensor, tmp_path: Path) -> None:
    save_checkpoint(tiny("bridge", class_embeddings), tmp_path / "good")
    data = (tmp_path / "good" / WEIGHTS_NAME).read_bytes()
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    (tmp_path / "truncated" / CONFIG_NAME).write_bytes((tmp_path / "good" / CONFIG_NAME).read_bytes())
    good_ckpt = tmp_path / "good.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, good_ckpt)
    (tmp_path / "truncated.ckpt").write_bytes(good_ckpt.read_bytes()[:100])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all" * 10)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain_state_dict.pt")
    (tmp_path / "empty_folder").mkdir()
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / WEIGHTS_NAME).write_bytes(data)
    config = json.loads((tmp_path / "good" / CONFIG_NAME).read_text())
    (newer / CONFIG_NAME).write_text(json.dumps(config | {"format_version": FORMAT_VERSION + 1}))

    cases = {
        "missing": "no such checkpoint",
        "truncated": "corrupt or truncated",
        "truncated.ckpt": "corrupt or truncated",
        "empty.ckpt": "corrupt or truncated",
        "garbage.ckpt": "corrupt",
        "plain_state_dict.pt": "not a bridgeseg training checkpoint",
        "empty_folder": "not a checkpoint folder",
        "newer": "upgrade bridgeseg",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as error:
            load_model(tmp_path / name)
        assert "\n" not in str(error.value) and str(tmp_path / name) in str(error.value), name


# -- Predictor ----------------------------------------------------------------------------------------------------


def test_predict_accepts_every_image_type_at_any_size(class_embeddings: torch.Tensor, tmp_path: Path) -> None:
    predictor = Predictor(tiny("bridge", class_embeddings))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)  # sizes not divisible by 32
    Image.fromarray(rgb).save(tmp_path / "image.png")
    reference = predictor.predict(rgb).labels
    assert reference.shape == (45, 67) and np.issubdtype(reference.dtype, np.integer)

    same_pixels = {
        "path": tmp_path / "image.png",
        "str path": str(tmp_path / "image.png"),
        "PIL": Image.fromarray(rgb),
        "RGBA": np.concatenate([rgb, np.full((45, 67, 1), 7, np.uint8)], axis=-1),
        "float array": rgb.astype(np.float64) / 255.0,
        "tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,
        "batched tensor": torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0,
    }
    for name, image in same_pixels.items():
        np.testing.assert_array_equal(predictor.predict(image).labels, reference, err_msg=name)

    grey = rng.integers(0, 256, (33, 50), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (33, 50), dtype=np.uint16)
    others = {
        "greyscale": grey,
        "greyscale HxWx1": grey[..., None],
        "PIL L": Image.fromarray(grey),
        "uint16": grey16,
        "PIL I;16": Image.fromarray(grey16),
        "uint16 RGB": np.repeat(grey16[..., None], 3, axis=-1),
    }
    for name, image in others.items():
        assert predictor.predict(image).labels.shape == (33, 50), name
    np.testing.assert_array_equal(predictor.predict(grey16).labels, predictor.predict(Image.fromarray(grey16)).labels)


def test_predict_options_probabilities_and_areas(class_embeddings: torch.Tensor) -> None:
    predictor = Predictor(tiny("bridge", class_embeddings))
    image = torch.rand(3, 70, 90)
    prediction = predictor.predict(image, return_probs=True)
    assert prediction.classes == CLASSES and prediction.probs.dtype == np.float32
    assert prediction.probs.shape == (3, 70, 90)
    np.testing.assert_allclose(prediction.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prediction.probs.argmax(0), prediction.labels)
    areas = prediction.areas()
    assert set(areas) <= set(CLASSES) and all(v > 0 for v in areas.values())
    assert sum(areas.values()) == pytest.approx(1.0)
    assert list(areas.values()) == sorted(areas.values(), reverse=True)
    assert predictor.predict(image).probs is None
    slid = predictor.predict(image, mode="slide", crop_size=64, stride=32, tta=True)
    assert slid.labels.shape == (70, 90)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((8, 8, 3), np.float32) + 2.0, ValueError, "scaled to"),
        (np.zeros((8, 8, 3), np.int64), ValueError, "dtype"),
        (np.zeros((3, 8, 8, 2), np.uint8), ValueError, "shape"),
        (np.zeros((0, 8), np.uint8), ValueError, "empty"),
        (torch.rand(5, 8, 8), ValueError, r"\[3, H, W\]"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN"),
        ([[0, 1]], TypeError, "unsupported image type"),
    ],
)
def test_bad_images_are_rejected_with_a_hint(image, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        to_tensor(image)


def test_open_vocabulary_takes_new_classes(open_vocab: Predictor) -> None:
    assert open_vocab.open_vocabulary and open_vocab.classes == CLASSES
    image = torch.rand(3, 64, 64)
    own = open_vocab.predict(image, return_probs=True)
    new = open_vocab.predict(image, classes=["dog", "car"], return_probs=True)
    other = open_vocab.predict(image, classes=["dog", "tree"], return_probs=True)
    assert new.classes == ["dog", "car"] and new.probs.shape == (2, 64, 64) and int(new.labels.max()) < 2
    assert not np.allclose(new.probs[0], other.probs[0])  # the other class changes the "dog" map too
    assert own.probs.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="duplicate"):
        open_vocab.predict(image, classes=["dog", "dog"])


@pytest.mark.parametrize("method", ["denseclip", "fpn"])
def test_closed_set_models_refuse_other_classes(method: str, class_embeddings: torch.Tensor) -> None:
    predictor = Predictor(tiny(method, class_embeddings))
    assert not predictor.open_vocabulary
    assert predictor.predict(torch.rand(3, 40, 40), classes=CLASSES).labels.shape == (40, 40)
    with pytest.raises(ValueError, match="closed-set"):
        predictor.predict(torch.rand(3, 40, 40), classes=["dog", "car"])


def test_unavailable_text_encoder_keeps_own_classes_working(
    class_embeddings: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridgeseg.models.methods.base as methods_base

    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise OSError("we have no network connection")

    monkeypatch.setattr(methods_base, "create_text_encoder", offline)
    model = tiny("bridge", class_embeddings, text_encoder="openclip:ViT-B-16:openai")
    predictor = Predictor.from_checkpoint(save_checkpoint(model, tmp_path))
    assert predictor.predict(torch.rand(3, 40, 40)).labels.shape == (40, 40)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"openclip:ViT-B-16:openai' is unavailable.*own classes still work"):
            predictor.predict(torch.rand(3, 40, 40), classes=["dog", "car"])
    assert len(attempts) == 1  # not retried for every image


def test_hub_mixin_saves_and_loads_offline(open_vocab: Predictor, tmp_path: Path) -> None:
    open_vocab.save_pretrained(tmp_path / "hub")
    assert {CONFIG_NAME, WEIGHTS_NAME} <= {p.name for p in (tmp_path / "hub").iterdir()}
    loaded = Predictor.from_pretrained(tmp_path / "hub")
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(logits(loaded.model, image), logits(open_vocab.model, image))


# -- visualisation ------------------------------------------------------------------------------------------------


def test_palette_is_distinct_and_stable() -> None:
    colours = palette(300)
    assert colours.shape == (300, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours[:150]}) == 150
    np.testing.assert_array_equal(palette(5), colours[:5])
    labels = np.array([[0, 1], [2, 255]])
    rendered = colorize(labels, 3)
    assert rendered.shape == (2, 2, 3) and tuple(rendered[1, 1]) == (0, 0, 0)
    np.testing.assert_array_equal(rendered[0, 1], colours[1])


def test_overlay_blends_and_adds_a_legend() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    labels = np.zeros((40, 60), np.int64)
    labels[:, 30:] = 2
    plain = overlay(image, labels, ["sky", "grass", "cat"], alpha=0.0, legend=False)
    np.testing.assert_array_equal(np.asarray(plain), image)
    opaque = overlay(torch.from_numpy(image).permute(2, 0, 1) / 255.0, labels, ["sky", "grass", "cat"], alpha=1.0)
    assert opaque.mode == "RGB" and opaque.width > 60 and opaque.height >= 40  # the legend panel
    np.testing.assert_array_equal(np.asarray(opaque)[:40, :60], colorize(labels, 3))
    with pytest.raises(ValueError, match="predict at the image's size"):
        overlay(image, labels[:10], ["sky", "grass", "cat"])
