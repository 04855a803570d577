"""Models: backbones, text encoders, the bridge fusion module, decoders and the four segmentors.

One factory builds every method by name::

    model = create_model("bridge", backbone="efficientnet_lite0", text_encoder="minilm", classes=["sky", "cat"])
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bridgeseg._deprecated import renamed
from bridgeseg.models.segmentor import SEGMENTORS, ModelConfig, SegmentationModel
from bridgeseg.vocabulary import validate_class_names


def list_methods() -> list[str]:
    """Names accepted by `create_model`."""
    return list(SEGMENTORS)


def create_model(
    method: str | ModelConfig | dict[str, Any] = "bridge",
    class_embeddings: Tensor | None = None,
    **options: Any,
) -> SegmentationModel:
    """Build a segmentation model by name or from a config.

    Args:
        method: "bridge", "denseclip", "lseg" or "fpn"; or a `ModelConfig` / dict holding the whole config.
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
    if config.method not in SEGMENTORS:
        raise ValueError(f"unknown method {config.method!r}; valid methods: {', '.join(SEGMENTORS)}")
    if not config.classes:
        raise ValueError("no classes given; pass classes=[...] (the class names, in label-index order)")
    return SEGMENTORS[config.method](config, class_embeddings=class_embeddings)


__all__ = ["ModelConfig", "SegmentationModel", "create_model", "list_methods", "validate_class_names"]

__getattr__ = renamed(__name__, {"Segmentor": ("SegmentationModel", SegmentationModel)})
