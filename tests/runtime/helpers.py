"""What the runtime tests share: tiny models, the parity bounds, `bridgeseg export`'s arguments, synthetic scenes."""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from bridgeseg.models import create_model
from bridgeseg.models.methods.base import method_class

CLASSES = ["sky", "grass", "cat"]
TEXT_DIM = 384
MAX_ABS_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999
# The export traces at 64x96; these are other multiples of 32, another batch size included.
SIZES = ((64, 96), (128, 64), (96, 160))
# The classic light heads (closed set, no text): torchvision's LR-ASPP head, transformers' SegFormer head.
LIGHT_HEADS = ("lraspp", "segformer")


def tiny_model(method: str) -> torch.nn.Module:
    embeddings = (
        None if not method_class(method).uses_text else F.normalize(torch.randn(len(CLASSES), TEXT_DIM), dim=-1)
    )
    return create_model(
        method,
        backbone="test_resnet",
        classes=CLASSES,
        class_embeddings=embeddings,
        fusion_dim=32,
        decoder_channels=16,
    )


def export_args(**values: object) -> argparse.Namespace:
    defaults = {
        "checkpoint": "ckpt",
        "format": None,
        "out": None,
        "onnx": None,
        "overwrite": False,
        "classes": None,
        "open_vocab": False,
        "opset": 18,
        "exporter": "torchscript",
        "coarse_logits": False,
        "int8": False,
        "calibration": None,
        "calibration_images": 32,
        "calibration_size": 512,
    }
    return argparse.Namespace(**(defaults | values))


# Colours of the synthetic scenes' three classes (sky, grass, cat), in [0, 1].
COLOURS = np.array([[0.25, 0.45, 0.9], [0.2, 0.7, 0.25], [0.85, 0.55, 0.2]], dtype=np.float32)
CALIBRATION_SIZE = 64


def scenes(count: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sky above grass at a random horizon, a cat rectangle somewhere, noise: images [N, 3, H, W], masks [N, H, W]."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), dtype=np.int64)
    for mask in masks:
        mask[rng.integers(height // 4, 3 * height // 4) :] = 1
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + rng.integers(height // 6, height // 2), left : left + rng.integers(width // 6, width // 2)] = 2
    images = COLOURS[masks].transpose(0, 3, 1, 2) + rng.normal(0, 0.05, (count, 3, height, width))
    return torch.from_numpy(images.clip(0, 1).astype(np.float32)), torch.from_numpy(masks)
