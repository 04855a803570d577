"""Shared fixtures: tiny models, no network."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

TINY_BACKBONES = ["test_resnet", "test_efficientnet", "mobilenetv2_050"]
CLASSES = ["sky", "grass", "cat"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def class_embeddings() -> torch.Tensor:
    """Stand-in text embeddings [3, 384] so most tests need not load a text encoder."""
    return torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
