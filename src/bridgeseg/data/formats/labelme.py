"""LabelMe: one JSON per image (``shapes``, ``imagePath``, optional embedded ``imageData``).

Layout::

    root/<name>.json + root/<name>.jpg        # or the JSON files in root/train/, root/val/ (then those are splits)
    root/labels.txt                           # optional: the class list (labelme's --labels file)

Shapes read: ``polygon``, ``rectangle`` (2 corners, or 4 points), ``circle`` (centre and a point on the circle,
drawn as a 64-gon) and ``mask`` (labelme 5.3+, a PNG of the box). Shapes without an area (``line``, ``linestrip``,
``point``, ``points``) are skipped and listed by ``data check``. The label ``__ignore__`` marks ignored pixels;
``_background_`` (or ``background``) is the background class. Without a ``labels.txt`` the classes are the labels
found, sorted.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from bridgeseg.data.formats._base import (
    AnnotationReader,
    Entry,
    Shape,
    decode_base64,
    ignore_label,
    polygon_or_problem,
    relative_key,
    split_name,
)
from bridgeseg.errors import DatasetError

__all__ = ["LabelMeReader"]

_CLASS_FILES = ("labels.txt", "classes.txt", "class_names.txt")
_NO_AREA = ("line", "linestrip", "point", "points")
_CIRCLE_VERTICES = 64


def _looks_like_labelme(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as file:
            head = file.read(1 << 16)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"shapes"' in head


def labelme_files(root: Path) -> list[Path]:
    return sorted(p for p in [*root.glob("*.json"), *root.glob("*/*.json")] if _looks_like_labelme(p))


class LabelMeReader(AnnotationReader):
    """LabelMe JSON files."""

    name: ClassVar[str] = "labelme"
    looks_for: ClassVar[str] = "LabelMe JSON files (with 'shapes') in root or root/<split>/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(labelme_files(root))

    def read(self) -> tuple[list[str], list[Entry]]:
        files = labelme_files(self.root)
        if not files:
            raise DatasetError(f"{self.root}: no LabelMe JSON found; expected {self.looks_for}")
        class_file = next((self.root / name for name in _CLASS_FILES if (self.root / name).is_file()), None)
        declared = None
        if class_file is not None:
            lines = [line.strip() for line in class_file.read_text(encoding="utf-8-sig").splitlines()]
            declared = [line for line in lines if line and not ignore_label(line)]
        raw_entries = [self._parse(path) for path in files]
        if declared is None:
            found = {label for _, shapes in raw_entries for label, _ in shapes if not ignore_label(label)}
            declared = sorted(found)
        index = {name: position for position, name in enumerate(declared)}
        entries = []
        for entry, shapes in raw_entries:
            for label, shape in shapes:
                if ignore_label(label):
                    shape.label = None
                elif label in index:
                    shape.label = index[label]
                else:
                    entry.problems.append(f"{entry.source}: label {label!r} is not in {class_file}")
                    continue
                entry.shapes.append(shape)
            entries.append(entry)
        return declared, entries

    def _parse(self, path: Path) -> tuple[Entry, list[tuple[str, Shape]]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"{path}: cannot read LabelMe JSON ({error})") from error
        image_ref = str(data.get("imagePath") or "")
        image_path = None
        if image_ref:
            relative = Path(image_ref.replace("\\", "/"))
            image_path = next((c for c in (path.parent / relative, path.parent / relative.name) if c.is_file()), None)
        image_bytes = None
        if image_path is None and data.get("imageData"):
            image_bytes = decode_base64(data["imageData"], str(path))
        size = None
        if data.get("imageWidth") and data.get("imageHeight"):
            size = (int(data["imageWidth"]), int(data["imageHeight"]))
        split = split_name(path.parent.name) if path.parent != self.root else None
        key = relative_key(image_path, self.root) if image_path else relative_key(path.with_suffix(""), self.root)
        entry = Entry(key=key, source=path, image_path=image_path, image_bytes=image_bytes, split=split, size=size)
        if image_path is None and image_bytes is None:
            entry.problems.append(
                f"{path}: image {image_ref!r} not found next to it and no imageData embedded; copy the image there"
            )
        shapes = []
        for number, item in enumerate(data.get("shapes") or []):
            shape = self._shape(item, entry, f"{path}: shape {number} ({item.get('label')!r})")
            if shape is not None:
                shapes.append((str(item.get("label", "")), shape))
        return entry, shapes

    def _shape(self, item: dict, entry: Entry, where: str) -> Shape | None:
        kind = item.get("shape_type") or "polygon"
        points = item.get("points") or []
        try:
            xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        except ValueError:
            entry.problems.append(f"{where}: points are not (x, y) pairs")
            return None
        if kind in _NO_AREA:
            entry.notes.append(f"{where}: a {kind} has no area, not read")
            return None
        if kind == "polygon":
            polygon = polygon_or_problem(xy.ravel().tolist(), where, entry.problems)
            return None if polygon is None else Shape(label=None, polygons=[polygon])
        if kind == "rectangle" and len(xy) in (2, 4):
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            return Shape(label=None, polygons=[[x0, y0, x1, y0, x1, y1, x0, y1]])
        if kind == "circle" and len(xy) == 2:
            (cx, cy), edge = xy[0], xy[1]
            radius = float(np.hypot(*(edge - xy[0])))
            angles = np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
            circle = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
            return Shape(label=None, polygons=[circle.ravel().tolist()])
        if kind == "mask" and item.get("mask") and len(xy) == 2 and entry.size is not None:
            return self._mask_shape(item, xy, entry, where)
        entry.notes.append(f"{where}: shape type {kind!r} with {len(xy)} points is not read")
        return None

    def _mask_shape(self, item: dict, xy: np.ndarray, entry: Entry, where: str) -> Shape | None:
        assert entry.size is not None
        width, height = entry.size
        try:
            with Image.open(io.BytesIO(decode_base64(item["mask"], where))) as image:
                box = np.asarray(image.convert("L")) > 0
        except (OSError, ValueError) as error:
            entry.problems.append(f"{where}: cannot decode the mask ({error})")
            return None
        x0, y0 = (round(float(v)) for v in xy[0])
        bitmap = np.zeros((height, width), dtype=bool)
        region = bitmap[y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]]
        region[...] = box[: region.shape[0], : region.shape[1]]
        return Shape(label=None, bitmap=bitmap)
