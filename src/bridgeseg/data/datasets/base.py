"""The shared base of every dataset: `SegmentationDataset` (lazy reading, validation at the boundary, the split
check) and its `CheckReport`.

Every dataset returns samples as dicts::

    {"image": float32 [3, H, W] in [0, 1],   # not mean/std-normalised: the model does that
     "mask": int64 [H, W], 255 = ignore,
     "path": str}                              # the image file

Construction only lists folders (fast, even for COCO-Stuff); each sample is validated when it is read (unreadable
image, colour mask, size mismatch, out-of-range labels), and :meth:`SegmentationDataset.check` scans every mask once.
Every problem raises a :class:`DatasetError` whose message names the file and says what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from bridgeseg.data.classes import clean_class_names
from bridgeseg.errors import DatasetError
from bridgeseg.images import TRANSPOSING_ORIENTATIONS, FileInfo, decode, mask_to_array, open_image, pil_to_tensor
from bridgeseg.images import probe as _probe
from bridgeseg.vocabulary import IGNORE_INDEX

logger = logging.getLogger(__name__)

__all__ = ["CheckReport", "Sample", "SegmentationDataset", "Transform"]

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


@dataclass
class CheckReport:
    """Result of :meth:`SegmentationDataset.check`.

    Attributes:
        dataset: Dataset name.
        split: Split name.
        num_samples: Number of image/mask pairs scanned.
        class_pixels: Pixels per class over the whole split, int64 ``[num_classes]`` (after label mapping).
        ignore_pixels: Pixels labelled ``ignore_index``.
        problems: One line per problem found, each naming its file.
    """

    dataset: str
    split: str
    num_samples: int
    class_pixels: np.ndarray
    ignore_pixels: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def absent_classes(self, class_names: Sequence[str]) -> list[str]:
        """Names of the classes that no mask of the split contains."""
        return [name for name, count in zip(class_names, self.class_pixels.tolist(), strict=True) if count == 0]

    def summary(self) -> str:
        """A few lines for a CLI: sample count, labelled / ignored pixels, absent classes, problems."""
        labelled = int(self.class_pixels.sum())
        total = max(labelled + self.ignore_pixels, 1)
        lines = [
            f"{self.dataset} [{self.split}]: {self.num_samples} samples, {len(self.class_pixels)} classes, "
            f"{labelled} labelled pixels, {self.ignore_pixels} ignored ({100.0 * self.ignore_pixels / total:.1f} %)",
            f"classes never present: {int((self.class_pixels == 0).sum())}",
            f"problems: {len(self.problems)}",
        ]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class SegmentationDataset(Dataset):
    """Image/mask pairs with class names, read and validated lazily.

    Subclasses find their files and call this constructor with the pairs. A mask holds class indices
    ``0..num_classes-1`` and ``ignore_index`` (255); with ``reduce_zero_label`` the stored values are shifted
    first (0 → 255, k → k-1), as mmseg does for ADE20K and Pascal Context 59.

    Attributes:
        name: Registry name of the dataset.
        root: Dataset root as given.
        split: Split name as given.
        classes: Display names in index order (as the dataset spells them).
        prompt_names: Cleaned names for the text encoder, same order.
        num_classes: ``len(classes)``.
        ignore_index: Label of pixels that carry no class (255).
        reduce_zero_label: Whether stored label 0 means "ignore" and the others shift down by one.
        samples: ``(image_path, mask_path)`` pairs, sorted.
        transforms: Callable applied to each sample dict, or None.
    """

    name: ClassVar[str] = "custom"
    label_hint: ClassVar[str] = "masks must hold class indices 0..K-1 and 255 for ignored pixels"
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        samples: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        transforms: Transform | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        """Create the dataset.

        Args:
            root: Dataset root (for messages and reports).
            split: Split name.
            samples: ``(image_path, mask_path)`` pairs.
            classes: Display names in index order.
            transforms: Callable taking and returning the sample dict.
            reduce_zero_label: Map stored 0 to ignore and k to k-1.

        Raises:
            DatasetError: No samples, or no classes.
        """
        super().__init__()
        self.root = Path(root)
        self.split = split
        self.samples: list[tuple[Path, Path]] = [(Path(image), Path(mask)) for image, mask in samples]
        self.classes: list[str] = list(classes)
        self.prompt_names: list[str] = clean_class_names(self.classes)
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        if not self.classes:
            raise DatasetError(f"{self.name}: the class list is empty")
        if self.num_classes > IGNORE_INDEX:
            raise DatasetError(
                f"{self.name}: {self.num_classes} classes, but label {IGNORE_INDEX} is reserved for ignore; "
                f"at most {IGNORE_INDEX} classes are supported"
            )
        if not self.samples:
            raise DatasetError(f"{self.name}: no samples in split {split!r} under {self.root}")
        logger.debug("%s [%s]: %d samples, %d classes", self.name, split, len(self.samples), self.num_classes)

    @property
    def num_classes(self) -> int:
        """Number of classes (ignore excluded)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
            f"num_classes={self.num_classes})"
        )

    def __getitem__(self, index: int) -> Sample:
        """Read, validate and transform one sample.

        Raises:
            DatasetError: The image or mask is unreadable, the mask is a colour image, their sizes differ, or the
                mask holds labels outside ``0..num_classes-1`` other than 255.
        """
        image_path = self.samples[index][0]
        with open_image(image_path, "image") as raw_image:
            decoded, image_info = decode(raw_image, image_path, "image")
            image = pil_to_tensor(decoded, image_path)
        mask = self._read_mask(index, image_info)
        sample: Sample = {"image": image, "mask": torch.from_numpy(mask), "path": str(image_path)}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _read_mask(self, index: int, image_info: FileInfo) -> np.ndarray:
        """Read the mask of sample ``index``, check it against its image and map its labels."""
        image_path, mask_path = self.samples[index]
        with open_image(mask_path, "mask") as raw_mask:
            decoded, mask_info = decode(raw_mask, mask_path, "mask")
            stored = mask_to_array(decoded, mask_path)
        self._check_sizes(image_path, image_info, mask_path, mask_info)
        return self._map_labels(stored, mask_path)

    def _check_sizes(self, image_path: Path, image_info: FileInfo, mask_path: Path, mask_info: FileInfo) -> None:
        if image_info.size == mask_info.size:
            return
        (mask_w, mask_h), (image_w, image_h) = mask_info.size, image_info.size
        if (
            image_info.orientation in TRANSPOSING_ORIENTATIONS
            and mask_info.orientation == 1
            and mask_info.size == image_info.stored_size
        ):
            raise DatasetError(
                f"{mask_path}: mask is {mask_w}x{mask_h} like the stored pixels of {image_path}, but that image has "
                f"EXIF orientation {image_info.orientation} and is rotated on load; rotate the image pixels and drop "
                f"the tag (PIL.ImageOps.exif_transpose), or give the mask the same EXIF orientation"
            )
        raise DatasetError(
            f"{mask_path}: mask is {mask_w}x{mask_h} but its image {image_path} is {image_w}x{image_h}; a mask must "
            f"match its image pixel for pixel (re-export it at the image size, nearest-neighbour)"
        )

    def _map_labels(self, stored: np.ndarray, mask_path: Path) -> np.ndarray:
        """Validate stored label values and map them to ``0..K-1`` / 255."""
        present = np.flatnonzero(np.bincount(stored.ravel()))  # stored values are >= 0 (unsigned image data)
        limit = self.num_classes + 1 if self.reduce_zero_label else self.num_classes
        bad = present[(present >= limit) & (present != IGNORE_INDEX)]
        if bad.size:
            self._raise_bad_labels(mask_path, bad, present)
        self._check_label_values(mask_path, present)
        if not self.reduce_zero_label:
            return stored
        mapped = stored - 1
        mapped[(stored == 0) | (stored == IGNORE_INDEX)] = IGNORE_INDEX
        return mapped

    def _raise_bad_labels(self, mask_path: Path, bad: np.ndarray, present: np.ndarray) -> None:
        values = ", ".join(str(v) for v in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        top = self.num_classes if self.reduce_zero_label else self.num_classes - 1
        expected = f"0..{top} (0 = ignore, reduce_zero_label)" if self.reduce_zero_label else f"0..{top}"
        raise DatasetError(
            f"{mask_path}: label values {values} are outside {expected} and not 255 (ignore) for {self.name} with "
            f"{self.num_classes} classes; {self.label_hint}"
        )

    def _check_label_values(self, mask_path: Path, present: np.ndarray) -> None:
        """Hook for dataset-specific label checks on the stored values present in one mask."""

    def check_sample(self, count: int = 16) -> int:
        """Check the masks of `count` evenly spaced samples: readable, index masks, sized as their images (read
        from the headers), label values in range; the quick check `bridgeseg fit` runs before training.

        Nothing random is drawn, so a run checked this way trains exactly as one that is not.

        Args:
            count: Samples to check (all of them when the split has fewer).

        Returns:
            The number of samples checked.

        Raises:
            DatasetError: The first problem found.
        """
        total = len(self)
        count = min(count, total)
        indices = sorted({round(step * (total - 1) / max(count - 1, 1)) for step in range(count)})
        for index in indices:
            image_path, _ = self.samples[index]
            self._read_mask(index, _probe(image_path, "image"))
        return len(indices)

    def check(self, decode_images: bool = False, num_workers: int = 0, raise_on_error: bool = True) -> CheckReport:
        """Scan every mask once: readability, mode, size against the image header, label values, class pixels.

        Args:
            decode_images: Also decode every image (finds truncated files; slower). Otherwise only the image
                headers are read.
            num_workers: Threads reading files in parallel (0 = in this thread).
            raise_on_error: Raise when a problem is found instead of only reporting it.

        Returns:
            The report, with per-class pixel counts and one line per problem.

        Raises:
            DatasetError: ``raise_on_error`` and at least one problem; the message lists the first few.
        """

        def scan(index: int) -> tuple[np.ndarray | None, str | None]:
            image_path, _ = self.samples[index]
            try:
                if decode_images:
                    with open_image(image_path, "image") as raw_image:
                        _, image_info = decode(raw_image, image_path, "image")
                else:
                    image_info = _probe(image_path, "image")
                return self._read_mask(index, image_info), None
            except DatasetError as exc:
                return None, str(exc)

        class_pixels = np.zeros(self.num_classes, dtype=np.int64)
        ignore_pixels = 0
        problems: list[str] = []
        indices = range(len(self))
        if num_workers > 0:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                results: Iterable[tuple[np.ndarray | None, str | None]] = list(pool.map(scan, indices))
        else:
            results = map(scan, indices)
        for mask, problem in results:
            if problem is not None:
                problems.append(problem)
                continue
            assert mask is not None
            counts = np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1)
            class_pixels += counts[: self.num_classes]
            ignore_pixels += int(counts[IGNORE_INDEX])
        problems += self._check_split(class_pixels, ignore_pixels)
        report = CheckReport(self.name, self.split, len(self), class_pixels, ignore_pixels, problems)
        if problems and raise_on_error:
            listed = "\n".join(f"  {problem}" for problem in problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise DatasetError(
                f"{self.name} [{self.split}] at {self.root}: {len(problems)} problem(s) in {len(self)} samples:\n"
                f"{listed}{more}"
            )
        return report

    def _check_split(self, class_pixels: np.ndarray, ignore_pixels: int) -> list[str]:
        """Hook for split-level checks in :meth:`check`; returns problem lines."""
        return []
