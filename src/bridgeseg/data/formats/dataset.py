"""The ``annotations`` dataset: any supported export, read through its format's reader, as training samples."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bridgeseg.data.datasets.base import CheckReport, Sample, SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset
from bridgeseg.data.formats import read_annotations
from bridgeseg.data.formats.check import check_dataset
from bridgeseg.data.formats.split import select_entries
from bridgeseg.errors import DatasetError
from bridgeseg.images import FileInfo

__all__ = ["AnnotationDataset"]


@register_dataset("annotations")
class AnnotationDataset(SegmentationDataset):
    """An annotation-tool export (COCO, LabelMe, CVAT, Label Studio, palette PNGs, YOLO) as a dataset.

    Samples are the same ``{"image", "mask", "path"}`` dicts as every other dataset's; masks are rasterised from
    the export when a sample is read, at the image's size after EXIF orientation (see docs/your-data.md).

    Example:
        >>> dataset = create_dataset("annotations", root="exports/coco", split="train")  # doctest: +SKIP
    """

    label_hint: ClassVar[str] = "labels come from the export's own class list"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transforms: Transform | None = None,
        format: str = "auto",
        background: str = "class",
        classes: Sequence[str] | None = None,
        split_dir: str | None = None,
        val_fraction: float | None = None,
        seed: int = 0,
    ) -> None:
        """Read the export.

        Args:
            root: The export's folder.
            split: ``train``, ``val``, ``test`` or ``all``: from ``<root>/splits/<split>.txt`` (``bridgeseg data
                split``), else the export's own split, else a stratified split by ``val_fraction``.
            transforms: Callable applied to each sample dict.
            format: ``auto`` (detect) or a format name: ``coco``, ``labelme``, ``cvat``, ``label_studio``,
                ``palette``, ``yolo``.
            background: ``class`` (unlabelled pixels are a ``background`` class) or ``ignore`` (255).
            classes: Class names in label order, instead of the export's.
            split_dir: Folder of split lists (default ``<root>/splits``).
            val_fraction: Split an export without a split in memory (stratified, seeded by ``seed``).
            seed: Seed of that split.

        Raises:
            DatasetError: No export, an unparsable one, class-list problems, or no such split.
        """
        self.annotations = read_annotations(root, format=format, background=background, classes=classes)
        if self.annotations.problems:
            raise DatasetError("; ".join(self.annotations.problems))
        self.entries = select_entries(self.annotations, split, split_dir, val_fraction, seed)
        self.format = self.annotations.format
        samples = [(e.image_path or e.source, e.mask_path or e.source) for e in self.entries]
        super().__init__(root, split, samples, self.annotations.classes, transforms)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        image, info = self.annotations.open_image(entry)
        mask = self.annotations.render(entry, info.size).astype(np.int64)
        sample: Sample = {"image": image, "mask": torch.from_numpy(mask), "path": entry.name}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _read_mask(self, index: int, image_info: FileInfo) -> np.ndarray:
        return self.annotations.render(self.entries[index], image_info.size).astype(np.int64)

    def check_sample(self, count: int = 16) -> int:
        report = check_dataset(self, count)
        report.raise_for_problems()
        return report.num_samples

    def check(self, decode_images: bool = False, num_workers: int = 0, raise_on_error: bool = True) -> CheckReport:
        report = check_dataset(self)
        if raise_on_error:
            report.raise_for_problems()
        return report

    @property
    def image_paths(self) -> list[Path | None]:
        return [entry.image_path for entry in self.entries]
