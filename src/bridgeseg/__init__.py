"""bridgeseg: language-guided lightweight semantic segmentation.

A small CNN backbone sees the image, a frozen text encoder turns class names into the classifier, and a
bridge fusion module (a CNN branch and a transformer branch with a two-way bridge) aligns the two.

Example:
    >>> import bridgeseg
    >>> model = bridgeseg.create_model("bridge", backbone="efficientnet_lite0", classes=["sky", "grass", "cat"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_methods"]


def __getattr__(name: str) -> Any:
    # Lazy: `import bridgeseg.data` or the CLI's --help should not pay for importing timm and transformers.
    if name in ("create_model", "list_methods"):
        from bridgeseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'bridgeseg' has no attribute {name!r}")
