"""Label Studio's JSON export (the full "JSON" export, a list of tasks), with the images copied beside it.

Layout::

    root/<export>.json                 # [{"data": {"image": "/data/upload/1/3f2a9c1e-cat.jpg"}, "annotations": [...]}]
    root/images/cat.jpg                # or root/<any path the task names>; the upload prefix "3f2a9c1e-" may be dropped

Per task the first annotation that was not cancelled is read. Result types read: ``polygonlabels`` (points in
percent of the width and height), ``rectanglelabels`` (percent, rotation in degrees about the top-left corner) and
``brushlabels`` (Label Studio's RLE, decoded by ``label-studio-converter``). Key points, ellipses and the
"JSON-MIN" export are not read. Classes are the labels found, sorted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from bridgeseg.data.formats._base import (
    AnnotationReader,
    Entry,
    Shape,
    find_image,
    polygon_or_problem,
    relative_key,
)
from bridgeseg.errors import DatasetError

__all__ = ["LabelStudioReader"]

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
_IMAGE_FOLDERS = ("", "images", "media", "upload")
_LABEL_KEYS = {"polygonlabels": "polygon", "rectanglelabels": "rectangle", "brushlabels": "brush"}


def _looks_like_label_studio(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as file:
            head = file.read(1 << 16)
    except OSError:
        return False
    return head.lstrip().startswith("[") and '"data"' in head and ('"annotations"' in head or '"completions"' in head)


def label_studio_files(root: Path) -> list[Path]:
    return sorted(path for path in root.glob("*.json") if _looks_like_label_studio(path))


def _image_reference(data: dict[str, Any]) -> str:
    value = data.get("image") or next((v for v in data.values() if isinstance(v, str)), "")
    parsed = urlparse(str(value))
    if "d" in parse_qs(parsed.query):  # /data/local-files/?d=folder/photo.jpg
        return unquote(parse_qs(parsed.query)["d"][0])
    return unquote(parsed.path)


class LabelStudioReader(AnnotationReader):
    """Label Studio JSON export."""

    name: ClassVar[str] = "label_studio"
    looks_for: ClassVar[str] = "a Label Studio JSON export (a list of tasks with 'data' and 'annotations') in root"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(label_studio_files(root))

    def read(self) -> tuple[list[str], list[Entry]]:
        files = label_studio_files(self.root)
        if not files:
            raise DatasetError(f"{self.root}: no Label Studio export found; expected {self.looks_for}")
        parsed: list[tuple[Entry, list[tuple[str, Shape]]]] = []
        for path in files:
            try:
                tasks = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DatasetError(f"{path}: cannot read Label Studio JSON ({error})") from error
            for number, task in enumerate(tasks):
                item = self._task(path, task, number)
                if item is not None:
                    parsed.append(item)
        names = sorted({label for _, shapes in parsed for label, _ in shapes})
        index = {name: position for position, name in enumerate(names)}
        entries = []
        for entry, shapes in parsed:
            for label, shape in shapes:
                shape.label = index[label]
                entry.shapes.append(shape)
            entries.append(entry)
        return names, entries

    def _task(self, path: Path, task: dict, number: int) -> tuple[Entry, list[tuple[str, Shape]]] | None:
        listed = task.get("annotations") or task.get("completions") or []
        annotations = [annotation for annotation in listed if not annotation.get("was_cancelled")]
        where = f"{path}: task {task.get('id', number)}"
        if not annotations:
            self.notes.append(f"{where}: no annotation, not read")
            return None
        reference = _image_reference(task.get("data") or {})
        folders = [self.root / folder for folder in _IMAGE_FOLDERS]
        image = find_image(reference, folders) or find_image(_UPLOAD_PREFIX.sub("", Path(reference).name), folders)
        entry = Entry(key=relative_key(image, self.root) if image else reference, source=path, image_path=image)
        if image is None:
            entry.problems.append(
                f"{where}: image {reference!r} not found in {self.root} or {self.root / 'images'}; copy the task's "
                f"images there (Label Studio's JSON export does not include them)"
            )
        shapes = []
        for result in annotations[0].get("result") or []:
            shape = self._result(result, entry, where)
            if shape is not None:
                shapes.append(shape)
        return entry, shapes

    def _result(self, result: dict, entry: Entry, where: str) -> tuple[str, Shape] | None:
        kind = result.get("type")
        value = result.get("value") or {}
        if kind not in _LABEL_KEYS:
            entry.notes.append(f"{where}: result type {kind!r} is not read")
            return None
        labels = value.get(kind) or []
        if not labels:
            entry.notes.append(f"{where}: a {kind} result without a label, not read")
            return None
        if result.get("original_width") and result.get("original_height"):
            entry.size = (int(result["original_width"]), int(result["original_height"]))
        if kind == "polygonlabels":
            points = np.asarray(value.get("points") or [], dtype=np.float64).ravel() / 100.0
            polygon = polygon_or_problem(points.tolist(), where, entry.problems)
            return None if polygon is None else (str(labels[0]), Shape(label=None, polygons=[polygon], normalised=True))
        if kind == "rectanglelabels":
            x, y, w, h = (float(value.get(key, 0.0)) / 100.0 for key in ("x", "y", "width", "height"))
            return str(labels[0]), Shape(label=None, polygons=[_rectangle(x, y, w, h, value, entry)], normalised=True)
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list) or entry.size is None:
            entry.problems.append(f"{where}: a brush result without an RLE and the image size")
            return None
        return str(labels[0]), Shape(label=None, brush_rle=list(value["rle"]))


def _rectangle(x: float, y: float, w: float, h: float, value: dict, entry: Entry) -> list[float]:
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    angle = float(value.get("rotation") or 0.0)
    if angle and entry.size is not None:
        # The rotation is about the top-left corner, in pixels (the percent axes have different scales).
        scale = np.array(entry.size, dtype=np.float64)
        pixels = corners * scale
        theta = math.radians(angle)
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        corners = ((pixels - pixels[0]) @ rotation.T + pixels[0]) / scale
    return corners.ravel().tolist()
