"""Cityscapes fine annotations in train ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from bridgeseg.data.classes import CITYSCAPES_CLASSES
from bridgeseg.data.datasets._helpers import by_stem, list_files, pair, require_dir, resolve_base, resolve_split
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset
from bridgeseg.errors import DatasetError


@register_dataset("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations in train ids: 19 classes, 255 = ignore.

    Layout::

        leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
    """

    label_hint: ClassVar[str] = (
        "use the *_gtFine_labelTrainIds.png files (train ids 0..18, 255), not *_labelIds.png (create them with "
        "cityscapesscripts: CITYSCAPES_DATASET=<root> csCreateTrainIdLabelImgs)"
    )
    _SPLITS: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    _IMAGE_SUFFIX = "_leftImg8bit.png"
    _MASK_SUFFIX = "_gtFine_labelTrainIds.png"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transforms: Transform | None = None) -> None:
        """Create the dataset.

        Args:
            root: Folder holding ``leftImg8bit`` and ``gtFine`` (or its parent, as ``root/cityscapes``).
            split: ``train``, ``val`` or ``test``.
            transforms: Callable applied to each sample dict.
        """
        root = Path(root)
        hint = "point root at the folder holding leftImg8bit/ and gtFine/"
        folder = resolve_split(self.name, split, self._SPLITS)
        base = resolve_base(self.name, root, ("", "cityscapes"), "leftImg8bit", hint)
        image_dir, mask_dir = base / "leftImg8bit" / folder, base / "gtFine" / folder
        require_dir(self.name, image_dir, hint)
        require_dir(self.name, mask_dir, hint)
        images = by_stem(self.name, list_files(image_dir, (self._IMAGE_SUFFIX,), recursive=True), self._IMAGE_SUFFIX)
        mask_files = list_files(mask_dir, (self._MASK_SUFFIX,), recursive=True)
        if not mask_files and list_files(mask_dir, ("_gtFine_labelIds.png",), recursive=True):
            raise DatasetError(
                f"{self.name}: {mask_dir} has *_gtFine_labelIds.png but no *_gtFine_labelTrainIds.png; create them "
                f"with cityscapesscripts: CITYSCAPES_DATASET={base} csCreateTrainIdLabelImgs"
            )
        masks = by_stem(self.name, mask_files, self._MASK_SUFFIX)
        rule = f"each <city>/<id>{self._IMAGE_SUFFIX} needs gtFine/{folder}/<city>/<id>{self._MASK_SUFFIX}"
        samples = pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, CITYSCAPES_CLASSES, transforms)
