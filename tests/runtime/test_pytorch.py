"""Inference-only transforms (BatchNorm folding, channels last), the bf16 detector and the `precision` option."""

from __future__ import annotations

import logging

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from bridgeseg import Predictor
from bridgeseg.models import create_model
from bridgeseg.runtime import cpu
from bridgeseg.runtime.cpu import resolve_precision
from bridgeseg.runtime.pytorch import TorchBackend, optimize_for_inference
from tests.conftest import CLASSES
from tests.models.helpers import trained_tiny

NORMS = (nn.BatchNorm2d, BatchNormAct2d)


def _model(method: str, class_embeddings: torch.Tensor, backbone: str = "test_efficientnet") -> nn.Module:
    """A tiny model whose BatchNorms hold non-trivial statistics and affine parameters, in eval mode."""
    torch.manual_seed(0)
    model = create_model(
        method,
        backbone=backbone,
        classes=CLASSES,
        fusion_dim=32,
        decoder_channels=16,
        class_embeddings=None if method == "fpn" else class_embeddings,
    )
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("method", ["bridge", "lseg", "denseclip", "fpn", "lraspp", "segformer"])
@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_optimised_copy_matches_the_model(method: str, backbone: str, class_embeddings: torch.Tensor) -> None:
    model = _model(method, class_embeddings, backbone)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimized = optimize_for_inference(model)

    assert not any(isinstance(module, NORMS) for module in optimized.modules())  # every BatchNorm folded
    assert any(isinstance(module, NORMS) for module in model.modules())  # the model keeps its own
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    images = torch.rand(2, 3, 70, 90)  # not a multiple of 32: padded and cropped as in prediction
    with torch.inference_mode():
        expected, actual = model(images), optimized(images)
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    labels_agree = (actual.argmax(1) == expected.argmax(1)).float().mean()
    assert labels_agree >= 0.999


def test_optimising_leaves_training_alone(class_embeddings: torch.Tensor) -> None:
    model = _model("bridge", class_embeddings).train()
    optimized = optimize_for_inference(model)
    assert model.training and not optimized.training
    assert optimized.text_encoder is model.text_encoder  # None here; a frozen encoder is shared, not copied
    # The model still trains: its BatchNorms update their statistics, the copy has none left.
    norm = next(module for module in model.modules() if isinstance(module, nn.BatchNorm2d))
    running_mean = norm.running_mean.clone()
    model.loss({"image": torch.rand(2, 3, 64, 64), "mask": torch.zeros(2, 64, 64, dtype=torch.long)})
    assert not torch.equal(norm.running_mean, running_mean)


class _SharedOutput(nn.Module):
    """conv → BatchNorm, with the conv's output also added back: folding the BatchNorm would be wrong here."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)
        self.norm.running_mean.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_a_layer_pattern_folding_gets_wrong_is_caught(class_embeddings: torch.Tensor, caplog) -> None:
    model = _model("bridge", class_embeddings)
    model.decoder.fuse = _SharedOutput(16).eval()
    with pytest.raises(RuntimeError, match="differs from the model"):
        optimize_for_inference(model)
    # The backend then runs the model as it is, and says so.
    backend = TorchBackend(model, optimize=True)
    with caplog.at_level(logging.WARNING, logger="bridgeseg.models.prediction"):
        assert backend._network() is model
    assert "without inference optimisations" in caplog.text
    assert not backend.optimize


def test_backend_remakes_the_copy_when_the_weights_change(class_embeddings: torch.Tensor) -> None:
    model = _model("bridge", class_embeddings)
    backend = TorchBackend(model, optimize=True)
    images = torch.rand(1, 3, 64, 64)
    embeddings = model.text_embeddings()
    with torch.inference_mode():
        first = backend.logits(images, embeddings)
        assert backend._network() is backend._network()  # made once
    assert torch.allclose(first, model(images, embeddings), atol=1e-4)
    with torch.no_grad():
        model.decoder.fuse[0].weight.mul_(2.0)
    with torch.inference_mode():
        second = backend.logits(images, embeddings)
        assert torch.allclose(second, model(images, embeddings), atol=1e-4)
    assert not torch.allclose(first, second, atol=1e-4)


def test_backend_uses_the_model_itself_in_training_mode_and_by_default(class_embeddings: torch.Tensor) -> None:
    model = _model("bridge", class_embeddings)
    assert TorchBackend(model)._network() is model  # validation and `model.predict`
    assert TorchBackend(model.train(), optimize=True)._network() is model


def test_predictor_predicts_with_the_optimised_copy(class_embeddings: torch.Tensor) -> None:
    model = trained_tiny("bridge", class_embeddings)
    images = torch.rand(3, 70, 90)
    optimized = Predictor(model).predict(images)
    plain = Predictor(model, optimize=False).predict(images)
    assert (optimized.labels == plain.labels).mean() >= 0.999
    assert Predictor(model).model is model  # what is saved is the model, not the folded copy


# -- bf16 -----------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_detector():
    cpu.detect_native_bf16.cache_clear()
    yield
    cpu.detect_native_bf16.cache_clear()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_detector_asks_pytorch(monkeypatch, fresh_detector, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(cpu, "cpuinfo_flags", lambda: pytest.fail("PyTorch's query answers first"))
    assert cpu.detect_native_bf16() is native
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: not native, raising=False)
    assert cpu.detect_native_bf16() is native  # asked once per process


def test_bf16_detector_falls_back_to_cpuinfo(monkeypatch, tmp_path, fresh_detector) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu.cpuinfo_flags(cpuinfo) >= {"avx2", "avx512f", "avx512_bf16"}
    assert cpu.cpuinfo_flags(tmp_path / "missing") == set()
    monkeypatch.setattr(cpu, "cpuinfo_flags", lambda: {"avx2", "fma"})
    assert cpu.detect_native_bf16() is False
    cpu.detect_native_bf16.cache_clear()
    monkeypatch.setattr(cpu, "cpuinfo_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
    assert cpu.detect_native_bf16() is True


def test_the_suite_pins_the_detection(request) -> None:
    # The autouse fixture of conftest.py answers for the CPU, so that no test depends on the one running it.
    assert cpu.bf16_is_fast() is (request.config.getoption("--native-bf16") == "yes")


def test_precision_resolves_to_bf16_only_where_fast(monkeypatch, caplog) -> None:
    monkeypatch.setattr(cpu, "bf16_is_fast", lambda: False)
    assert resolve_precision("auto") is None
    assert resolve_precision("fp32") is None
    with caplog.at_level(logging.WARNING, logger="bridgeseg.runtime.cpu"):
        assert resolve_precision("bf16") is torch.bfloat16
    assert len(caplog.records) == 1 and "slower than fp32" in caplog.records[0].getMessage()
    monkeypatch.setattr(cpu, "bf16_is_fast", lambda: True)
    caplog.clear()
    assert resolve_precision("auto") is torch.bfloat16
    assert resolve_precision("fp32") is None
    assert resolve_precision("bf16") is torch.bfloat16 and not caplog.records
    assert resolve_precision("auto", device="cuda") is None  # auto never picks bf16 off the CPU
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16")


@pytest.mark.parametrize("native", [False, True])
def test_predictor_is_fp32_by_default_on_every_cpu(monkeypatch, class_embeddings: torch.Tensor, native: bool) -> None:
    monkeypatch.setattr(cpu, "bf16_is_fast", lambda: native)
    model = _model("bridge", class_embeddings)
    assert Predictor(model).precision == "fp32"
    assert Predictor(model, precision="auto").precision == ("bf16" if native else "fp32")
    assert Predictor(model, precision="bf16").precision == "bf16"
    assert Predictor(model).runtime == "torch"


def test_predictor_precision_option(class_embeddings: torch.Tensor) -> None:
    model = _model("bridge", class_embeddings)
    with pytest.raises(ValueError, match="unknown precision"):
        Predictor(model, precision="half")

    class OtherRuntime:
        size_multiple, pixel_mean, device = 32, torch.zeros(1, 3, 1, 1), torch.device("cpu")

    assert Predictor(OtherRuntime()).precision == "fp32"
    with pytest.raises(ValueError, match="PyTorch and OpenVINO runtimes only"):
        Predictor(OtherRuntime(), precision="bf16")
    with pytest.raises(ValueError, match="PyTorch and OpenVINO runtimes only"):
        Predictor.from_checkpoint("model.onnx", precision="bf16")


def test_bf16_returns_float32_logits(class_embeddings: torch.Tensor) -> None:
    model = _model("bridge", class_embeddings)
    backend = TorchBackend(model, autocast_dtype=torch.bfloat16, optimize=True)
    with torch.inference_mode():
        logits = backend.coarse_logits(torch.rand(1, 3, 64, 64), model.text_embeddings())
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("method", ["bridge", "lseg", "fpn"])
def test_bf16_labels_agree_with_fp32_on_a_trained_model(method: str, class_embeddings: torch.Tensor) -> None:
    # Trained on the two-region images of test_prediction, so the logits have regions; bf16 keeps 8 bits of
    # mantissa, so labels may flip where two classes are nearly tied (region boundaries). When written, the
    # worst image agreed on 99.4 % of its pixels (lseg); the bound leaves room for other kernels' rounding.
    model = trained_tiny(method, class_embeddings)
    images = torch.rand(4, 3, 64, 64) * 0.2
    images[:, 0, :, 32:] += 0.7
    images[:, 2, 40:, :] += 0.7
    fp32 = Predictor(model, precision="fp32")
    bf16 = Predictor(model, precision="bf16")
    agree = [(fp32.predict(image).labels == bf16.predict(image).labels).mean() for image in images]
    assert min(agree) >= 0.98
