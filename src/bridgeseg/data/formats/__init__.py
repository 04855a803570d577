"""Readers for annotation-tool exports: each turns an export into the same index masks and a class list.

Formats (``format=`` name: what is read):

- ``coco``: COCO instances and stuff (polygons, RLE; ``iscrowd`` → ignore) and panoptic (PNG + JSON).
- ``labelme``: LabelMe JSON (polygons, rectangles, circles, masks; ``imageData`` embedded or not).
- ``cvat``: CVAT "Segmentation mask 1.1" (colour PNGs + ``labelmap.txt``).
- ``label_studio``: Label Studio JSON (polygons and rectangles in percent, brush RLE).
- ``palette``: VOC-style palette or greyscale index PNGs with a class list.
- ``yolo``: YOLO segmentation (``data.yaml`` + normalised polygons in ``labels/*.txt``).

Example:
    >>> annotations = read_annotations("exports/my_coco")  # doctest: +SKIP
    >>> annotations.format, annotations.classes  # doctest: +SKIP
    ('coco', ['background', 'cat', 'dog'])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from bridgeseg.data.formats._base import BACKGROUND, BACKGROUND_MODES, AnnotationReader, Annotations, Entry, Shape
from bridgeseg.data.formats.coco import COCOReader
from bridgeseg.data.formats.label_studio import LabelStudioReader
from bridgeseg.data.formats.labelme import LabelMeReader
from bridgeseg.data.formats.masks import CVATMaskReader, PaletteReader
from bridgeseg.data.formats.yolo import YOLOReader
from bridgeseg.errors import DatasetError, DatasetNotFoundError

__all__ = [
    "BACKGROUND",
    "BACKGROUND_MODES",
    "FORMATS",
    "AnnotationReader",
    "Annotations",
    "Entry",
    "Shape",
    "detect_format",
    "is_folder_layout",
    "read_annotations",
]

logger = logging.getLogger(__name__)

FORMATS: dict[str, type[AnnotationReader]] = {
    reader.name: reader
    for reader in (CVATMaskReader, PaletteReader, COCOReader, LabelStudioReader, LabelMeReader, YOLOReader)
}
"""The readers by name, in the order auto-detection tries them."""

_FOLDER_LAYOUT = "images/<split>/, masks/<split>/ and classes.txt (the folder layout)"


def is_folder_layout(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` is bridgeseg's own folder layout (``images/``, ``masks/``, ``classes.txt``)."""
    root = Path(root)
    return (root / "images").is_dir() and (root / "masks").is_dir() and (root / "classes.txt").is_file()


def detect_format(root: str | os.PathLike[str]) -> str:
    """The name of the export format found in ``root``.

    Raises:
        DatasetNotFoundError: ``root`` does not exist, or holds no known format (the message lists what was looked
            for).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: folder not found; give the folder the annotation tool exported")
    found = [name for name, reader in FORMATS.items() if reader.detect(root)]
    if not found:
        looked = "\n".join(f"  {name}: {reader.looks_for}" for name, reader in FORMATS.items())
        raise DatasetNotFoundError(
            f"{root}: no annotation export found. Looked for:\n{looked}\n  folder: {_FOLDER_LAYOUT}\n"
            f"see docs/your-data.md for each tool's export settings"
        )
    if len(found) > 1:
        logger.info("%s looks like %s; reading it as %s (pass format= to choose)", root, " and ".join(found), found[0])
    return found[0]


def read_annotations(
    root: str | os.PathLike[str],
    format: str = "auto",
    background: str = "class",
    classes: Sequence[str] | None = None,
) -> Annotations:
    """Read an annotation export.

    Args:
        root: The export's folder.
        format: One of :data:`FORMATS`, or ``auto`` to detect it.
        background: What pixels no shape covers become: ``class`` (a ``background`` class) or ``ignore`` (255).
        classes: Class names in label order instead of the export's.

    Returns:
        The entries, the class list, and the problems of the export as a whole.

    Raises:
        ValueError: Unknown format or background mode.
        DatasetError: No export of that format in ``root``, or it cannot be parsed.
    """
    name = detect_format(root) if format == "auto" else format.strip().lower().replace("-", "_")
    if name not in FORMATS:
        raise ValueError(f"unknown annotation format {format!r}; valid formats: auto, {', '.join(FORMATS)}")
    reader = FORMATS[name](root)
    if format != "auto" and not reader.detect(Path(root)):
        raise DatasetNotFoundError(f"{root}: not a {name} export; expected {reader.looks_for}")
    annotations = Annotations(reader, background=background, classes=classes)
    if not annotations.entries:
        raise DatasetError(f"{root}: the {name} export lists no images")
    return annotations
