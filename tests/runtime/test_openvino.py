"""OpenVINO: the IR made from the ONNX export, parity with PyTorch, int8 from the QDQ graph, precision hint, errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgeseg.errors import CheckpointError
from bridgeseg.runtime.onnx import export_onnx, read_metadata
from bridgeseg.runtime.parity import compare_with_pytorch
from bridgeseg.runtime.predictor import Predictor
from tests.runtime.helpers import CLASSES, MAX_ABS_DIFF, MIN_ARGMAX_AGREEMENT, scenes, tiny_model

openvino = pytest.importorskip("openvino", reason="OpenVINO is an optional runtime: pip install 'bridgeseg[openvino]'")

from bridgeseg.runtime.openvino import OpenVinoBackend, compile_config, convert_onnx, export_openvino  # noqa: E402

SIZES = ((64, 96), (128, 64), (96, 160))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny `bridge` as IRs: {(open_vocab, output): (model, path)}."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("openvino")
    model = tiny_model("bridge").eval()
    forms = [(False, "coarse_logits"), (True, "logits")]
    return {
        (open_vocab, output): (
            model,
            export_openvino(model, folder / f"{open_vocab}_{output}.xml", open_vocab=open_vocab, output=output),
        )
        for open_vocab, output in forms
    }


@pytest.mark.parametrize("form", [(False, "coarse_logits"), (True, "logits")])
def test_float32_parity_with_pytorch(exported: dict, form: tuple) -> None:
    model, path = exported[form]
    assert path.with_suffix(".bin").is_file()
    backend = OpenVinoBackend(path)
    report = compare_with_pytorch(model, backend, SIZES, batch=2)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report
    assert backend.precision == "fp32"


def test_predictor_labels_match_pytorch(exported: dict) -> None:
    model, path = exported[(False, "coarse_logits")]
    predictor = Predictor.from_checkpoint(path)  # .xml: OpenVINO
    assert isinstance(predictor.backend, OpenVinoBackend) and predictor.precision == "fp32"
    image = torch.rand(3, 70, 100)  # padded to 96x128 and cropped back
    labels = model.predict(image)[0].numpy()
    assert (predictor.predict(image).labels == labels).mean() >= MIN_ARGMAX_AGREEMENT
    prediction = predictor.predict(image, tta=True, return_probs=True)
    _, probs = model.predict(image, flip=True, return_probs=True)
    np.testing.assert_allclose(prediction.probs, probs[0].numpy(), atol=1e-4)


def test_metadata_round_trips_and_onnx_files_open_directly(exported: dict, tmp_path: Path) -> None:
    model, path = exported[(True, "logits")]
    backend = OpenVinoBackend(path)
    assert backend.classes == CLASSES and backend.open_vocabulary and backend.method == "bridge"
    onnx_path = export_onnx(model, tmp_path / "m.onnx", open_vocab=True)
    expected = read_metadata(onnx_path)
    for key in ("classes", "open_vocab", "output", "logits_stride", "size_multiple", "pixel_mean", "config"):
        assert backend.metadata[key] == expected[key], key
    np.testing.assert_array_equal(backend.metadata["class_embeddings"], expected["class_embeddings"])
    np.testing.assert_array_equal(backend.metadata["probe_logits"], expected["probe_logits"])
    direct = Predictor.from_checkpoint(onnx_path, runtime="openvino")
    assert isinstance(direct.backend, OpenVinoBackend) and direct.classes == CLASSES


def test_metadata_of_another_model_is_refused(exported: dict, tmp_path: Path) -> None:
    import onnx

    other = tiny_model("lseg").eval()
    other_onnx = export_onnx(other, tmp_path / "other.onnx", output="coarse_logits")
    proto = onnx.load(str(other_onnx))
    probe = read_metadata(export_onnx(tiny_model("bridge"), tmp_path / "b.onnx", output="coarse_logits"))
    for prop in proto.metadata_props:  # another bridge's fingerprint on the lseg graph
        if prop.key == "probe_logits":
            prop.value = str(probe["probe_logits"].tolist())
    onnx.save(proto, str(tmp_path / "copied.onnx"))
    with pytest.raises(CheckpointError, match="metadata was copied from another model"):
        OpenVinoBackend(convert_onnx(tmp_path / "copied.onnx", tmp_path / "copied.xml"))


def test_precision_hint_is_explicit_and_bf16_only_when_asked(exported: dict, monkeypatch) -> None:
    configs = []

    class RecordingCore(openvino.Core):
        def compile_model(self, model, device, config):
            configs.append((device, dict(config)))
            return super().compile_model(model, device, config)

    monkeypatch.setattr(openvino, "Core", RecordingCore)
    _, path = exported[(False, "coarse_logits")]
    OpenVinoBackend(path)
    Predictor.from_checkpoint(path, precision="auto")
    OpenVinoBackend(path, precision="bf16", threads=2)
    assert [config["INFERENCE_PRECISION_HINT"] for _, config in configs] == ["f32", "f32", "bf16"]
    assert configs[2] == (
        "CPU",
        {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2},
    )
    with pytest.raises(ValueError, match="unknown OpenVINO precision"):
        compile_config("fp16")


class _Compiled:
    def __init__(self, hint: str) -> None:
        self.hint = hint

    def get_property(self, name: str) -> str:
        assert name == "INFERENCE_PRECISION_HINT"
        return self.hint


@pytest.mark.parametrize(
    ("requested", "ran", "expected", "warns"),
    [
        ("fp32", "f32", "fp32", False),
        ("bf16", "bf16", "bf16", False),
        ("bf16", "f32", "fp32", True),  # a CPU without native bf16
    ],
)
def test_the_precision_that_ran_is_recorded(exported: dict, caplog, requested, ran, expected, warns) -> None:
    backend = OpenVinoBackend(exported[(False, "coarse_logits")][1], precision=requested)
    caplog.clear()  # what the load said on this host's CPU
    with caplog.at_level(logging.WARNING, logger="bridgeseg.runtime.openvino"):
        backend._note_precision(_Compiled(ran))
    assert backend.precision == expected
    assert ("not the bf16 asked for" in caplog.text) is warns


def test_int8_from_the_qdq_graph_agrees_with_float32(quantized: dict, tmp_path: Path) -> None:
    float32_onnx, int8_onnx = quantized[False]
    float32 = Predictor.from_checkpoint(float32_onnx)  # ONNX Runtime, the reference
    int8 = Predictor.from_checkpoint(convert_onnx(int8_onnx, tmp_path / "int8.xml"))
    assert int8.precision == "int8" and read_metadata(int8_onnx)["precision"] == "int8"
    images, _ = scenes(6, 96, 128, seed=2000)
    agree = np.mean([(int8.predict(image).labels == float32.predict(image).labels).mean() for image in images])
    # The bounds of ONNX Runtime's int8 (tests/runtime/test_quantization.py): OpenVINO's int8 kernels round differently.
    assert agree >= 0.98
    embeddings = float32.backend.text_embeddings(None)
    reference = float32.backend.logits(images, embeddings)
    assert (int8.backend.logits(images, embeddings) - reference).abs().mean() <= 0.07 * reference.std()


def test_a_missing_openvino_is_a_clear_error(exported: dict, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    _, path = exported[(False, "coarse_logits")]
    with pytest.raises(ImportError, match=r"pip install 'bridgeseg\[openvino\]'"):
        Predictor.from_checkpoint(path)
    with pytest.raises(ImportError, match="OpenVINO runtime is not installed"):
        export_openvino(tiny_model("bridge"), tmp_path / "m.xml")


def test_cli_exports_and_predicts(exported: dict, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.cli import main

    model, _ = exported[(False, "coarse_logits")]
    checkpoint = save_checkpoint(model, tmp_path / "model")
    xml = tmp_path / "model.xml"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out", str(xml)]) == 0
    output = capsys.readouterr().out
    assert "parity with PyTorch (openvino)" in output and "argmax agreement 100.000 %" in output
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(xml), "--out", str(out)]) == 0
    assert (out / "a_mask.png").is_file()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out", "m.onnx"]) == 2
    assert "needs --out FILE.xml" in capsys.readouterr().err
