"""A folder of images and index-PNG masks with a ``classes.txt``: the layout for your own data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from bridgeseg.data.datasets._helpers import by_stem, list_files, pair, require_dir
from bridgeseg.data.datasets.base import SegmentationDataset, Transform
from bridgeseg.data.datasets.registry import register_dataset
from bridgeseg.errors import DatasetError, DatasetNotFoundError
from bridgeseg.images import IMAGE_EXTENSIONS
from bridgeseg.vocabulary import IGNORE_INDEX


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Read ``classes.txt``: one class name a line, in index order (trailing blank lines ignored).

    Raises:
        DatasetNotFoundError: The file does not exist.
        DatasetError: The file is empty, has a blank line between names (it would shift every index after it) or
            names a class twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path}: class list not found; write one class name a line, in index order (line 1 = label 0)"
        )
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: class list is empty; write one class name a line, in index order")
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DatasetError(f"{path}: line {number} is blank; every line up to the last names one class")
        if name in first_line:
            raise DatasetError(
                f"{path}: line {number} repeats class {name!r} of line {first_line[name]}; give each label a distinct "
                "name (two labels with one name get one text embedding and cannot be told apart)"
            )
        first_line[name] = number
    return [line.rstrip("\r\n") for line in lines]


@register_dataset("folder")
class FolderDataset(SegmentationDataset):
    """A folder of images and index-PNG masks with a ``classes.txt``.

    Layout::

        root/images/{train,val}/<name>.{jpg,jpeg,png,bmp,tif}
        root/masks/{train,val}/<name>.png      # class index per pixel: 0..K-1, 255 = ignore
        root/classes.txt                       # K lines, line 1 = label 0

    A binary mask saved as 0/255 with two classes would have its foreground silently ignored (255 is the ignore
    label); such masks are rejected with a message saying to save 0/1.
    """

    label_hint: ClassVar[str] = "folder masks hold 0..K-1 (K = lines in classes.txt) and 255 for ignored pixels"
    _SPLIT_ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("training",),
        "training": ("train",),
        "val": ("validation", "valid"),
        "validation": ("val", "valid"),
        "valid": ("val", "validation"),
        "test": ("testing",),
        "testing": ("test",),
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transforms: Transform | None = None,
        classes: Sequence[str] | None = None,
        reduce_zero_label: bool = False,
        allow_binary_255: bool = False,
    ) -> None:
        """Create the dataset.

        Args:
            root: Folder holding ``images/``, ``masks/`` and ``classes.txt``.
            split: Sub-folder of ``images/`` and ``masks/``; ``train``/``training`` and ``val``/``validation`` are
                interchangeable.
            transforms: Callable applied to each sample dict.
            classes: Class names in index order; overrides ``classes.txt``.
            reduce_zero_label: Stored 0 means ignore and k means class k-1 (mmseg convention).
            allow_binary_255: Accept masks that hold only 0 and 255 with two classes (255 really marking ignored
                pixels); by default they are rejected as the 0/255 binary-mask mistake.
        """
        root = Path(root)
        hint = "expected root/images/<split>/, root/masks/<split>/ and root/classes.txt"
        if not root.is_dir():
            raise DatasetNotFoundError(f"{self.name}: root {root} does not exist; {hint}")
        folder = next(
            (s for s in (split, *self._SPLIT_ALIASES.get(split, ())) if (root / "images" / s).is_dir()),
            split,
        )
        image_dir, mask_dir = root / "images" / folder, root / "masks" / folder
        require_dir(self.name, image_dir, hint)
        require_dir(self.name, mask_dir, hint)
        names = list(classes) if classes is not None else read_class_file(root / "classes.txt")
        self.allow_binary_255 = allow_binary_255
        images = by_stem(self.name, list_files(image_dir, IMAGE_EXTENSIONS))
        masks = by_stem(self.name, list_files(mask_dir, (".png",)))
        rule = "each images/<split>/<name>.<ext> needs masks/<split>/<name>.png"
        samples = pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, names, transforms, reduce_zero_label=reduce_zero_label)

    def _is_binary_255(self, present: np.ndarray) -> bool:
        return (
            self.num_classes == 2
            and not self.reduce_zero_label
            and not self.allow_binary_255
            and IGNORE_INDEX in present
            and set(present.tolist()) <= {0, IGNORE_INDEX}
        )

    def _check_label_values(self, mask_path: Path, present: np.ndarray) -> None:
        if self._is_binary_255(present):
            raise DatasetError(
                f"{mask_path}: binary mask holds 0/255 with 2 classes; 255 is ignore, so the foreground would never "
                f"be learned: use 0/1 (e.g. mask // 255), or pass allow_binary_255=True if 255 really means ignore"
            )

    def _raise_bad_labels(self, mask_path: Path, bad: np.ndarray, present: np.ndarray) -> None:
        if self.reduce_zero_label:
            super()._raise_bad_labels(mask_path, bad, present)
        values = ", ".join(str(v) for v in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        raise DatasetError(
            f"{mask_path}: label values {values} are >= {self.num_classes} (the number of classes) and not 255 "
            f"(ignore); masks must hold 0..{self.num_classes - 1} with label k = line k+1 of classes.txt (usually "
            f"line 1 = background): add the missing class names or fix the mask"
        )
