"""The values of options that the command line, the Python API and the web app share.

One home for each choice, importable without torch, so that `bridgeseg --help` and the argument parsers of every
command can name the choices without paying for the libraries that act on them.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_CALIBRATION_SIZE",
    "DEFAULT_PRECISION",
    "MODES",
    "PRECISIONS",
    "check_precision",
]

PRECISIONS = ("fp32", "bf16", "auto")
"""The forward precisions of the PyTorch runtime: fp32; bf16 autocast; "auto": bf16 on a CPU with native bf16
(AVX512-BF16 or AMX), fp32 elsewhere."""

DEFAULT_PRECISION = "fp32"
"""Precision is never lowered unless asked for, as in PyTorch and ONNX Runtime: bf16 changes some labels (a
demo model's bf16 masks matched ONNX Runtime's fp32 ones on 94–97 % of pixels on a CPU with native bf16), and a
default that depends on the CPU would give different answers on different machines."""

_BF16_RUNTIMES = ("torch", "openvino")
"""Runtimes that can run bf16 when asked: PyTorch (autocast) and OpenVINO (its inference-precision hint)."""

MODES = ("whole", "slide")
"""Prediction modes: one pass over the whole image, or mmseg's overlapping sliding windows."""

DEFAULT_CALIBRATION_IMAGES = 32
"""Images the int8 activation ranges are calibrated on, by default."""
DEFAULT_CALIBRATION_SIZE = 512
"""Side of the square the calibration images are resized and cropped to, by default (a multiple of 32)."""


def check_precision(precision: str, runtime: str = "torch") -> str:
    """Return `precision` when `runtime` offers it.

    Raises:
        ValueError: An unknown precision, or bf16 for a runtime other than PyTorch's.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if runtime not in _BF16_RUNTIMES and precision == "bf16":
        raise ValueError(
            f"precision 'bf16' applies to the PyTorch and OpenVINO runtimes only, not to {runtime}; use fp32 "
            "(or auto) there"
        )
    return precision
