"""The segmentation methods, one file each, and the factory that builds them by name.

- `bridge`: the paper's method (`BridgeModel`);
- `denseclip`, `lseg`: the language-guided baselines (`DenseCLIPModel`, `LSegModel`);
- `fpn`: the language-free baseline (`FPNModel`);
- `lraspp`, `segformer`: classic light heads, closed set and language-free, on any backbone (`LRASPPModel`,
  `SegFormerHeadModel`).

A new method is a new file: a `SegmentationModel` subclass decorated with `@register_method("name")`, imported
here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bridgeseg.models.methods.base import ModelConfig, SegmentationModel, method_class, method_names, register_method

# isort: off
# Registration order is the order `list_methods` gives: the method, then its baselines.
from bridgeseg.models.methods.bridge import BridgeModel
from bridgeseg.models.methods.denseclip import DenseCLIPModel
from bridgeseg.models.methods.lseg import LSegModel
from bridgeseg.models.methods.fpn import FPNModel
from bridgeseg.models.methods.lraspp import LRASPPModel
from bridgeseg.models.methods.segformer import SegFormerHeadModel
# isort: on

__all__ = [
    "BridgeModel",
    "DenseCLIPModel",
    "FPNModel",
    "LRASPPModel",
    "LSegModel",
    "ModelConfig",
    "SegFormerHeadModel",
    "SegmentationModel",
    "create_model",
    "list_methods",
    "register_method",
]


def list_methods() -> list[str]:
    """Names accepted by `create_model`."""
    return method_names()


def create_model(
    method: str | ModelConfig | dict[str, Any] = "bridge",
    class_embeddings: Tensor | None = None,
    **options: Any,
) -> SegmentationModel:
    """Build a segmentation model by name or from a config.

    Args:
        method: A registered name (`list_methods`: "bridge", "denseclip", "lseg", "fpn", "lraspp", "segformer"),
            or a `ModelConfig` / dict holding the whole config.
        class_embeddings: Precomputed text embeddings of the classes (from a checkpoint).
        **options: `ModelConfig` fields, e.g. `backbone`, `text_encoder`, `classes`, `fusion_blocks`.

    Returns:
        The model.

    Raises:
        ValueError: Unknown method or option (the message lists the valid ones), or a missing class list.

    Example:
        >>> model = create_model("bridge", backbone="efficientnet_lite0", classes=["sky", "grass", "cat"])
    """
    if isinstance(method, ModelConfig):
        config = ModelConfig.from_dict({**method.to_dict(), **options})
    elif isinstance(method, dict):
        config = ModelConfig.from_dict({**method, **options})
    else:
        config = ModelConfig.from_dict({"method": method, **options})
    model_class = method_class(config.method)
    if not config.classes:
        raise ValueError("no classes given; pass classes=[...] (the class names, in label-index order)")
    return model_class(config, class_embeddings=class_embeddings)
