"""Inference on any runtime: the `Predictor` (`predictor`), and the backends of the one prediction loop — PyTorch
(`pytorch`: the optimised copy, bf16 autocast), ONNX Runtime (`onnx`, with export and int8 `quantization`),
OpenVINO (`openvino`) and ExecuTorch with XNNPACK (`executorch`) — with what the CPU offers (`cpu`); and sources
beyond single images: video files through PyAV (`video`). Each runtime's module imports its package only when
used."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RUNTIMES", "runtime_for_path"]

RUNTIMES = ("torch", "onnx", "openvino", "executorch")
"""The runtimes `bridgeseg.Predictor.from_checkpoint` and `bridgeseg predict --runtime` accept."""

_SUFFIXES = {".onnx": "onnx", ".xml": "openvino", ".pte": "executorch"}


def runtime_for_path(path: str | os.PathLike[str]) -> str:
    """The runtime a file is for, from its suffix: `.onnx` ONNX Runtime, `.xml` OpenVINO, `.pte` ExecuTorch, else
    PyTorch (checkpoint folders, `.safetensors`, `.ckpt`)."""
    return _SUFFIXES.get(Path(path).suffix.lower(), "torch")
