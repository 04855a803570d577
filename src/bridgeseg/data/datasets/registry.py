"""The dataset registry: `@register_dataset(name)` adds a layout, `create_dataset` builds one by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bridgeseg.data.datasets.base import SegmentationDataset, Transform

__all__ = ["create_dataset", "list_datasets", "register_dataset"]

_REGISTRY: dict[str, type[SegmentationDataset]] = {}


def register_dataset(name: str) -> Callable[[type[SegmentationDataset]], type[SegmentationDataset]]:
    """Class decorator adding a dataset to :func:`create_dataset` under ``name``.

    The class is constructed as ``cls(root=..., split=..., transforms=..., **kwargs)``.
    """

    def decorator(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
        key = _normalise_name(name)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"Dataset name {name!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
        cls.name = key
        return cls

    return decorator


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def list_datasets() -> list[str]:
    """Names accepted by :func:`create_dataset`."""
    return sorted(_REGISTRY)


def create_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    transforms: Transform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Build a dataset by name.

    Args:
        name: One of :func:`list_datasets` (``ade20k``, ``cityscapes``, ``voc``, ``pascal_context59``,
            ``coco_stuff164k``, ``folder``).
        root: Dataset root (see each dataset class for the layout).
        split: Split name; ``train``/``val`` work for every dataset.
        transforms: Callable taking and returning the sample dict.
        **kwargs: Dataset-specific options (``aug`` for ``voc``; ``classes``, ``reduce_zero_label``,
            ``allow_binary_255`` for ``folder``).

    Returns:
        The dataset.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
        DatasetError: The files break the layout.

    Example:
        >>> dataset = create_dataset("folder", root="data/my_set", split="train")  # doctest: +SKIP
    """
    key = _normalise_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return _REGISTRY[key](root=root, split=split, transforms=transforms, **kwargs)
