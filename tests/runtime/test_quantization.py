"""int8 quantisation of ONNX exports: the QDQ graph, the metadata, loading, agreement with float32, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bridgeseg.errors import CheckpointError, DatasetError, UserError
from bridgeseg.runtime.onnx import (
    INT8_PROBE_TOLERANCE,
    PROBE_KEY,
    OnnxBackend,
    encode_probe,
    export_onnx,
    probe_tolerance,
    read_metadata,
)
from bridgeseg.runtime.predictor import Predictor
from bridgeseg.runtime.quantization import calibration_images, load_calibration_image, quantize_onnx
from tests.runtime.helpers import CALIBRATION_SIZE, CLASSES, export_args, scenes

pytest.importorskip("onnxruntime.quantization")


def test_calibration_images_are_spread_over_the_sorted_folder(calibration: Path) -> None:
    files = calibration_images(calibration, 3)
    assert [f.name for f in files] == ["scene_0.png", "scene_4.png", "scene_7.png"]  # indices 0, 3.5 → 4, 7
    assert len(calibration_images(calibration, 100)) == 8  # all of them, the text file left out
    image = load_calibration_image(files[0], 32)  # 80×96: short side to 32, centre crop
    assert image.shape == (1, 3, 32, 32) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_the_graph_is_qdq_with_per_channel_int8_weights(quantized: dict) -> None:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(quantized[False][1]))
    op_types = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    per_channel = [
        node
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
        and initializers.get(node.input[0], np.zeros(0)).dtype == np.int8  # a quantised weight
        and initializers[node.input[1]].ndim == 1
        and initializers[node.input[1]].size > 1  # one scale per output channel...
        and any(attribute.name == "axis" for attribute in node.attribute)  # ...along an axis
    ]
    assert per_channel, "no per-channel int8 weight"
    # The logits leave the graph as float32 computed in float, not dequantised from 256 levels.
    producers = {output: node for node in proto.graph.node for output in node.output}
    assert producers["logits"].op_type != "DequantizeLinear"


def test_metadata_is_carried_over_with_the_precision(quantized: dict) -> None:
    float32, int8 = quantized[True]
    before, after = read_metadata(float32), read_metadata(int8)
    assert after["precision"] == "int8"
    assert (after["calibration_images"], after["calibration_size"]) == ("8", str(CALIBRATION_SIZE))
    for key in ("classes", "method", "backbone", "open_vocab", "text_encoder", "text_dim", "config", "pixel_mean"):
        assert after[key] == before[key], key
    np.testing.assert_array_equal(after["class_embeddings"], before["class_embeddings"])
    assert "precision" not in before
    # The probe logits are the int8 graph's own: the load-time check compares them with what this graph gives.
    assert not np.array_equal(after["probe_logits"], before["probe_logits"])


@pytest.mark.parametrize("open_vocab", [False, True])
def test_backend_and_predictor_load_the_int8_model(quantized: dict, open_vocab: bool) -> None:
    int8 = quantized[open_vocab][1]
    backend = OnnxBackend(int8)  # runs the load-time probe check
    assert backend.classes == CLASSES and backend.open_vocabulary is open_vocab
    predictor = Predictor.from_checkpoint(int8)
    images, _ = scenes(1, 70, 100, seed=7)  # not multiples of 32: padded and cropped back
    prediction = predictor.predict(images[0], return_probs=True)
    assert prediction.labels.shape == (70, 100)
    assert prediction.classes == CLASSES and prediction.probs.shape == (len(CLASSES), 70, 100)
    assert set(np.unique(prediction.labels)) <= set(range(len(CLASSES)))


@pytest.mark.parametrize("open_vocab", [False, True])
def test_int8_agrees_with_float32(trained: torch.nn.Module, quantized: dict, open_vocab: bool) -> None:
    float32, int8 = (Predictor.from_checkpoint(path) for path in quantized[open_vocab])
    images, masks = scenes(6, 96, 128, seed=2000)  # held out, and not the calibration size
    correct = agree = 0
    for image, mask in zip(images, masks, strict=True):
        expected, actual = float32.predict(image).labels, int8.predict(image).labels
        correct += (expected == mask.numpy()).mean()
        agree += (actual == expected).mean()
    # The float32 model has learned the scenes, so its logits are decisive and the labels a real test.
    assert correct / len(images) >= 0.9
    assert agree / len(images) >= 0.98
    # Labels alone forgive a lot on so easy a task: calibrating on flat grey images still kept 98 % of them, but
    # moved the logits by 13 % of their spread, quantising the stride-2 stem in 8 bits by 11 %; this one, 4 %.
    embeddings = float32.backend.text_embeddings(None)
    reference = float32.backend.logits(images, embeddings)
    difference = (int8.backend.logits(images, embeddings) - reference).abs().mean()
    assert difference <= 0.07 * reference.std()


def test_quantize_refuses_bad_arguments(quantized: dict, tmp_path: Path) -> None:
    float32, int8 = quantized[False]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no image"):
        quantize_onnx(float32, tmp_path / "a.onnx", empty)
    with pytest.raises(DatasetError, match="not found"):
        quantize_onnx(float32, tmp_path / "a.onnx", tmp_path / "missing")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_onnx(float32, tmp_path / "a.onnx", empty, size=100)
    with pytest.raises(ValueError, match="another file"):
        quantize_onnx(float32, float32, empty)
    with pytest.raises(ValueError, match="already quantised"):
        quantize_onnx(int8, tmp_path / "a.onnx", empty)
    assert not (tmp_path / "a.onnx").exists()


def test_cli_exports_int8(trained: torch.nn.Module, calibration: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from bridgeseg import checkpoints
    from bridgeseg.cli import export

    monkeypatch.setattr(checkpoints, "load_model", lambda path, device="cpu": trained)
    monkeypatch.chdir(tmp_path)  # nothing may be written in the working folder either
    out = tmp_path / "model_int8.onnx"
    values = {"onnx": str(out), "open_vocab": True, "int8": True, "calibration": str(calibration)}
    assert export.run(export_args(**values, calibration_size=CALIBRATION_SIZE)) == 0
    output = capsys.readouterr().out
    assert "int8" in output and "argmax agreement" in output and "for information" in output
    assert read_metadata(out)["precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.onnx"]  # and nothing else


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"onnx": "m.onnx", "int8": True}, "--int8 needs --calibration DIR"),
        ({"format": "safetensors", "out": "dir", "int8": True, "calibration": "d"}, "ONNX exports only"),
        ({"onnx": "m.onnx", "calibration": "d"}, "--calibration is for --int8"),
        ({"onnx": "m.onnx", "int8": True, "calibration": "d", "calibration_size": 100}, "multiple of 32"),
        ({"onnx": "m.onnx", "int8": True, "calibration": "d", "calibration_images": 0}, "at least 1"),
    ],
)
def test_cli_int8_argument_errors(values: dict, message: str) -> None:
    from bridgeseg.cli import export

    with pytest.raises(UserError, match=message):
        export.run(export_args(**values))


def test_cli_reports_an_empty_calibration_folder_in_one_line_and_keeps_the_output(
    trained: torch.nn.Module, tmp_path: Path, capsys
) -> None:
    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.cli import main

    checkpoint = save_checkpoint(trained, tmp_path / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"the user's file")
    argv = ["export", "--checkpoint", str(checkpoint), "--onnx", str(existing), "--int8", "--calibration", str(empty)]
    assert main([*argv, "--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: calibration folder") and "holds no image" in error and "\n" not in error
    assert existing.read_bytes() == b"the user's file"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--onnx", str(tmp_path), "--int8", "--calibration", "x"]) == 2
    )
    assert "it is a folder" in capsys.readouterr().err


def test_the_recorded_probe_holds_on_the_unfused_reference_path(quantized: dict) -> None:
    # Another CPU runs other int8 kernels; ONNX Runtime's unoptimised path (QuantizeLinear / DequantizeLinear as
    # float arithmetic, no fused int8 kernel) is the farthest from the fused one here, and must pass the load check.
    import onnxruntime as ort

    int8 = quantized[True][1]
    metadata = read_metadata(int8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    feed = {"images": np.zeros((1, 3, 32, 32), np.float32), "text_embeddings": metadata["class_embeddings"]}
    probe = session.run(["logits"], feed)[0].mean(axis=(0, 2, 3))
    tolerance = probe_tolerance(metadata)
    assert tolerance == INT8_PROBE_TOLERANCE
    np.testing.assert_allclose(probe, metadata["probe_logits"], rtol=tolerance, atol=tolerance)


def test_int8_metadata_copied_from_another_model_is_still_refused(quantized: dict, tmp_path: Path) -> None:
    import onnx

    int8 = quantized[True][1]
    graph = onnx.load(str(int8))
    recorded = read_metadata(int8)["probe_logits"]
    for prop in graph.metadata_props:
        if prop.key == PROBE_KEY:
            prop.value = encode_probe(recorded + 1.0)  # another model's logits: a whole logit away
    copied = tmp_path / "copied.onnx"
    onnx.save(graph, str(copied))
    with pytest.raises(CheckpointError, match="the metadata was copied from another model"):
        OnnxBackend(copied)


def test_the_coarse_form_quantises_and_gives_fast_labels(trained, calibration: Path, tmp_path: Path) -> None:
    """int8 of a coarse export: the probe is the coarse output's, and labels come by the exact fast path."""
    float32 = export_onnx(trained, tmp_path / "coarse.onnx", output="coarse_logits")
    int8 = quantize_onnx(float32, tmp_path / "coarse_int8.onnx", calibration, size=CALIBRATION_SIZE)
    backend = OnnxBackend(int8)  # the load-time probe check on the coarse output
    assert backend.output == "coarse_logits" and read_metadata(int8)["precision"] == "int8"
    reference = Predictor.from_checkpoint(float32)
    images, _ = scenes(6, 96, 128, seed=2000)  # as test_int8_agrees_with_float32
    agree = np.mean([(Predictor(backend).predict(i).labels == reference.predict(i).labels).mean() for i in images])
    assert agree >= 0.98
    assert Predictor(backend).predict(images[0][:, :70, :100]).labels.shape == (70, 100)
