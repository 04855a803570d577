"""ONNX export: parity with PyTorch (onnxruntime), dynamic sizes and class counts, metadata, runtime, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bridgeseg.cli.export import run as export_command
from bridgeseg.runtime.onnx import OnnxBackend, check_parity, export_onnx, read_metadata
from bridgeseg.runtime.predictor import Predictor
from tests.runtime.helpers import (
    CLASSES,
    LIGHT_HEADS,
    MAX_ABS_DIFF,
    MIN_ARGMAX_AGREEMENT,
    SIZES,
    TEXT_DIM,
    export_args,
    tiny_model,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each tiny model exported once per form: {(method, open_vocab): (model, path)}."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx")
    models = {method: tiny_model(method) for method in ("bridge", "lseg", "fpn", *LIGHT_HEADS)}
    exports = {}
    forms = [("bridge", False), ("bridge", True), ("lseg", False), ("lseg", True), ("fpn", False)]
    for method, open_vocab in forms + [(method, False) for method in LIGHT_HEADS]:
        path = folder / f"{method}_{'open' if open_vocab else 'fixed'}.onnx"
        exports[(method, open_vocab)] = (models[method], export_onnx(models[method], path, open_vocab=open_vocab))
    return exports


@pytest.mark.parametrize(
    ("method", "open_vocab"), [("bridge", False), ("lseg", False), ("fpn", False), *[(m, False) for m in LIGHT_HEADS]]
)
def test_fixed_vocabulary_parity_at_other_sizes(exported: dict, method: str, open_vocab: bool) -> None:
    model, path = exported[(method, open_vocab)]
    report = check_parity(model, path, sizes=SIZES, batch=2)
    assert report.num_classes == len(CLASSES)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report


@pytest.mark.parametrize("method", ["bridge", "lseg"])
def test_open_vocabulary_parity_with_other_class_counts(exported: dict, method: str) -> None:
    model, path = exported[(method, True)]
    for num_classes in (5, 1):
        text_embeddings = F.normalize(torch.randn(num_classes, TEXT_DIM), dim=-1)
        report = check_parity(model, path, text_embeddings=text_embeddings, sizes=SIZES[:2])
        assert report.num_classes == num_classes
        assert report.max_abs_diff <= MAX_ABS_DIFF, report
        assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report


def test_graph_inputs_and_outputs_are_dynamic(exported: dict) -> None:
    import onnx

    def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    fixed = onnx.load(str(exported[("bridge", False)][1]))
    assert [i.name for i in fixed.graph.input] == ["images"]
    assert dims(fixed.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(fixed.graph.output[0]) == ["batch", len(CLASSES), "height", "width"]
    opened = onnx.load(str(exported[("bridge", True)][1]))
    assert [i.name for i in opened.graph.input] == ["images", "text_embeddings"]
    assert dims(opened.graph.input[1]) == ["num_classes", TEXT_DIM]
    assert dims(opened.graph.output[0]) == ["batch", "num_classes", "height", "width"]


def test_denseclip_fixed_vocabulary_parity(tmp_path) -> None:
    # Closed-set, with nn.MultiheadAttention over the h*w pixels and an interpolated positional grid.
    model = tiny_model("denseclip")
    path = export_onnx(model, tmp_path / "denseclip.onnx")
    report = check_parity(model, path, sizes=SIZES)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report
    with pytest.raises(ValueError, match="closed-set"):
        export_onnx(model, tmp_path / "open.onnx", open_vocab=True)
    with pytest.raises(ValueError, match="closed-set"):
        export_onnx(model, tmp_path / "new.onnx", classes=["dog", "tree"])
    assert not (tmp_path / "open.onnx").exists() and not (tmp_path / "new.onnx").exists()


def test_metadata_round_trip(exported: dict) -> None:
    model, path = exported[("bridge", True)]
    metadata = read_metadata(path)
    assert metadata["classes"] == CLASSES
    assert metadata["method"] == "bridge"
    assert metadata["text_encoder"] == model.config.text_encoder
    assert metadata["text_dim"] == TEXT_DIM
    assert metadata["open_vocab"] is True
    assert metadata["size_multiple"] == 32
    assert metadata["config"]["fusion_dim"] == 32
    np.testing.assert_array_equal(metadata["class_embeddings"], model.class_embeddings.numpy())
    fixed = read_metadata(exported[("fpn", False)][1])
    assert fixed["open_vocab"] is False and fixed["text_dim"] == 0 and "class_embeddings" not in fixed


def test_fixed_export_with_new_classes_bakes_their_embeddings(tmp_path, monkeypatch) -> None:
    model = tiny_model("bridge")
    new_classes = ["dog", "tree", "road", "car"]
    new_embeddings = F.normalize(torch.randn(len(new_classes), TEXT_DIM), dim=-1)
    # Stands in for the text encoder, which the tiny model does not load.
    monkeypatch.setattr(model, "text_embeddings", lambda classes=None: new_embeddings if classes else None)
    path = export_onnx(model, tmp_path / "new.onnx", classes=new_classes)
    assert read_metadata(path)["classes"] == new_classes
    report = check_parity(model, path, text_embeddings=new_embeddings, sizes=SIZES[:2])
    assert report.num_classes == len(new_classes)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report


def test_onnx_predictor_matches_segmentor_predict(exported: dict) -> None:
    model, path = exported[("lseg", True)]
    predictor = Predictor.from_checkpoint(path)
    assert predictor.classes == CLASSES and predictor.open_vocabulary
    image = torch.rand(3, 70, 100)  # not a multiple of 32: padded and cropped back
    for mode, tta in [("whole", False), ("slide", True)]:
        prediction = predictor.predict(image, mode=mode, tta=tta, crop_size=64, stride=40, return_probs=True)
        labels, probs = model.predict(image, mode=mode, flip=tta, crop_size=64, stride=40, return_probs=True)
        assert prediction.labels.shape == (70, 100)
        assert prediction.classes == CLASSES
        np.testing.assert_allclose(prediction.probs, probs[0].numpy(), atol=1e-5)
        assert (prediction.labels == labels[0].numpy()).mean() >= MIN_ARGMAX_AGREEMENT
        if not tta:  # one view: the labels come from the logits, without probabilities
            np.testing.assert_array_equal(predictor.predict(image, mode=mode).labels, prediction.labels)
    uint8_image = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert predictor.predict(uint8_image).labels.shape == (70, 100)
    assert sum(predictor.predict(image).areas().values()) == pytest.approx(1.0)


def test_onnx_predictor_embeds_new_classes_with_the_metadata_text_encoder(exported: dict, monkeypatch) -> None:
    import bridgeseg.runtime.onnx

    model, path = exported[("bridge", True)]
    new_classes = ["dog", "tree", "road", "car", "boat"]
    new_embeddings = F.normalize(torch.randn(len(new_classes), TEXT_DIM), dim=-1)
    requested = []

    class FakeEncoder:
        def encode(self, names: list[str], templates: list[str] | None = None) -> torch.Tensor:
            return new_embeddings[[new_classes.index(name) for name in names]]

    def fake_create_text_encoder(spec: str, templates: list[str] | None = None) -> FakeEncoder:
        requested.append(spec)
        return FakeEncoder()

    monkeypatch.setattr(bridgeseg.runtime.onnx.backend, "create_text_encoder", fake_create_text_encoder)
    predictor = Predictor.from_checkpoint(path)
    image = torch.rand(3, 64, 96)
    prediction = predictor.predict(image, classes=new_classes, return_probs=True)
    assert requested == [model.config.text_encoder]
    assert prediction.classes == new_classes and prediction.probs.shape == (len(new_classes), 64, 96)
    with torch.inference_mode():
        expected = model(image[None], new_embeddings).softmax(dim=1)[0].numpy()
    np.testing.assert_allclose(prediction.probs, expected, atol=1e-5)


def test_onnx_predictor_rejects_new_classes_for_fixed_vocabulary(exported: dict) -> None:
    predictor = Predictor.from_checkpoint(exported[("bridge", False)][1])
    assert not predictor.open_vocabulary
    with pytest.raises(ValueError, match="fixed vocabulary"):
        predictor.predict(np.zeros((32, 32, 3), np.uint8), classes=["dog"])
    with pytest.raises(ValueError, match="inference mode"):
        predictor.predict(np.zeros((32, 32, 3), np.uint8), mode="tiles")


def test_onnx_predictor_rejects_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="bridgeseg export"):
        OnnxBackend(tmp_path / "missing.onnx")
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["logits"])],
        "plain",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="no bridgeseg metadata"):
        OnnxBackend(tmp_path / "plain.onnx")


def test_export_command(exported: dict, tmp_path, monkeypatch, capsys) -> None:
    from bridgeseg import checkpoints

    model = exported[("lseg", True)][0]
    # The command imports the loader when it runs (its parser is built without torch): patch it at home.
    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": model)
    assert export_command(export_args(onnx=str(tmp_path / "m.onnx"), open_vocab=True)) == 0
    output = capsys.readouterr().out
    assert "m.onnx" in output and "torchscript exporter" in output and "argmax agreement 100.000 %" in output
    assert json.loads(json.dumps(read_metadata(tmp_path / "m.onnx")["classes"])) == CLASSES

    fpn = exported[("fpn", False)][0]
    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": fpn)
    with pytest.raises(ValueError, match="closed-set and cannot be exported with open-vocabulary inputs"):
        export_command(export_args(onnx=str(tmp_path / "f.onnx"), open_vocab=True))
    with pytest.raises(ValueError, match="closed-set"):
        export_command(export_args(onnx=str(tmp_path / "f.onnx"), classes="dog,tree"))


def test_cli_export_then_predict_with_onnx_runtime(exported: dict, tmp_path, capsys) -> None:
    from PIL import Image

    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.cli import main

    checkpoint = save_checkpoint(exported[("bridge", True)][0], tmp_path / "model")
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(onnx_path), "--open-vocab"]) == 0
    assert "parity with PyTorch" in capsys.readouterr().out
    converted = tmp_path / "converted"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(converted)]) == 0
    assert (converted / "model.safetensors").is_file()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(onnx_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_mask.png", "a_overlay.png"]
    with Image.open(out / "a_mask.png") as mask:
        assert mask.size == (70, 50)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give --onnx FILE"),
        ({"format": "onnx"}, "needs --onnx"),
        ({"format": "safetensors"}, "needs --out"),
        ({"format": "safetensors", "out": "dir", "open_vocab": True}, "ONNX exports only"),
        ({"onnx": "m.onnx", "out": "dir"}, "--out is for --format safetensors"),
    ],
)
def test_export_command_argument_errors(values: dict, message: str) -> None:
    from bridgeseg.errors import UserError

    with pytest.raises(UserError, match=message):
        export_command(export_args(**values))


def test_cli_reports_errors_in_one_line(capsys) -> None:
    from bridgeseg.cli import main

    assert main(["export", "--format", "safetensors"]) == 2
    assert capsys.readouterr().err.strip() == "error: --format safetensors needs --out DIR (the output folder)"


def test_unknown_exporter_is_rejected(exported: dict, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown exporter 'tflite'; use one of torchscript, dynamo"):
        export_onnx(exported[("fpn", False)][0], tmp_path / "m.onnx", exporter="tflite")


@pytest.mark.slow
@pytest.mark.parametrize("open_vocab", [False, True])
def test_dynamo_exporter_parity(tmp_path, open_vocab: bool) -> None:
    # About two minutes per export on two cores, hence slow; the dynamo exporter needs onnxscript (onnx extra).
    model = tiny_model("bridge")
    path = export_onnx(model, tmp_path / "dynamo.onnx", open_vocab=open_vocab, exporter="dynamo")
    text_embeddings = F.normalize(torch.randn(5, TEXT_DIM), dim=-1) if open_vocab else None
    report = check_parity(model, path, text_embeddings=text_embeddings, sizes=SIZES[:2])
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report
    assert read_metadata(path)["open_vocab"] is open_vocab


def test_the_torchscript_exporter_is_still_there(tmp_path) -> None:
    """PyTorch deprecated the TorchScript-based ONNX exporter (2.9); this fails first when a release removes it."""
    import inspect
    import warnings

    removed = (
        f"torch {torch.__version__} no longer has the TorchScript-based ONNX exporter (torch.onnx.export(..., "
        "dynamo=False)): make exporter='dynamo' the default of export_onnx and `bridgeseg export` (docs/export.md)"
    )
    assert "dynamo" in inspect.signature(torch.onnx.export).parameters, removed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            export_onnx(tiny_model("fpn"), tmp_path / "fpn.onnx", exporter="torchscript")
        except (TypeError, ValueError, NotImplementedError, RuntimeError) as error:
            pytest.fail(f"{removed}; it failed with: {error}")
    # Its deprecation is not hidden from users (docs/export.md says what replaces it).
    assert any(issubclass(w.category, DeprecationWarning) and "TorchScript" in str(w.message) for w in caught)


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_never_replaces_its_own_input(exported: dict, tmp_path, capsys) -> None:
    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.cli import main

    folder = save_checkpoint(exported[("bridge", True)][0], tmp_path / "model")
    weights = folder / "model.safetensors"
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)
    before = {path: _sha256(path) for path in folder.iterdir()}
    cases = [
        ["--checkpoint", str(folder), "--onnx", str(weights)],  # a file of the checkpoint folder
        ["--checkpoint", str(weights), "--onnx", str(weights)],
        ["--checkpoint", str(weights), "--onnx", str(link)],  # the same file through a symbolic link
        ["--checkpoint", str(folder), "--onnx", str(tmp_path / "x" / ".." / "model" / "new.onnx")],  # inside it
        ["--checkpoint", str(folder), "--format", "safetensors", "--out", str(folder)],
        ["--checkpoint", str(weights), "--format", "safetensors", "--out", str(folder)],
    ]
    for argv in cases:
        assert main(["export", *argv, "--overwrite"]) == 2, argv  # --overwrite does not lift it
        error = capsys.readouterr().err
        assert error.startswith("error: the output ") and "refused even with --overwrite" in error, error
        assert error.count("\n") == 1
    assert {path: _sha256(path) for path in folder.iterdir()} == before
    assert not (folder / "new.onnx").exists()


def test_export_replaces_an_existing_output_only_with_overwrite(exported: dict, tmp_path, monkeypatch, capsys) -> None:
    from bridgeseg import checkpoints

    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": exported[("fpn", False)][0])
    existing = tmp_path / "mine.onnx"
    existing.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match=r"mine\.onnx already exists; pass --overwrite to replace it, or choose anoth"):
        export_command(export_args(onnx=str(existing)))
    assert existing.read_bytes() == b"the user's file"
    assert export_command(export_args(onnx=str(existing), overwrite=True)) == 0
    assert read_metadata(existing)["method"] == "fpn"

    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"converted already holds 1 of the output files \(config\.json\); pass --ov"):
        export_command(export_args(format="safetensors", out=str(folder)))
    assert (folder / "config.json").read_text() == "{}"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file is a file; --out must be a folder"):
        export_command(export_args(format="safetensors", out=str(a_file)))


@pytest.mark.parametrize("opset", [5, 13, 99])
def test_unsupported_opsets_are_refused_in_one_line_before_loading(opset: int, tmp_path, capsys) -> None:
    from bridgeseg.cli import main
    from bridgeseg.runtime.onnx import OPSET_RANGE

    # The checkpoint does not exist: the opset is refused before anything is loaded.
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tmp_path / "none"),
                "--onnx",
                str(tmp_path / "m.onnx"),
                "--opset",
                str(opset),
            ]
        )
        == 2
    )
    supported = OPSET_RANGE["torchscript"]
    assert capsys.readouterr().err == (
        f"error: --opset {opset} is not supported by the torchscript exporter with this PyTorch: use 14 to "
        f"{supported.stop - 1}; the default is 18\n"
    )
    assert 18 in supported and 18 in OPSET_RANGE["dynamo"]
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_file_given_to_export_is_explained(exported: dict, capsys) -> None:
    from bridgeseg.cli import main

    path = exported[("fpn", False)][1]
    assert main(["export", "--checkpoint", str(path), "--format", "safetensors", "--out", str(path.parent / "c")]) == 2
    error = capsys.readouterr().err
    assert "an ONNX model, not a PyTorch checkpoint" in error and "--runtime" not in error
    assert "`bridgeseg export` needs the model folder, .safetensors or .ckpt it was exported from" in error
