"""COCO-Stuff 164k in train ids, as mmseg's converter writes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from bridgeseg.data.classes import COCO_STUFF164K_CLASSES
from bridgeseg.data.datasets._helpers import by_stem, list_files, pair, require_dir, resolve_base, resolve_split
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset
from bridgeseg.errors import DatasetError


@register_dataset("coco_stuff164k")
class COCOStuff164kDataset(SegmentationDataset):
    """COCO-Stuff 164k in train ids: 171 classes, 255 = ignore.

    Layout::

        coco_stuff164k/images/{train2017,val2017}/<id>.jpg
        coco_stuff164k/annotations/{train2017,val2017}/<id>_labelTrainIds.png   # mmseg coco_stuff164k.py
    """

    label_hint: ClassVar[str] = (
        "use the *_labelTrainIds.png files (0..170, 255) made by mmseg's coco_stuff164k.py, not the raw masks"
    )
    _SPLITS: ClassVar[dict[str, str]] = {
        "train": "train2017",
        "train2017": "train2017",
        "val": "val2017",
        "val2017": "val2017",
    }
    _MASK_SUFFIX = "_labelTrainIds.png"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transforms: Transform | None = None) -> None:
        """Create the dataset.

        Args:
            root: ``coco_stuff164k`` or its parent folder.
            split: ``train``/``train2017`` or ``val``/``val2017``.
            transforms: Callable applied to each sample dict.
        """
        root = Path(root)
        hint = "point root at coco_stuff164k (holding images/ and annotations/) or its parent folder"
        folder = resolve_split(self.name, split, self._SPLITS)
        base = resolve_base(self.name, root, ("", "coco_stuff164k"), "images", hint)
        image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
        require_dir(self.name, image_dir, hint)
        require_dir(self.name, mask_dir, hint)
        mask_files = list_files(mask_dir, (self._MASK_SUFFIX,))
        if not mask_files and list_files(mask_dir, (".png",)):
            raise DatasetError(
                f"{self.name}: {mask_dir} has raw *.png masks but no *{self._MASK_SUFFIX}; convert them with "
                f"mmseg's tools/dataset_converters/coco_stuff164k.py"
            )
        images = by_stem(self.name, list_files(image_dir, (".jpg", ".jpeg", ".png")))
        masks = by_stem(self.name, mask_files, self._MASK_SUFFIX)
        rule = f"each images/{folder}/<id>.jpg needs annotations/{folder}/<id>{self._MASK_SUFFIX}"
        samples = pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, COCO_STUFF164K_CLASSES, transforms)
