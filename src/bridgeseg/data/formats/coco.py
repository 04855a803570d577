"""COCO: instances and stuff (polygons and RLE) and panoptic (PNG of segment ids + JSON), to semantic masks.

Layouts found (each JSON names its split: ``instances_train2017.json`` → train, a ``valid/`` folder → val; a
single ``instances_default.json`` or ``result.json`` has no split)::

    root/annotations/instances_<split>.json + root/images/ (or root/<split>/, root/images/<split>/)   # COCO, CVAT
    root/result.json + root/images/                                                                   # Label Studio
    root/{train,valid,test}/_annotations.coco.json + the images beside it                             # Roboflow
    root/annotations/panoptic_<split>.json + root/annotations/panoptic_<split>/*.png                  # panoptic

Classes are the ``categories`` in id order; ``iscrowd`` regions are ignored (255). Panoptic PNGs hold segment ids
``R + 256·G + 256²·B``; segment 0 and pixels of no listed segment are unlabelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from bridgeseg.data.formats._base import (
    AnnotationReader,
    Entry,
    Shape,
    find_image,
    polygon_or_problem,
    relative_key,
    split_name,
)
from bridgeseg.errors import DatasetError

__all__ = ["COCOReader"]

_SKIPPED_PREFIXES = ("captions", "person_keypoints", "image_info")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as file:
            return json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read JSON ({error}); re-export the annotations") from error


def _looks_like_coco(path: Path) -> bool:
    if path.name.startswith(_SKIPPED_PREFIXES):
        return False
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as file:
            head = file.read(1 << 20)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"images"' in head and '"file_name"' in head


def coco_files(root: Path) -> list[Path]:
    """The COCO JSON files of an export: in root, root/annotations, or one folder down (Roboflow's splits)."""
    candidates = [*root.glob("*.json"), *root.glob("annotations/*.json"), *root.glob("*/_annotations.coco.json")]
    return sorted({path for path in candidates if _looks_like_coco(path)})


class COCOReader(AnnotationReader):
    """COCO instances, stuff and panoptic JSON (through pycocotools)."""

    name: ClassVar[str] = "coco"
    looks_for: ClassVar[str] = (
        "a COCO JSON (images, annotations, categories) in root, root/annotations/ or "
        "root/<split>/_annotations.coco.json"
    )

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(coco_files(root))

    def read(self) -> tuple[list[str], list[Entry]]:
        files = coco_files(self.root)
        if not files:
            raise DatasetError(f"{self.root}: no COCO JSON found; expected {self.looks_for}")
        by_split: dict[str | None, Path] = {}
        for path in files:
            split = self._split_of(path)
            if split in by_split:
                raise DatasetError(
                    f"{self.root}: {by_split[split].name} and {path.name} both annotate the "
                    f"{split or 'unsplit'} images; keep one COCO JSON per split (move the other away)"
                )
            by_split[split] = path
        names: list[str] | None = None
        category_ids: list[int] = []
        entries: list[Entry] = []
        for split, path in by_split.items():
            data = _load_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise DatasetError(f"{path}: not a COCO file (no 'images' list)")
            categories = sorted(data.get("categories") or [], key=lambda category: int(category["id"]))
            ids = [int(category["id"]) for category in categories]
            if names is None:
                names, category_ids = [str(category["name"]) for category in categories], ids
            elif ids != category_ids:
                raise DatasetError(
                    f"{path}: its categories differ from those of {files[0].name}; every split must use one list"
                )
            entries += self._entries(path, data, split, {cid: index for index, cid in enumerate(ids)})
        return names or [], entries

    def _split_of(self, path: Path) -> str | None:
        if path.name == "_annotations.coco.json":
            return split_name(path.parent.name)
        return split_name(path.stem.split("_")[-1]) if "_" in path.stem else split_name(path.stem)

    def _image_folders(self, path: Path) -> list[Path]:
        stem_tail = path.stem.split("_")[-1]
        return [
            path.parent,
            path.parent / "images",
            self.root / "images",
            self.root / "images" / stem_tail,
            self.root / stem_tail,
            self.root,
        ]

    def _entries(self, path: Path, data: dict, split: str | None, category_index: dict[int, int]) -> list[Entry]:
        panoptic = any("segments_info" in annotation for annotation in data.get("annotations", [])[:1])
        folders = self._image_folders(path)
        by_image: dict[int, Entry] = {}
        entries: list[Entry] = []
        for image in data["images"]:
            file_name = str(image.get("file_name", ""))
            found = find_image(file_name, folders)
            entry = Entry(
                key=relative_key(found, self.root) if found else file_name,
                source=path,
                image_path=found,
                split=split,
                size=(int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None,
            )
            if found is None:
                entry.problems.append(
                    f"{path}: image {file_name!r} not found in {', '.join(str(f) for f in dict.fromkeys(folders))}; "
                    f"export with images or copy them next to the JSON"
                )
            by_image[int(image["id"])] = entry
            entries.append(entry)
        for number, annotation in enumerate(data.get("annotations", [])):
            entry = by_image.get(int(annotation.get("image_id", -1)))
            where = f"{path}: annotation {annotation.get('id', number)}"
            if entry is None:
                continue  # an annotation of an image the file does not list: nothing to draw it on
            if panoptic:
                self._panoptic(path, annotation, entry, category_index, where)
            else:
                self._instance(annotation, entry, category_index, where)
        return entries

    def _category(self, category_id: Any, category_index: dict[int, int], entry: Entry, where: str) -> int | None:
        try:
            return category_index[int(category_id)]
        except (KeyError, TypeError, ValueError):
            entry.problems.append(f"{where}: category_id {category_id!r} is not in the file's categories")
            return None

    def _instance(self, annotation: dict, entry: Entry, category_index: dict[int, int], where: str) -> None:
        label = self._category(annotation.get("category_id"), category_index, entry, where)
        if label is None:
            return
        shape = Shape(label=None if annotation.get("iscrowd") else label)
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict) and "counts" in segmentation:
            shape.rle = segmentation
        elif isinstance(segmentation, list):
            shape.polygons = [
                polygon
                for points in segmentation
                if (polygon := polygon_or_problem(points, where, entry.problems)) is not None
            ]
        else:
            entry.notes.append(f"{where}: no segmentation (a box only), not read")
            return
        entry.shapes.append(shape)

    def _panoptic(self, path: Path, annotation: dict, entry: Entry, category_index: dict[int, int], where: str) -> None:
        png_name = str(annotation.get("file_name", ""))
        png = find_image(png_name, [path.parent / path.stem, path.parent.parent / path.stem, path.parent])
        if png is None:
            entry.problems.append(f"{where}: panoptic PNG {png_name!r} not found in {path.parent / path.stem}")
            return
        for segment in annotation.get("segments_info", []):
            label = self._category(segment.get("category_id"), category_index, entry, where)
            if label is not None:
                entry.shapes.append(
                    Shape(label=None if segment.get("iscrowd") else label, panoptic=(png, int(segment["id"])))
                )
