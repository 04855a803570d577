"""ExecuTorch (XNNPACK): the `.pte` program at a static size, parity with PyTorch, metadata, int8 (PT2E), errors.

Lowering to XNNPACK takes about a minute per tiny model on two cores: the default run exports one float32 program
(a text-free `fpn`, the fewest partitions); the text-conditioned model and int8 are in the `slow` suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgeseg.errors import CheckpointError
from bridgeseg.models import create_model
from bridgeseg.runtime.parity import compare_with_pytorch
from bridgeseg.runtime.predictor import Predictor
from tests.runtime.helpers import CLASSES, MAX_ABS_DIFF, MIN_ARGMAX_AGREEMENT, scenes, tiny_model

pytest.importorskip(
    "executorch.runtime", reason="ExecuTorch is an optional runtime: pip install 'bridgeseg[executorch]'"
)

from bridgeseg.runtime.executorch import ExecuTorchBackend, export_executorch

SIZE = (64, 96)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("fpn", backbone="test_resnet", classes=CLASSES, decoder_channels=16).eval()
    path = tmp_path_factory.mktemp("executorch") / "fpn.pte"
    return model, export_executorch(model, path, size=SIZE, output="coarse_logits")


def test_float32_parity_with_pytorch(program: tuple) -> None:
    model, path = program
    backend = ExecuTorchBackend(path)
    report = compare_with_pytorch(model, backend, [SIZE], batch=2)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report
    assert backend.precision == "fp32" and backend.input_size == SIZE


def test_metadata_round_trips(program: tuple) -> None:
    model, path = program
    metadata = ExecuTorchBackend(path).metadata
    assert metadata["classes"] == CLASSES and metadata["method"] == "fpn" and not metadata["open_vocab"]
    assert metadata["output"] == "coarse_logits" and metadata["logits_stride"] == 4
    assert metadata["input_size"] == SIZE and metadata["config"] == model.config.to_dict()
    with torch.no_grad():
        blank = model.coarse_logits(torch.zeros(1, 3, *SIZE), None).mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(metadata["probe_logits"], blank, atol=1e-5)


def test_predictor_at_the_static_size_and_below(program: tuple) -> None:
    model, path = program
    predictor = Predictor.from_checkpoint(path)  # .pte: ExecuTorch
    assert isinstance(predictor.backend, ExecuTorchBackend)
    image = torch.rand(3, *SIZE)
    assert (predictor.predict(image).labels == model.predict(image)[0].numpy()).mean() >= MIN_ARGMAX_AGREEMENT
    # Smaller: padded with the mean colour up to the program's size and cropped back (close to PyTorch, not equal).
    assert predictor.predict(torch.rand(3, 40, 50)).labels.shape == (40, 50)
    with pytest.raises(ValueError, match=r"takes images up to 64x96 .* mode='slide'"):
        predictor.predict(torch.rand(3, 100, 100))
    slide = predictor.predict(torch.rand(3, 100, 120), mode="slide", crop_size=64, stride=48)
    assert slide.labels.shape == (100, 120)
    with pytest.raises(ValueError, match="runtimes only, not to executorch"):
        Predictor.from_checkpoint(path, precision="bf16")


def test_foreign_and_damaged_files_are_refused(program: tuple, tmp_path: Path) -> None:
    _, path = program
    damaged = tmp_path / "damaged.pte"
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a valid ExecuTorch program"):
        ExecuTorchBackend(damaged)
    with pytest.raises(FileNotFoundError, match="bridgeseg export --format executorch"):
        ExecuTorchBackend(tmp_path / "missing.pte")


def test_a_missing_executorch_is_a_clear_error(program: tuple, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # `import executorch.runtime` now raises
    with pytest.raises(ImportError, match=r"pip install 'bridgeseg\[executorch\]'"):
        Predictor.from_checkpoint(program[1])
    with pytest.raises(ImportError, match="ExecuTorch is not installed"):
        export_executorch(program[0], tmp_path / "m.pte", size=SIZE)


def test_export_refuses_bad_arguments(program: tuple, tmp_path: Path) -> None:
    model, _ = program
    with pytest.raises(ValueError, match="multiples of 32"):
        export_executorch(model, tmp_path / "m.pte", size=(60, 96))
    with pytest.raises(ValueError, match=r"\.pte file"):
        export_executorch(model, tmp_path / "m.onnx", size=SIZE)


@pytest.mark.slow
def test_text_conditioned_model_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model("bridge").eval()
    backend = ExecuTorchBackend(export_executorch(model, tmp_path / "bridge.pte", size=SIZE))
    report = compare_with_pytorch(model, backend, [SIZE], batch=2)
    assert report.max_abs_diff <= MAX_ABS_DIFF, report
    assert report.argmax_agreement >= MIN_ARGMAX_AGREEMENT, report


@pytest.mark.slow
def test_int8_agrees_with_float32(trained: torch.nn.Module, calibration: Path, tmp_path: Path) -> None:
    size = (96, 128)
    path = export_executorch(trained, tmp_path / "int8.pte", size=size, calibration=calibration, num_images=8)
    int8 = Predictor.from_checkpoint(path)
    assert int8.precision == "int8" and int8.backend.metadata["calibration_images"] == "8"
    images, _ = scenes(6, *size, seed=2000)
    with torch.inference_mode():
        expected = trained.predict(images)
    pairs = zip(images, expected, strict=True)
    agree = np.mean([(int8.predict(image).labels == labels.numpy()).mean() for image, labels in pairs])
    # The bounds of ONNX Runtime's int8 (tests/runtime/test_quantization.py), which keeps the stem float; this
    # quantises it.
    assert agree >= 0.98
    with torch.inference_mode():
        reference = trained(images, trained.text_embeddings(None))
        actual = int8.backend.logits(images, None)
    assert (actual - reference).abs().mean() <= 0.1 * reference.std()
