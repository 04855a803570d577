"""Pascal Context with 59 classes, as mmseg's converter writes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from bridgeseg.data.classes import PASCAL_CONTEXT59_CLASSES
from bridgeseg.data.datasets._helpers import require_dir, resolve_base, voc_like_samples
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset


@register_dataset("pascal_context59")
class PascalContext59Dataset(SegmentationDataset):
    """Pascal Context, 59 classes: ``reduce_zero_label`` (stored 0 = background becomes ignore).

    Layout::

        VOCdevkit/VOC2010/JPEGImages/<id>.jpg
        VOCdevkit/VOC2010/SegmentationClassContext/<id>.png    # mmseg tools/dataset_converters/pascal_context.py
        VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt
    """

    label_hint: ClassVar[str] = (
        "SegmentationClassContext masks hold 0 (background, ignored) and 1..59 (mmseg's pascal_context.py)"
    )

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transforms: Transform | None = None) -> None:
        """Create the dataset.

        Args:
            root: ``VOC2010``, ``VOCdevkit`` or the folder above ``VOCdevkit``.
            split: ``train`` or ``val`` (a list in ``ImageSets/SegmentationContext``).
            transforms: Callable applied to each sample dict.
        """
        root = Path(root)
        hint = "point root at VOCdevkit/VOC2010 or a folder above it"
        base = resolve_base(self.name, root, ("", "VOC2010", "VOCdevkit/VOC2010"), "JPEGImages", hint)
        mask_dir = base / "SegmentationClassContext"
        require_dir(self.name, mask_dir, "create it with mmseg's pascal_context.py converter")
        split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        samples = voc_like_samples(self.name, base, split_file, [mask_dir])
        super().__init__(root, split, samples, PASCAL_CONTEXT59_CLASSES, transforms, reduce_zero_label=True)
