"""What the model and runtime tests share: tiny models, one fitted to two regions, a backend that counts its calls."""

from __future__ import annotations

import torch

from bridgeseg.models import create_model
from tests.conftest import CLASSES


def tiny_model(method: str, class_embeddings: torch.Tensor) -> torch.nn.Module:
    return create_model(
        method,
        backbone="test_resnet",
        classes=CLASSES,
        fusion_dim=32,
        decoder_channels=16,
        class_embeddings=class_embeddings,
    )


def fit_two_regions(model: torch.nn.Module) -> torch.nn.Module:
    """Train a tiny model for a few steps on images with a red right half and a blue bottom band, so that its
    logits have region structure (few boundaries); returns it in eval mode. Seed before building the model."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.rand(4, 3, 64, 64) * 0.2
    masks = torch.zeros(4, 64, 64, dtype=torch.long)
    images[:, 0, :, 32:] += 0.7  # a red right half: class 1
    masks[:, :, 32:] = 1
    images[:, 2, 40:, :] += 0.7  # a blue bottom band: class 2
    masks[:, 40:, :] = 2
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model.loss({"image": images, "mask": masks})["loss"].backward()
        optimizer.step()
    return model.eval()


def trained_tiny(method: str, class_embeddings: torch.Tensor) -> torch.nn.Module:
    """The tiny model of `method`, built from seed 0 and fitted to the two regions (`fit_two_regions`)."""
    torch.manual_seed(0)
    return fit_two_regions(tiny_model(method, class_embeddings))


def counting_backend(base: type, coarse_method: str = "coarse_logits") -> tuple[type, list[str]]:
    """A subclass of the backend `base` that records the path `segment` takes: "full" logits or "coarse" ones."""
    calls: list[str] = []

    def logits(self, images, text_embeddings):
        calls.append("full")
        return base.logits(self, images, text_embeddings)

    def coarse(self, images, text_embeddings):
        calls.append("coarse")
        return getattr(base, coarse_method)(self, images, text_embeddings)

    return type(f"Counting{base.__name__}", (base,), {"logits": logits, coarse_method: coarse}), calls
