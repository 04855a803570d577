"""The exact fast labels path: labels from the coarse logits equal the arg-max of the fully upsampled logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridgeseg.models import prediction
from bridgeseg.models.prediction import segment, upsampled_argmax
from bridgeseg.runtime.pytorch import TorchBackend
from tests.models.helpers import counting_backend, tiny_model, trained_tiny


def _full(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


@pytest.mark.parametrize("shortcut_everywhere", [False, True])
@pytest.mark.parametrize("num_classes", [1, 2, 13, 150])
def test_upsampled_argmax_is_exact_on_random_logits(num_classes: int, shortcut_everywhere: bool, monkeypatch) -> None:
    if shortcut_everywhere:  # the gathering path even where boundaries are everywhere, as on noise
        monkeypatch.setattr(prediction, "FULL_UPSAMPLING_ABOVE", 1.0)
    generator = torch.Generator().manual_seed(num_classes)
    mismatched = 0
    for trial in range(40):
        height, width = torch.randint(1, 17, (2,), generator=generator).tolist()
        factor_h, factor_w = torch.randint(1, 6, (2,), generator=generator).tolist()
        size = (height * factor_h + trial % 5, width * factor_w + trial % 3)
        scale = (0.01, 1.0, 30.0)[trial % 3]
        logits = torch.randn(2, num_classes, height, width, generator=generator) * scale
        mismatched += int((upsampled_argmax(logits, size) != _full(logits, size)).sum())
    assert mismatched == 0


def test_upsampled_argmax_reads_most_labels_off_the_coarse_map() -> None:
    # Region-like logits (smooth, as a trained model's): most output pixels take the shortcut.
    torch.manual_seed(0)
    logits = F.interpolate(torch.randn(1, 150, 4, 4), size=(32, 32), mode="bilinear") * 10
    labels = upsampled_argmax(logits, (128, 128))
    assert torch.equal(labels, _full(logits, (128, 128)))
    coarse = logits.argmax(1, keepdim=True).float()
    nearest = F.interpolate(coarse, size=(128, 128), mode="nearest")[:, 0].long()
    assert 0 < (labels != nearest).float().mean() < 0.1  # boundaries are rare, and they are handled


def test_upsampled_argmax_upsamples_everything_where_boundaries_are_everywhere(monkeypatch) -> None:
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(prediction.F, "interpolate", lambda *a, **k: calls.append(1) or interpolate(*a, **k))
    noise = torch.randn(1, 150, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(upsampled_argmax(noise, (128, 128)), _full(noise, (128, 128)))
    assert len(calls) == 2  # noise: the full path, and the reference `_full` (F is torch's one module)
    torch.manual_seed(0)
    regions = F.interpolate(torch.randn(1, 150, 3, 3), size=(64, 64), mode="bilinear") * 10  # 10 % boundaries
    calls.clear()
    assert torch.equal(upsampled_argmax(regions, (256, 256)), _full(regions, (256, 256)))
    assert len(calls) == 1  # only the reference: regions take the shortcut


@pytest.mark.parametrize("method", ["bridge", "lseg", "fpn", "lraspp"])  # lraspp: logits at stride 8
@pytest.mark.parametrize("trained", [False, True])
def test_predict_labels_equal_the_full_path(method: str, trained: bool, class_embeddings: torch.Tensor) -> None:
    if trained:
        model = trained_tiny(method, class_embeddings)
    else:
        torch.manual_seed(1)
        model = tiny_model(method, class_embeddings).eval()
    backend = TorchBackend(model)
    for size in ((64, 64), (50, 70), (33, 97), (17, 5)):
        images = torch.rand(2, 3, *size)
        with torch.inference_mode():
            fast = model.predict(images)
            _, probs = segment(backend, images, backend.text_embeddings(None), return_probs=True)
            padded = model.pad(images)[0]
            full = _full(model.coarse_logits(padded), padded.shape[-2:])[..., : size[0], : size[1]]
        assert torch.equal(fast, full), size
        assert torch.equal(fast, probs.argmax(1)), size  # softmax keeps the order
        with torch.inference_mode():
            slide = model.predict(images, mode="slide", crop_size=32, stride=21)
            _, slide_probs = model.predict(images, mode="slide", crop_size=32, stride=21, return_probs=True)
        assert torch.equal(slide, slide_probs.argmax(1)), size


def test_only_single_view_whole_labels_take_the_fast_path(class_embeddings: torch.Tensor) -> None:
    model = tiny_model("lseg", class_embeddings).eval()
    counting, calls = counting_backend(TorchBackend)
    backend = counting(model)
    images = torch.rand(1, 3, 40, 40)
    expected = {
        (): ["coarse"],
        (("return_probs", True),): ["full"],
        (("flip", True),): ["full", "full"],
        (("mode", "slide"), ("crop_size", 32), ("stride", 32)): ["full"] * 4,
        (("output_size", (20, 20)),): ["full"],
    }
    with torch.inference_mode():
        for options, paths in expected.items():
            calls.clear()
            segment(backend, images, backend.text_embeddings(None), **dict(options))
            assert calls == paths, options
