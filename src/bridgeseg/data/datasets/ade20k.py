"""ADE20K (SceneParsing, ``ADEChallengeData2016``) in mmseg's layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from bridgeseg.data.classes import ADE20K_CLASSES
from bridgeseg.data.datasets._helpers import by_stem, list_files, pair, require_dir, resolve_base, resolve_split
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset


@register_dataset("ade20k")
class ADE20KDataset(SegmentationDataset):
    """ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes, ``reduce_zero_label``.

    Layout::

        ADEChallengeData2016/images/{training,validation}/*.jpg
        ADEChallengeData2016/annotations/{training,validation}/*.png   # 0 = other → ignore, k → k-1
    """

    label_hint: ClassVar[str] = "ADE20K annotations hold 0 (other, ignored) and 1..150"
    _SPLITS: ClassVar[dict[str, str]] = {
        "train": "training",
        "training": "training",
        "val": "validation",
        "validation": "validation",
    }

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transforms: Transform | None = None) -> None:
        """Create the dataset.

        Args:
            root: ``ADEChallengeData2016`` or a folder above it (``root/ADEChallengeData2016``,
                ``root/ade/ADEChallengeData2016``).
            split: ``train``/``training`` or ``val``/``validation``.
            transforms: Callable applied to each sample dict.
        """
        root = Path(root)
        hint = "point root at ADEChallengeData2016 (from ADEChallengeData2016.zip) or its parent folder"
        folder = resolve_split(self.name, split, self._SPLITS)
        base = resolve_base(self.name, root, ("", "ADEChallengeData2016", "ade/ADEChallengeData2016"), "images", hint)
        image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
        require_dir(self.name, image_dir, hint)
        require_dir(self.name, mask_dir, hint)
        images = by_stem(self.name, list_files(image_dir, (".jpg", ".jpeg", ".png")))
        masks = by_stem(self.name, list_files(mask_dir, (".png",)))
        rule = "each images/<name>.jpg needs annotations/<name>.png"
        samples = pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, ADE20K_CLASSES, transforms, reduce_zero_label=True)
