"""The coarse ONNX form: logits before the final upsampling, and ONNX Runtime's exact fast labels from them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from bridgeseg.models.prediction import pad_to_multiple, segment
from bridgeseg.runtime.onnx import OnnxBackend, check_parity, export_onnx, read_metadata
from bridgeseg.runtime.predictor import Predictor
from tests.models.helpers import counting_backend, fit_two_regions
from tests.runtime.helpers import CLASSES, MAX_ABS_DIFF, MIN_ARGMAX_AGREEMENT, SIZES, tiny_model

# Odd sizes: padded to multiples of 32 and cropped back, so the fast path's crop is exercised.
ODD_SIZES = ((64, 64), (50, 70), (33, 97), (17, 5))


def _trained(method: str) -> torch.nn.Module:
    """A tiny model fitted to two coloured regions, so its labels have real boundaries."""
    torch.manual_seed(2)
    return fit_two_regions(tiny_model(method))


@pytest.fixture(scope="module")
def coarse_exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{(method, open_vocab, trained): (model, coarse path, full path)}."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("coarse")
    exports = {}
    for trained in (False, True):
        for method, open_vocab in FORMS:
            model = _trained(method) if trained else tiny_model(method).eval()
            name = f"{method}_{'open' if open_vocab else 'fixed'}_{'trained' if trained else 'random'}"
            coarse = export_onnx(model, folder / f"{name}_coarse.onnx", open_vocab=open_vocab, output="coarse_logits")
            full = export_onnx(model, folder / f"{name}.onnx", open_vocab=open_vocab)
            exports[(method, open_vocab, trained)] = (model, coarse, full)
    return exports


# lraspp: logits at stride 8 whatever the decoder stride.
FORMS = [("bridge", False), ("bridge", True), ("lseg", True), ("fpn", False), ("lraspp", False)]


@pytest.mark.parametrize(("method", "open_vocab"), FORMS)
def test_coarse_graph_matches_the_models_coarse_logits(coarse_exports: dict, method: str, open_vocab: bool) -> None:
    model, path, _ = coarse_exports[(method, open_vocab, False)]
    report = check_parity(model, path, sizes=SIZES, batch=2)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report
    metadata = read_metadata(path)
    assert metadata["output"] == "coarse_logits"
    assert metadata["logits_stride"] == model.logits_stride
    graph_output = onnx.load(str(path)).graph.output
    assert [item.name for item in graph_output] == ["coarse_logits"]


def test_a_graph_has_one_output_and_old_files_read_as_full_logits(coarse_exports: dict, tmp_path) -> None:
    _, _, full = coarse_exports[("bridge", False, False)]
    assert read_metadata(full)["output"] == "logits" and read_metadata(full)["logits_stride"] == 1
    proto = onnx.load(str(full))
    kept = [prop for prop in proto.metadata_props if prop.key not in ("output", "logits_stride")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)  # as written before the coarse form existed
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    backend = OnnxBackend(old)
    assert backend.output == "logits" and getattr(backend, "coarse_logits", None) is None


def test_unknown_output_is_rejected(coarse_exports: dict, tmp_path) -> None:
    model, _, _ = coarse_exports[("bridge", False, False)]
    with pytest.raises(ValueError, match="unknown output 'probs'"):
        export_onnx(model, tmp_path / "x.onnx", output="probs")


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize(
    ("method", "open_vocab"), [("bridge", False), ("lseg", True), ("fpn", False), ("lraspp", False)]
)
def test_onnx_fast_labels_equal_the_full_path(coarse_exports: dict, method: str, open_vocab: bool, trained) -> None:
    """The exact fast labels from the coarse graph are those of upsampling all classes, bit for bit."""
    _, path, _ = coarse_exports[(method, open_vocab, trained)]
    backend = OnnxBackend(path)
    embeddings = backend.text_embeddings(None)
    generator = torch.Generator().manual_seed(3)
    for size in ODD_SIZES:
        images = torch.rand(2, 3, *size, generator=generator)
        with torch.inference_mode():
            fast = segment(backend, images, embeddings)
            _, probs = segment(backend, images, embeddings, return_probs=True)  # the full path, all classes
            padded = pad_to_multiple(images, backend.size_multiple, backend.pixel_mean)
            coarse = backend.coarse_logits(padded, embeddings)
            full = F.interpolate(coarse, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.equal(fast, full.argmax(1)[..., : size[0], : size[1]]), size
        assert torch.equal(fast, probs.argmax(1)), size


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_coarse_and_full_graphs_give_the_same_labels(coarse_exports: dict, mode: str) -> None:
    """Both forms label a trained model's images alike, and as PyTorch does, whole and slide."""
    model, coarse, full = coarse_exports[("bridge", True, True)]
    image = torch.rand(3, 70, 100, generator=torch.Generator().manual_seed(4))
    options = {"mode": mode, "crop_size": 64, "stride": 40}
    from_coarse = Predictor.from_checkpoint(coarse).predict(image, **options).labels
    from_full = Predictor.from_checkpoint(full).predict(image, **options).labels
    expected = model.predict(image, **options)[0].numpy()
    assert from_coarse.shape == (70, 100)
    assert (from_coarse == from_full).mean() >= MIN_ARGMAX_AGREEMENT
    assert (from_coarse == expected).mean() >= MIN_ARGMAX_AGREEMENT
    assert len(np.unique(expected)) > 1  # the trained model draws boundaries, so the test can fail


def test_only_single_view_whole_labels_take_the_coarse_path(coarse_exports: dict) -> None:
    _, path, _ = coarse_exports[("lseg", True, False)]
    counting, calls = counting_backend(OnnxBackend, "_coarse_logits")  # bound to `coarse_logits` at load
    backend = counting(path)
    images = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        segment(backend, images, backend.text_embeddings(None))
        assert calls == ["coarse"]
        calls.clear()
        _, probs = segment(backend, images, backend.text_embeddings(None), return_probs=True)
    assert calls == ["full"] and probs.shape == (1, len(CLASSES), 40, 40)


def test_export_command_writes_the_coarse_form(coarse_exports: dict, tmp_path, monkeypatch, capsys) -> None:
    from bridgeseg import checkpoints
    from bridgeseg.cli.export import run as export_command
    from tests.runtime.helpers import export_args

    model = coarse_exports[("bridge", True, False)][0]
    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": model)
    target = tmp_path / "m.onnx"
    assert export_command(export_args(onnx=str(target), open_vocab=True, coarse_logits=True)) == 0
    assert "output coarse_logits" in capsys.readouterr().out
    assert read_metadata(target)["output"] == "coarse_logits"
