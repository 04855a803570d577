"""Segmentation datasets in the mmseg folder layouts, plus a generic folder dataset.

Every dataset returns samples as dicts::

    {"image": float32 [3, H, W] in [0, 1],   # not mean/std-normalised: the model does that
     "mask": int64 [H, W], 255 = ignore,
     "path": str}                              # the image file

Files are checked at the boundary. Construction only lists folders (fast, even for COCO-Stuff); each sample is
validated when it is read (unreadable image, colour mask, size mismatch, out-of-range labels), and
:meth:`SegmentationDataset.check` scans every mask once. Every problem raises a :class:`DatasetError` whose
message names the file and says what to do.

Example:
    >>> dataset = create_dataset("ade20k", root="data/ade", split="train")  # doctest: +SKIP
    >>> sample = dataset[0]  # doctest: +SKIP
    >>> sample["image"].shape, sample["mask"].dtype  # doctest: +SKIP
    (torch.Size([3, 512, 683]), torch.int64)
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

from bridgeseg.data.classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_STUFF164K_CLASSES,
    PASCAL_CONTEXT59_CLASSES,
    VOC_CLASSES,
    clean_class_names,
)
from bridgeseg.errors import DatasetError, DatasetNotFoundError
from bridgeseg.images import (
    TRANSPOSING_ORIENTATIONS,
    IMAGE_EXTENSIONS,
    FileInfo,
    decode,
    load_image,
    load_mask,
    mask_to_array,
    open_image,
    pil_to_tensor,
)
from bridgeseg.images import probe as _probe
from bridgeseg.vocabulary import IGNORE_INDEX

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "ADE20KDataset",
    "COCOStuff164kDataset",
    "CheckReport",
    "CityscapesDataset",
    "DatasetError",
    "DatasetNotFoundError",
    "FolderDataset",
    "PascalContext59Dataset",
    "SegmentationDataset",
    "VOCDataset",
    "create_dataset",
    "list_datasets",
    "load_image",
    "load_mask",
    "read_class_file",
    "register_dataset",
]

_EXAMPLES = 5  # how many file names an error message lists

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


# --------------------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------------------------


def _resolve_base(name: str, root: Path, candidates: Sequence[str], required: str, hint: str) -> Path:
    """Find which of ``root/candidate`` holds ``required``; lets root point at the dataset folder or its parent."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"{name}: root {root} does not exist; {hint}")
    for candidate in candidates:
        base = root / candidate if candidate else root
        if (base / required).exists():
            return base
    looked = ", ".join(str((root / c if c else root) / required) for c in candidates)
    raise DatasetNotFoundError(f"{name}: expected {required} under root {root} (looked for {looked}); {hint}")


def _resolve_split(name: str, split: str, aliases: dict[str, str]) -> str:
    try:
        return aliases[split]
    except KeyError:
        valid = ", ".join(sorted(aliases))
        raise DatasetError(f"{name}: unknown split {split!r}; valid splits: {valid}") from None


def _require_dir(name: str, path: Path, hint: str) -> None:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{name}: expected folder {path} not found; {hint}")


def _list_files(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """Files in ``folder`` whose lower-cased name ends with one of ``suffixes``, sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir():
                    if recursive:
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(suffixes) and not entry.name.startswith("."):
                    found.append(Path(entry.path))
    return sorted(found)


def _examples(paths: Iterable[Path | str]) -> str:
    items = sorted(str(p) for p in paths)
    shown = ", ".join(items[:_EXAMPLES])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _EXAMPLES else "")


def _pair(
    name: str,
    images: dict[str, Path],
    masks: dict[str, Path],
    image_dir: Path,
    mask_dir: Path,
    rule: str,
) -> list[tuple[Path, Path]]:
    """Pair images and masks by key; any unmatched file on either side is an error that lists a few."""
    lonely_images = [images[key].name for key in images.keys() - masks.keys()]
    lonely_masks = [masks[key].name for key in masks.keys() - images.keys()]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(
                f"{len(lonely_images)} image(s) in {image_dir} have no mask in {mask_dir}: {_examples(lonely_images)}"
            )
        if lonely_masks:
            parts.append(
                f"{len(lonely_masks)} mask(s) in {mask_dir} have no image in {image_dir}: {_examples(lonely_masks)}"
            )
        raise DatasetError(f"{name}: {'; '.join(parts)}; {rule}")
    return [(images[key], masks[key]) for key in sorted(images)]


def _read_split_file(name: str, path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetNotFoundError(f"{name}: split file {path} not found; check the split name and the layout")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{name}: split file {path} lists no image ids")
    return ids


def _by_stem(name: str, files: Sequence[Path], suffix: str = "") -> dict[str, Path]:
    """Key files by their name minus ``suffix`` (or minus the extension); duplicate keys are an error."""
    keyed: dict[str, Path] = {}
    for path in files:
        key = path.name[: -len(suffix)] if suffix else path.stem
        if key in keyed:
            raise DatasetError(f"{name}: {keyed[key]} and {path} have the same name stem; keep one of them")
        keyed[key] = path
    return keyed


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------

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
        folder = _resolve_split(self.name, split, self._SPLITS)
        base = _resolve_base(self.name, root, ("", "ADEChallengeData2016", "ade/ADEChallengeData2016"), "images", hint)
        image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
        _require_dir(self.name, image_dir, hint)
        _require_dir(self.name, mask_dir, hint)
        images = _by_stem(self.name, _list_files(image_dir, (".jpg", ".jpeg", ".png")))
        masks = _by_stem(self.name, _list_files(mask_dir, (".png",)))
        rule = "each images/<name>.jpg needs annotations/<name>.png"
        samples = _pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, ADE20K_CLASSES, transforms, reduce_zero_label=True)


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
        folder = _resolve_split(self.name, split, self._SPLITS)
        base = _resolve_base(self.name, root, ("", "cityscapes"), "leftImg8bit", hint)
        image_dir, mask_dir = base / "leftImg8bit" / folder, base / "gtFine" / folder
        _require_dir(self.name, image_dir, hint)
        _require_dir(self.name, mask_dir, hint)
        images = _by_stem(self.name, _list_files(image_dir, (self._IMAGE_SUFFIX,), recursive=True), self._IMAGE_SUFFIX)
        mask_files = _list_files(mask_dir, (self._MASK_SUFFIX,), recursive=True)
        if not mask_files and _list_files(mask_dir, ("_gtFine_labelIds.png",), recursive=True):
            raise DatasetError(
                f"{self.name}: {mask_dir} has *_gtFine_labelIds.png but no *_gtFine_labelTrainIds.png; create them "
                f"with cityscapesscripts: CITYSCAPES_DATASET={base} csCreateTrainIdLabelImgs"
            )
        masks = _by_stem(self.name, mask_files, self._MASK_SUFFIX)
        rule = f"each <city>/<id>{self._IMAGE_SUFFIX} needs gtFine/{folder}/<city>/<id>{self._MASK_SUFFIX}"
        samples = _pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, CITYSCAPES_CLASSES, transforms)


def _voc_like_samples(name: str, base: Path, split_file: Path, mask_dirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Samples of a VOC-style layout: ids from a split file, ``JPEGImages/<id>.jpg``, first existing mask."""
    ids = _read_split_file(name, split_file)
    image_dir = base / "JPEGImages"
    samples: list[tuple[Path, Path]] = []
    missing_images: list[str] = []
    missing_masks: list[str] = []
    for image_id in ids:
        image = image_dir / f"{image_id}.jpg"
        mask = next((d / f"{image_id}.png" for d in mask_dirs if (d / f"{image_id}.png").is_file()), None)
        if not image.is_file():
            missing_images.append(image.name)
        if mask is None:
            missing_masks.append(f"{image_id}.png")
        if image.is_file() and mask is not None:
            samples.append((image, mask))
    if missing_images or missing_masks:
        parts = []
        if missing_images:
            parts.append(f"{len(missing_images)} image(s) missing from {image_dir}: {_examples(missing_images)}")
        if missing_masks:
            where = " or ".join(str(d) for d in mask_dirs)
            parts.append(f"{len(missing_masks)} mask(s) missing from {where}: {_examples(missing_masks)}")
        raise DatasetError(f"{name}: ids listed in {split_file} lack files: {'; '.join(parts)}")
    return samples


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
        base = _resolve_base(self.name, root, ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", hint)
        self.aug = aug
        list_name = "aug" if aug and split == "train" else split
        split_file = base / "ImageSets" / "Segmentation" / f"{list_name}.txt"
        mask_dirs = [base / "SegmentationClass"]
        if aug:
            _require_dir(self.name, base / "SegmentationClassAug", "create it with mmseg's voc_aug.py converter")
            mask_dirs.insert(0, base / "SegmentationClassAug")
        samples = _voc_like_samples(self.name, base, split_file, mask_dirs)
        super().__init__(root, split, samples, VOC_CLASSES, transforms)


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
        base = _resolve_base(self.name, root, ("", "VOC2010", "VOCdevkit/VOC2010"), "JPEGImages", hint)
        mask_dir = base / "SegmentationClassContext"
        _require_dir(self.name, mask_dir, "create it with mmseg's pascal_context.py converter")
        split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        samples = _voc_like_samples(self.name, base, split_file, [mask_dir])
        super().__init__(root, split, samples, PASCAL_CONTEXT59_CLASSES, transforms, reduce_zero_label=True)


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
        folder = _resolve_split(self.name, split, self._SPLITS)
        base = _resolve_base(self.name, root, ("", "coco_stuff164k"), "images", hint)
        image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
        _require_dir(self.name, image_dir, hint)
        _require_dir(self.name, mask_dir, hint)
        mask_files = _list_files(mask_dir, (self._MASK_SUFFIX,))
        if not mask_files and _list_files(mask_dir, (".png",)):
            raise DatasetError(
                f"{self.name}: {mask_dir} has raw *.png masks but no *{self._MASK_SUFFIX}; convert them with "
                f"mmseg's tools/dataset_converters/coco_stuff164k.py"
            )
        images = _by_stem(self.name, _list_files(image_dir, (".jpg", ".jpeg", ".png")))
        masks = _by_stem(self.name, mask_files, self._MASK_SUFFIX)
        rule = f"each images/{folder}/<id>.jpg needs annotations/{folder}/<id>{self._MASK_SUFFIX}"
        samples = _pair(self.name, images, masks, image_dir, mask_dir, rule)
        super().__init__(root, split, samples, COCO_STUFF164K_CLASSES, transforms)


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
        _require_dir(self.name, image_dir, hint)
        _require_dir(self.name, mask_dir, hint)
        names = list(classes) if classes is not None else read_class_file(root / "classes.txt")
        self.allow_binary_255 = allow_binary_255
        images = _by_stem(self.name, _list_files(image_dir, IMAGE_EXTENSIONS))
        masks = _by_stem(self.name, _list_files(mask_dir, (".png",)))
        rule = "each images/<split>/<name>.<ext> needs masks/<split>/<name>.png"
        samples = _pair(self.name, images, masks, image_dir, mask_dir, rule)
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
