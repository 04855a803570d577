"""Deprecated path of `bridgeseg.onnx` (it goes in the next release).

`OnnxSegmenter(path)` is `bridgeseg.Predictor.from_checkpoint(path)` (or `Predictor(OnnxBackend(path))`).
"""

import os
from collections.abc import Sequence

from bridgeseg._deprecated import warn_moved
from bridgeseg.onnx import (  # noqa: F401
    EXPORTERS,
    SIZE_MULTIPLE,
    OnnxBackend,
    ParityReport,
    check_parity,
    export_onnx,
    read_metadata,
)
from bridgeseg.predictor import Predictor

warn_moved("bridgeseg.export", "bridgeseg.onnx (OnnxSegmenter: bridgeseg.Predictor with an OnnxBackend)")


def OnnxSegmenter(
    path: str | os.PathLike[str], providers: Sequence[str] | None = None, threads: int | None = None
) -> Predictor:
    """Deprecated: `Predictor(OnnxBackend(path, providers, threads))`."""
    return Predictor(OnnxBackend(path, providers=providers, threads=threads))
