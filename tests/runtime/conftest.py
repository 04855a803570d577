"""Fixtures of the runtime tests: a tiny trained model and a calibration folder, made once per test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgeseg.runtime.onnx import export_onnx
from bridgeseg.runtime.quantization import quantize_onnx
from tests.runtime.helpers import CALIBRATION_SIZE, scenes, tiny_model


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A tiny `bridge` trained until its labels are right and its logits apart, so int8 agreement means something."""
    torch.manual_seed(0)
    model = tiny_model("bridge")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        images, masks = scenes(4, 64, 64, seed=step)
        loss = model.loss({"image": images, "mask": masks})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of eight training-like scenes as PNG files, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("calibration")
    images, _ = scenes(8, 80, 96, seed=1000)
    for index, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"scene_{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def quantized(trained: torch.nn.Module, calibration: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both forms exported and quantised once: {open_vocab: (float32 path, int8 path)}."""
    folder = tmp_path_factory.mktemp("int8")
    paths = {}
    for open_vocab in (False, True):
        name = "open" if open_vocab else "fixed"
        float32 = export_onnx(trained, folder / f"{name}.onnx", open_vocab=open_vocab)
        int8 = quantize_onnx(float32, folder / f"{name}_int8.onnx", calibration, size=CALIBRATION_SIZE)
        paths[open_vocab] = (float32, int8)
    return paths
