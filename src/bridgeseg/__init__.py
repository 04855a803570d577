"""bridgeseg: language-guided lightweight semantic segmentation.

A small CNN backbone sees the image, a frozen text encoder turns class names into the classifier, and a
bridge fusion module (a CNN branch and a transformer branch with a two-way bridge) aligns the two.

The public API, as timm and smp lay theirs out:

- `create_model(method, ...)`, `list_methods()`: build a `SegmentationModel` by name;
- `load_model(path)`, `save_checkpoint(model, dir)`: self-contained checkpoints (nothing unpickled);
- `Predictor`: segment any image with any class list, on PyTorch or ONNX Runtime; `Prediction`: its result.

Example:
    >>> import bridgeseg
    >>> model = bridgeseg.create_model("bridge", backbone="efficientnet_lite0", classes=["sky", "grass", "cat"])
    >>> predictor = bridgeseg.Predictor(model)  # or bridgeseg.Predictor.from_checkpoint("outputs/demo/model")
"""

from __future__ import annotations

import importlib
from typing import Any

from bridgeseg._version import __version__

__all__ = [
    "Prediction",
    "Predictor",
    "SegmentationModel",
    "__version__",
    "create_model",
    "list_methods",
    "load_model",
    "save_checkpoint",
]

# Lazy: `import bridgeseg.data` or the CLI's --help should not pay for importing timm and transformers.
_HOMES = {
    "create_model": "bridgeseg.models",
    "list_methods": "bridgeseg.models",
    "SegmentationModel": "bridgeseg.models",
    "load_model": "bridgeseg.checkpoints",
    "save_checkpoint": "bridgeseg.checkpoints",
    "Predictor": "bridgeseg.runtime.predictor",
    "Prediction": "bridgeseg.runtime.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'bridgeseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
