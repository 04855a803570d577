"""Pascal VOC 2012, optionally with the SBD augmented masks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from bridgeseg.data.classes import VOC_CLASSES
from bridgeseg.data.datasets._helpers import require_dir, resolve_base, voc_like_samples
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset


@register_dataset("voc")
class VOCDataset(SegmentationDataset):
    """Pascal VOC 2012 (optionally with the SBD augmented masks): 21 classes incl. background, 255 = ignore.

    Layout::

        VOCdevkit/VOC2012/JPEGImages/<id>.jpg
        VOCdevkit/VOC2012/SegmentationClass/<id>.png        # palette PNG, read as indices
        VOCdevkit/VOC2012/SegmentationClassAug/<id>.png     # aug=True (mmseg tools/dataset_converters/voc_aug.py)
        VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval,aug}.txt
    """

    label_hint: ClassVar[str] = "VOC masks are palette PNGs holding 0..20 and 255 on object boundaries"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transforms: Transform | None = None,
        aug: bool = False,
    ) -> None:
        """Create the dataset.

        Args:
            root: ``VOC2012``, ``VOCdevkit`` or the folder above ``VOCdevkit``.
            split: Name of a list in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``, ``aug``). With
                ``aug=True`` the ``train`` split reads ``aug.txt``, the 10,582-image augmented list.
            transforms: Callable applied to each sample dict.
            aug: Read masks from ``SegmentationClassAug``, falling back to ``SegmentationClass`` for ids it lacks.
        """
        root = Path(root)
        hint = "point root at VOCdevkit/VOC2012 or a folder above it"
        base = resolve_base(self.name, root, ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", hint)
        self.aug = aug
        list_name = "aug" if aug and split == "train" else split
        split_file = base / "ImageSets" / "Segmentation" / f"{list_name}.txt"
        mask_dirs = [base / "SegmentationClass"]
        if aug:
            require_dir(self.name, base / "SegmentationClassAug", "create it with mmseg's voc_aug.py converter")
            mask_dirs.insert(0, base / "SegmentationClassAug")
        samples = voc_like_samples(self.name, base, split_file, mask_dirs)
        super().__init__(root, split, samples, VOC_CLASSES, transforms)
