"""What every annotation-format reader shares: one image's annotation, the class list, and rasterisation.

A reader turns an export into a list of :class:`Entry` (one per image) and the class names the export declares.
:class:`Annotations` then adds the unlabelled-pixel rule (a ``background`` class or ignore) and turns any entry
into an index mask at its image's size, EXIF orientation applied: ``uint8 [H, W]``, class indices ``0..K-1``,
255 = ignore.

Rules shared by every vector format (COCO, LabelMe, Label Studio, YOLO):

- Coordinates are continuous pixel coordinates: pixel ``(0, 0)`` covers ``[0, 1) × [0, 1)``, so its centre is
  ``(0.5, 0.5)`` (COCO's convention, which CVAT, Label Studio and Roboflow follow when they export COCO).
  Polygons are filled by ``pycocotools`` (a pixel is inside when its centre is).
- **Overlaps: the smaller shape is on top.** Shapes are painted from the largest area to the smallest, so an
  object drawn inside another (a window on a wall) keeps its label; shapes of equal area keep file order (the later
  is on top). A COCO crowd region (``iscrowd``) is painted as ignore (255) under the same rule.
- Pixels no shape covers get the ``background`` class (``background="class"``: the export's own class called
  ``background``, or a new class 0 of that name) or are ignored (``background="ignore"``).
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from bridgeseg.errors import DatasetError, DatasetNotFoundError, UserError
from bridgeseg.images import (
    IMAGE_EXTENSIONS,
    FileInfo,
    decode,
    mask_to_array,
    open_image,
    pil_to_tensor,
    probe,
)
from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = [
    "BACKGROUND",
    "BACKGROUND_MODES",
    "AnnotationReader",
    "Annotations",
    "Entry",
    "Shape",
    "find_image",
    "pycocotools_mask",
]

BACKGROUND = "background"
"""Name of the class given to unlabelled pixels with ``background="class"``."""
BACKGROUND_MODES = ("class", "ignore")
_BACKGROUND_ALIASES = ("background", "_background_", "__background__", "bg")
_IGNORE_LABELS = ("__ignore__", "_ignore_", "ignore")
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_name(text: str) -> str | None:
    """``train``, ``val`` or ``test`` when ``text`` names a split (``training``, ``valid``, ``val2017``, …)."""
    word = re.sub(r"\d+$", "", text.lower())
    return _SPLIT_NAMES.get(word)


def pycocotools_mask() -> Any:
    """``pycocotools.mask``, or a message saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError as error:
        raise UserError(
            "reading polygons and RLE needs pycocotools: pip install 'bridgeseg[formats]' (or pip install pycocotools)"
        ) from error
    return mask


@dataclass
class Shape:
    """One annotated object or region.

    Attributes:
        label: Index into the reader's class names; None marks an ignore region (COCO crowd, LabelMe
            ``__ignore__``).
        polygons: Flat ``[x1, y1, x2, y2, ...]`` lists, each a closed polygon of at least 3 points; their union is
            the shape.
        rle: A COCO RLE (``{"size": [h, w], "counts": str | list}``).
        bitmap: A boolean ``[H, W]`` mask at the annotation's size.
        normalised: Polygon coordinates are fractions of the width and height (YOLO; Label Studio's percent / 100)
            and are scaled to the image's size; otherwise they are pixels of ``Entry.size``.
        panoptic: ``(png_path, segment_id)``: the pixels of a COCO panoptic PNG holding that segment id.
        brush_rle: Label Studio's brush RLE, at ``Entry.size``.
    """

    label: int | None
    polygons: list[list[float]] = field(default_factory=list)
    rle: dict[str, Any] | None = None
    bitmap: np.ndarray | None = None
    normalised: bool = False
    panoptic: tuple[Path, int] | None = None
    brush_rle: list[int] | None = None


@dataclass
class Entry:
    """One image and its annotation, as found in the export.

    Attributes:
        key: Unique id: the image path relative to the export root (POSIX). Split list files hold keys.
        source: The file holding the annotation (named in messages).
        image_path: The image file, or None when the image is embedded (``image_bytes``).
        image_bytes: An image file's bytes embedded in the annotation (LabelMe ``imageData``).
        split: ``train``/``val``/``test`` when the export says; None otherwise.
        size: ``(width, height)`` the annotation was drawn at, when the file says; checked against the image.
        shapes: The objects (vector formats).
        mask_path: The mask file (mask formats).
        problems: What makes this entry unusable for training (unknown label, broken shape), one line each.
        notes: What was read but skipped (shapes without area), one line each.
    """

    key: str
    source: Path
    image_path: Path | None
    image_bytes: bytes | None = None
    split: str | None = None
    size: tuple[int, int] | None = None
    shapes: list[Shape] = field(default_factory=list)
    mask_path: Path | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Where to point a user: the image path, or the annotation file for an embedded image."""
        return str(self.image_path) if self.image_path is not None else f"{self.source} (embedded image)"


class AnnotationReader:
    """Base of the format readers: detect an export, list its entries and its class names.

    Subclasses set ``name``, ``looks_for`` (what :meth:`detect` looks for, for the error listing every format),
    ``vector`` (shapes, not masks) and implement :meth:`detect` and :meth:`read`; mask formats also implement
    :meth:`mask_labels`.
    """

    name: ClassVar[str] = ""
    looks_for: ClassVar[str] = ""
    vector: ClassVar[bool] = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.notes: list[str] = []  # what was skipped outside any entry (a task without annotation)

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` holds an export of this format (cheap: names and a few bytes, no full parse)."""
        raise NotImplementedError

    def read(self) -> tuple[list[str], list[Entry]]:
        """Parse the export.

        Returns:
            The class names the export declares (in its order) and one entry per image.

        Raises:
            DatasetError: The export cannot be parsed at all (a file that is not JSON, a missing class list).
        """
        raise NotImplementedError

    def mask_labels(self, entry: Entry, mask: Image.Image) -> np.ndarray:
        """Mask formats: the stored mask as class indices into the declared names (255 = ignore).

        Raises:
            DatasetError: A pixel value or colour that no class has.
        """
        raise NotImplementedError


class Annotations:
    """An export read by one reader, with the final class list and the unlabelled-pixel rule.

    Attributes:
        format: The reader's name.
        root: The export root.
        classes: Class names in label order (``background`` first when it was added).
        entries: One per image.
        unlabelled: Label of pixels no shape covers (vector formats).
        problems: Problems of the export as a whole (duplicate class names, duplicate images).
    """

    def __init__(self, reader: AnnotationReader, background: str = "class", classes: Sequence[str] | None = None):
        """Read the export.

        Args:
            reader: The format's reader.
            background: ``class`` or ``ignore``: what pixels no shape covers become (vector formats only; a mask
                format's masks say it themselves).
            classes: Class names to use instead of the export's, in label order: shapes whose label is not among
                them are problems; a class ``background`` takes unlabelled pixels.

        Raises:
            ValueError: ``background`` is not ``class`` or ``ignore``.
            DatasetError: The export cannot be parsed.
        """
        if background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {', '.join(BACKGROUND_MODES)}, got {background!r}")
        self.reader = reader
        self.format = reader.name
        self.root = reader.root
        self.background = background
        names, self.entries = reader.read()
        self.file_classes = list(names)
        self.notes = list(reader.notes)
        self.problems: list[str] = []
        self._index = self._class_mapping(names, classes)
        self._check_duplicates()

    def _class_mapping(self, names: list[str], override: Sequence[str] | None) -> np.ndarray:
        """Build ``self.classes`` and ``self.unlabelled``; return the map from file class index to label."""
        if override is not None:
            target = [str(name) for name in override]
            position = {name: index for index, name in enumerate(target)}
            mapping = np.array([position.get(name, -1) for name in names] + [IGNORE_INDEX], dtype=np.int64)
            unknown = [name for name in names if name not in position]
            if unknown:
                self.problems.append(
                    f"{self.root}: labels {unknown} of the export are not in the given class list {target}; add them "
                    f"or relabel those shapes"
                )
        else:
            target = list(names)
            mapping = np.array([*range(len(names)), IGNORE_INDEX], dtype=np.int64)
        self.unlabelled = IGNORE_INDEX
        if self.reader.vector and self.background == "class":
            existing = next((i for i, name in enumerate(target) if name.strip().lower() in _BACKGROUND_ALIASES), None)
            if existing is None:
                target = [BACKGROUND, *target]
                mapping[:-1] = np.where(mapping[:-1] >= 0, mapping[:-1] + 1, -1)
                existing = 0
            self.unlabelled = existing
        self.classes = target
        return mapping

    def _check_duplicates(self) -> None:
        seen: dict[str, int] = {}
        for name in self.classes:
            seen[name.strip()] = seen.get(name.strip(), 0) + 1
        repeated = sorted(name for name, count in seen.items() if count > 1)
        if repeated:
            self.problems.append(
                f"{self.root}: class names {repeated} appear more than once in the {self.format} class list; two "
                f"labels with one name get one text embedding and cannot be told apart: rename or merge them"
            )
        keys: dict[str, Entry] = {}
        for entry in self.entries:
            if entry.key in keys:
                self.problems.append(
                    f"{entry.source}: image {entry.key} is annotated again (first in {keys[entry.key].source}); keep "
                    f"one annotation per image"
                )
            keys.setdefault(entry.key, entry)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels_present(self, entry: Entry) -> set[int]:
        """Labels an entry holds, for stratified splits: its shapes' labels (nothing is rasterised), or the values of
        its mask (a mask that cannot be read counts as holding none)."""
        if self.reader.vector:
            labels = {int(self._index[shape.label]) for shape in entry.shapes if shape.label is not None}
        elif entry.mask_path is None or entry.problems:
            return set()
        else:
            try:
                with open_image(entry.mask_path, "mask") as raw:
                    decoded, _ = decode(raw, entry.mask_path, "mask")
                    values = np.unique(self.reader.mask_labels(entry, decoded))
            except DatasetError:
                return set()
            labels = {int(self._index[value]) for value in values.tolist() if value != IGNORE_INDEX}
        return {label for label in labels if 0 <= label < IGNORE_INDEX}

    # ----------------------------------------------------------------------------------------------------------
    # Reading one entry
    # ----------------------------------------------------------------------------------------------------------

    def open_image(self, entry: Entry) -> tuple[torch.Tensor, FileInfo]:
        """The entry's image as float32 RGB ``[3, H, W]`` in ``[0, 1]`` (EXIF applied) and its geometry."""
        if entry.image_path is not None:
            with open_image(entry.image_path, "image") as raw:
                decoded, info = decode(raw, entry.image_path, "image")
                return pil_to_tensor(decoded, entry.image_path), info
        return self._embedded(entry, tensor=True)  # type: ignore[return-value]

    def image_info(self, entry: Entry) -> FileInfo:
        """The entry's image geometry from its header (embedded images are decoded)."""
        if entry.image_path is not None:
            return probe(entry.image_path, "image")
        return self._embedded(entry, tensor=False)  # type: ignore[return-value]

    def _embedded(self, entry: Entry, tensor: bool) -> tuple[torch.Tensor, FileInfo] | FileInfo:
        if entry.image_bytes is None:
            raise DatasetNotFoundError(f"{entry.source}: image file not found and no image embedded in the annotation")
        image = Image.open(io.BytesIO(entry.image_bytes))
        with image:
            decoded, info = decode(image, f"{entry.source} (embedded image)", "image")
            if tensor:
                return pil_to_tensor(decoded, entry.source), info
        return info

    def render(self, entry: Entry, size: tuple[int, int]) -> np.ndarray:
        """The entry's index mask at ``size`` = (width, height) of its image after EXIF orientation.

        Returns:
            uint8 ``[H, W]``: labels ``0..K-1``, 255 = ignore.

        Raises:
            DatasetError: The entry has a problem, the annotation was drawn at another size than the image's, or a
                mask is unreadable or holds values no class has.
        """
        if entry.problems:
            more = f" (and {len(entry.problems) - 1} more)" if len(entry.problems) > 1 else ""
            raise DatasetError(entry.problems[0] + more)
        if not self.reader.vector:
            return self._render_mask(entry, size)
        width, height = size
        if entry.size is not None and tuple(entry.size) != (width, height):
            raise DatasetError(_size_message(entry, size))
        mask = np.full((height, width), self.unlabelled, dtype=np.uint8)
        layers = []
        segment_maps: dict[Path, np.ndarray] = {}
        for order, shape in enumerate(entry.shapes):
            region = _shape_region(shape, entry, width, height, segment_maps)
            layers.append((-int(region.sum()), order, region, self._label(shape)))
        for _, _, region, label in sorted(layers, key=lambda layer: (layer[0], layer[1])):
            mask[region] = label
        return mask

    def _label(self, shape: Shape) -> int:
        if shape.label is None:
            return IGNORE_INDEX
        label = int(self._index[shape.label])
        if label < 0:
            raise DatasetError(f"{self.root}: label {self.file_classes[shape.label]!r} is not in the given class list")
        return label

    def _render_mask(self, entry: Entry, size: tuple[int, int]) -> np.ndarray:
        assert entry.mask_path is not None
        with open_image(entry.mask_path, "mask") as raw:
            decoded, info = decode(raw, entry.mask_path, "mask")
            if info.size != tuple(size):
                raise DatasetError(
                    f"{entry.mask_path}: mask is {info.size[0]}x{info.size[1]} but its image {entry.name} is "
                    f"{size[0]}x{size[1]}; a mask must match its image pixel for pixel (re-export it at the image size)"
                )
            labels = self.reader.mask_labels(entry, decoded)
        mapped = np.full(labels.shape, IGNORE_INDEX, dtype=np.uint8)
        valid = labels != IGNORE_INDEX
        mapped[valid] = self._index[labels[valid]]
        if (mapped[valid] < 0).any():  # a class the given class list lacks
            raise DatasetError(f"{entry.mask_path}: holds classes that are not in the given class list")
        return mapped


def _size_message(entry: Entry, size: tuple[int, int]) -> str:
    assert entry.size is not None
    drawn = f"{entry.size[0]}x{entry.size[1]}"
    return (
        f"{entry.source}: the annotation of {entry.name} was drawn on a {drawn} image but the image is "
        f"{size[0]}x{size[1]} (after its EXIF orientation); re-export the annotation for this image, or restore the "
        f"image it was drawn on"
    )


def _shape_region(
    shape: Shape, entry: Entry, width: int, height: int, segment_maps: dict[Path, np.ndarray]
) -> np.ndarray:
    """A shape as a boolean ``[H, W]`` region (``segment_maps`` caches decoded panoptic PNGs)."""
    if shape.panoptic is not None:
        png, segment_id = shape.panoptic
        if png not in segment_maps:
            segment_maps[png] = _segment_ids(png, width, height)
        return segment_maps[png] == segment_id
    if shape.brush_rle is not None:
        return _brush_region(shape.brush_rle, entry, width, height)
    if shape.bitmap is not None:
        if shape.bitmap.shape != (height, width):
            raise DatasetError(
                f"{entry.source}: a mask of {shape.bitmap.shape[1]}x{shape.bitmap.shape[0]} pixels on a "
                f"{width}x{height} image; re-export the annotation"
            )
        return shape.bitmap.astype(bool)
    coco_mask = pycocotools_mask()
    if shape.rle is not None:
        rle = dict(shape.rle)
        if [int(v) for v in rle.get("size", ())] != [height, width]:
            raise DatasetError(
                f"{entry.source}: an RLE of size {rle.get('size')} (height, width) on a {width}x{height} image; "
                f"re-export the annotation"
            )
        if isinstance(rle["counts"], list):
            rle = coco_mask.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return coco_mask.decode(rle).astype(bool)
    scale = np.array([width, height], dtype=np.float64) if shape.normalised else np.ones(2)
    polygons = [(np.asarray(p, dtype=np.float64).reshape(-1, 2) * scale).ravel().tolist() for p in shape.polygons]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    # frPyObjects reads a list of 4-number lists as boxes; readers keep only polygons of 3 points or more.
    rles = coco_mask.frPyObjects(polygons, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def _brush_region(rle: list[int], entry: Entry, width: int, height: int) -> np.ndarray:
    """Label Studio's brush RLE as a region, decoded by label-studio-converter (RGBA; alpha is the brush)."""
    if entry.size is not None and tuple(entry.size) != (width, height):
        raise DatasetError(_size_message(entry, (width, height)))
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError as error:
        raise UserError(
            f"{entry.source}: brush labels need label-studio-converter: pip install 'bridgeseg[formats]' (or "
            f"pip install label-studio-converter); polygon labels are read without it"
        ) from error
    try:
        rgba = np.asarray(decode_rle(rle), dtype=np.uint8)
    except (ValueError, IndexError) as error:
        raise DatasetError(f"{entry.source}: cannot decode a brush RLE ({error}); re-export the task") from error
    if rgba.size != width * height * 4:
        raise DatasetError(
            f"{entry.source}: a brush RLE of {rgba.size // 4} pixels on a {width}x{height} image; re-export the task"
        )
    return rgba.reshape(height, width, 4)[..., 3] >= 128


def _segment_ids(png: Path, width: int, height: int) -> np.ndarray:
    """A COCO panoptic PNG as segment ids ``R + 256·G + 256²·B``, int64 ``[H, W]``."""
    with open_image(png, "panoptic mask") as raw:
        decoded, info = decode(raw, png, "panoptic mask")
        if info.size != (width, height):
            raise DatasetError(
                f"{png}: panoptic mask is {info.size[0]}x{info.size[1]} but its image is {width}x{height}; re-export it"
            )
        rgb = np.asarray(decoded.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def polygon_or_problem(points: Sequence[float], where: str, problems: list[str]) -> list[float] | None:
    """``points`` as a flat float list when it is a polygon of at least 3 points; otherwise note why not."""
    try:
        flat = [float(value) for value in points]
    except (TypeError, ValueError):
        problems.append(f"{where}: polygon coordinates are not numbers")
        return None
    if len(flat) % 2 or len(flat) < 6 or not np.isfinite(flat).all():
        problems.append(f"{where}: a polygon needs at least 3 finite (x, y) points, got {len(flat)} numbers")
        return None
    return flat


def find_image(reference: str, folders: Sequence[Path]) -> Path | None:
    """The image file ``reference`` names, looked up as given and by its base name in ``folders``."""
    relative = Path(reference.replace("\\", "/"))
    for folder in folders:
        for candidate in (folder / relative, folder / relative.name):
            if candidate.is_file():
                return candidate
    return None


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def relative_key(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (ValueError, TypeError) as error:
        raise DatasetError(f"{where}: embedded data is not valid base64 ({error})") from error


def index_mask(image: Image.Image, source: Path) -> np.ndarray:
    """A single-channel mask's values (palette indices for a palette PNG)."""
    return mask_to_array(image, source)


def ignore_label(label: str) -> bool:
    return label.strip().lower() in _IGNORE_LABELS
