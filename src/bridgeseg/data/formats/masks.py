"""Mask exports: CVAT "Segmentation mask 1.1" (colour PNGs + ``labelmap.txt``) and VOC-style palette PNGs.

CVAT layout::

    root/labelmap.txt                          # "# label:color_rgb:parts:actions", then "name:r,g,b::" lines
    root/SegmentationClass/<name>.png          # each pixel coloured as its class in labelmap.txt
    root/JPEGImages/<name>.jpg                 # present when exported with "Save images"
    root/ImageSets/Segmentation/<split>.txt    # train.txt / val.txt are splits; default.txt is none

VOC-style palette layout (Pascal VOC, labelme2voc, many tools' "mask" exports)::

    root/classes.txt (or class_names.txt, labels.txt)   # one name a line, line 1 = index 0
    root/SegmentationClass/<name>.png (or SegmentationClassPNG/)   # palette or greyscale PNG: index per pixel
    root/JPEGImages/<name>.jpg (or images/)
    root/ImageSets/Segmentation/<split>.txt             # optional splits

Mask values and colours are read exactly (no tolerance); 255 is ignore in palette masks (VOC's object borders).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from bridgeseg.data.formats._base import AnnotationReader, Entry, ignore_label, index_mask, relative_key, split_name
from bridgeseg.errors import DatasetError, DatasetNotFoundError
from bridgeseg.images import IMAGE_EXTENSIONS
from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = ["CVATMaskReader", "PaletteReader"]

_LABELMAP_LINE = re.compile(r"^(?P<name>[^:#][^:]*):(?P<r>\d+),(?P<g>\d+),(?P<b>\d+):")
_MASK_DIRS = ("SegmentationClass", "SegmentationClassPNG", "SegmentationClassAug")
_IMAGE_DIRS = ("JPEGImages", "images", "Images")
_CLASS_FILES = ("classes.txt", "class_names.txt", "labels.txt")


def _mask_dir(root: Path) -> Path | None:
    return next((root / name for name in _MASK_DIRS if (root / name).is_dir()), None)


def _labelmap(root: Path) -> list[tuple[str, tuple[int, int, int]]] | None:
    path = root / "labelmap.txt"
    if not path.is_file():
        return None
    entries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        match = _LABELMAP_LINE.match(line.strip())
        if match:
            entries.append((match["name"], (int(match["r"]), int(match["g"]), int(match["b"]))))
    return entries or None


class _MaskReader(AnnotationReader):
    vector: ClassVar[bool] = False

    def _entries(self) -> list[Entry]:
        mask_dir = _mask_dir(self.root)
        if mask_dir is None:
            raise DatasetNotFoundError(f"{self.root}: no {' or '.join(_MASK_DIRS)} folder; expected {self.looks_for}")
        image_dir = next((self.root / name for name in _IMAGE_DIRS if (self.root / name).is_dir()), None)
        images: dict[str, Path] = {}
        if image_dir is not None:
            for path in sorted(image_dir.iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    images.setdefault(path.stem, path)
        splits: dict[str, str] = {}
        list_dir = self.root / "ImageSets" / "Segmentation"
        for list_file in sorted(list_dir.glob("*.txt")) if list_dir.is_dir() else []:
            split = split_name(list_file.stem)
            if split is not None:
                for line in list_file.read_text().split():
                    splits[line] = split
        entries = []
        for mask in sorted(mask_dir.glob("*.png")):
            image = images.get(mask.stem)
            entry = Entry(
                key=relative_key(image, self.root) if image else mask.stem,
                source=mask,
                image_path=image,
                mask_path=mask,
                split=splits.get(mask.stem),
            )
            if image is None:
                entry.problems.append(
                    f"{mask}: no image {mask.stem}.* in {image_dir or self.root / 'JPEGImages'}; export with the "
                    f"images (CVAT: 'Save images') or copy them there"
                )
            entries.append(entry)
        if not entries:
            raise DatasetError(f"{mask_dir}: no PNG masks")
        return entries


class CVATMaskReader(_MaskReader):
    """CVAT "Segmentation mask 1.1": colour PNGs and ``labelmap.txt``."""

    name: ClassVar[str] = "cvat"
    looks_for: ClassVar[str] = "labelmap.txt with 'name:r,g,b::' lines and SegmentationClass/*.png (CVAT)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _mask_dir(root) is not None and _labelmap(root) is not None

    def read(self) -> tuple[list[str], list[Entry]]:
        labelmap = _labelmap(self.root)
        if labelmap is None:
            raise DatasetNotFoundError(f"{self.root}: no labelmap.txt with 'name:r,g,b::' lines")
        self._colours = {(r << 16) | (g << 8) | b: index for index, (_, (r, g, b)) in enumerate(labelmap)}
        return [name for name, _ in labelmap], self._entries()

    def mask_labels(self, entry: Entry, mask: Image.Image) -> np.ndarray:
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        unique, inverse = np.unique(codes, return_inverse=True)
        lookup = np.array([self._colours.get(int(code), -1) for code in unique], dtype=np.int64)
        if (lookup < 0).any():
            unknown = [f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in unique[lookup < 0][:5].tolist()]
            raise DatasetError(
                f"{entry.mask_path}: colours {', '.join(unknown)} are not in labelmap.txt; add the labels, or "
                f"re-export masks and labelmap together"
            )
        return lookup[inverse].reshape(codes.shape)


class PaletteReader(_MaskReader):
    """VOC-style palette (or greyscale) index PNGs with a class list."""

    name: ClassVar[str] = "palette"
    looks_for: ClassVar[str] = "SegmentationClass/*.png index masks and classes.txt or class_names.txt (VOC-style)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _mask_dir(root) is not None and any((root / name).is_file() for name in _CLASS_FILES)

    def read(self) -> tuple[list[str], list[Entry]]:
        class_file = next((self.root / name for name in _CLASS_FILES if (self.root / name).is_file()), None)
        if class_file is None:
            raise DatasetNotFoundError(f"{self.root}: no class list ({', '.join(_CLASS_FILES)}); write one name a line")
        lines = [line.strip() for line in class_file.read_text(encoding="utf-8-sig").splitlines()]
        names = [line for line in lines if line and not ignore_label(line)]
        self._class_file, self._num_classes = class_file, len(names)
        return names, self._entries()

    def mask_labels(self, entry: Entry, mask: Image.Image) -> np.ndarray:
        assert entry.mask_path is not None
        values = index_mask(mask, entry.mask_path)
        bad = np.unique(values[(values >= self._num_classes) & (values != IGNORE_INDEX)])
        if bad.size:
            raise DatasetError(
                f"{entry.mask_path}: values {bad[:10].tolist()} have no class in {self._class_file} "
                f"({self._num_classes} names, 255 = ignore); add the names or fix the mask"
            )
        return values
