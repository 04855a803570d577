"""Ultralytics YOLO segmentation: ``data.yaml`` with ``names``, images, and one ``labels/*.txt`` per image.

Layout (Ultralytics and Roboflow's "YOLOv8" export)::

    root/data.yaml                            # names: [cat, dog] (or {0: cat, 1: dog}); train: images/train; val: ...
    root/images/{train,val}/<name>.jpg        # or root/{train,valid}/images/ (Roboflow)
    root/labels/{train,val}/<name>.txt        # "class x1 y1 x2 y2 ..." per object, coordinates in [0, 1]

An image without a label file is all background. Lines with 4 coordinates are detection boxes, not polygons, and
are skipped (listed by ``data check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml

from bridgeseg.data.formats._base import (
    AnnotationReader,
    Entry,
    Shape,
    image_files,
    polygon_or_problem,
    relative_key,
    split_name,
)
from bridgeseg.errors import DatasetError, DatasetNotFoundError

__all__ = ["YOLOReader"]

_YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml")


def _yaml_file(root: Path) -> Path | None:
    return next((root / name for name in _YAML_NAMES if (root / name).is_file()), None)


def _names(value: Any, path: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            ordered = sorted((int(key), str(name)) for key, name in value.items())
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{path}: 'names' keys must be class ids 0..K-1") from error
        if [key for key, _ in ordered] != list(range(len(ordered))):
            raise DatasetError(f"{path}: 'names' ids must be 0..K-1 without gaps, got {[k for k, _ in ordered]}")
        return [name for _, name in ordered]
    if isinstance(value, list) and value:
        return [str(name) for name in value]
    raise DatasetError(f"{path}: no 'names' list; write names: [class0, class1, ...]")


def _labels_dir(image_dir: Path) -> Path:
    """Ultralytics' rule: the last "images" folder in the path becomes "labels"."""
    parts = list(image_dir.parts)
    for position in range(len(parts) - 1, -1, -1):
        if parts[position] == "images":
            parts[position] = "labels"
            return Path(*parts)
    return image_dir.parent / "labels"


class YOLOReader(AnnotationReader):
    """YOLO segmentation labels (normalised polygons) with ``data.yaml``."""

    name: ClassVar[str] = "yolo"
    looks_for: ClassVar[str] = "data.yaml with 'names' and labels/*.txt (YOLO segmentation)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        path = _yaml_file(root)
        if path is None:
            return False
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and "names" in data

    def read(self) -> tuple[list[str], list[Entry]]:
        path = _yaml_file(self.root)
        if path is None:
            raise DatasetNotFoundError(f"{self.root}: no data.yaml; expected {self.looks_for}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except (OSError, yaml.YAMLError) as error:
            raise DatasetError(f"{path}: cannot read YAML ({error})") from error
        names = _names(data.get("names"), path)
        entries: list[Entry] = []
        for key in ("train", "val", "test"):
            if not data.get(key):
                continue
            for folder in data[key] if isinstance(data[key], list) else [data[key]]:
                image_dir = self._resolve(str(folder), data, path)
                entries += self._entries(image_dir, split_name(key), len(names))
        if not entries:
            raise DatasetError(f"{path}: no images found for train/val/test; check the paths in it")
        return names, entries

    def _resolve(self, folder: str, data: dict, path: Path) -> Path:
        bases = [Path(str(data["path"])) if data.get("path") else None, path.parent, self.root]
        tried = []
        for base in (b for b in bases if b is not None):
            for candidate in (base / folder, base / folder.lstrip("./").removeprefix("../")):
                tried.append(str(candidate))
                if candidate.is_dir():
                    return candidate
        raise DatasetNotFoundError(f"{path}: image folder {folder!r} not found (looked for {', '.join(tried)})")

    def _entries(self, image_dir: Path, split: str | None, num_classes: int) -> list[Entry]:
        labels_dir = _labels_dir(image_dir)
        entries = []
        for image in image_files(image_dir):
            entry = Entry(key=relative_key(image, self.root), source=labels_dir / f"{image.stem}.txt", image_path=image)
            entry.split = split
            if entry.source.is_file():
                self._parse(entry, num_classes)
            entries.append(entry)
        return entries

    def _parse(self, entry: Entry, num_classes: int) -> None:
        for number, line in enumerate(entry.source.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{entry.source}: line {number}"
            try:
                label = int(float(fields[0]))
            except ValueError:
                entry.problems.append(f"{where}: class {fields[0]!r} is not a number")
                continue
            if not 0 <= label < num_classes:
                entry.problems.append(f"{where}: class {label} has no name in data.yaml ({num_classes} names)")
                continue
            if len(fields) == 5:
                entry.notes.append(f"{where}: a detection box, not a polygon; not read")
                continue
            polygon = polygon_or_problem(fields[1:], where, entry.problems)
            if polygon is not None:
                entry.shapes.append(Shape(label=label, polygons=[polygon], normalised=True))
