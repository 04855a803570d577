"""Small exports in every supported annotation format, built from generated masks whose truth is known."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import draw, measure

NAMES = ["brick", "grass", "sky"]  # sorted: readers that sort labels keep this order
COLOURS = np.array([[0, 0, 0], [200, 60, 40], [50, 170, 60], [90, 150, 230]], dtype=np.uint8)  # background first
SIZES = [(80, 64), (96, 72), (64, 64), (88, 80)]  # (width, height)


@dataclass
class Sample:
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W]: 0 = background, 1..3 = NAMES


def make_samples(seed: int = 0) -> list[Sample]:
    """Mosaic-like masks: a rectangle, a disk and a bar of three classes, painted largest first."""
    rng = np.random.default_rng(seed)
    samples = []
    for index, (width, height) in enumerate(SIZES):
        mask = np.zeros((height, width), dtype=np.uint8)
        labels = rng.permutation(3) + 1
        regions = []
        top, left = rng.integers(2, height // 4), rng.integers(2, width // 4)
        regions.append(draw.rectangle((top, left), (height * 3 // 4, width * 2 // 3), shape=mask.shape))
        regions.append(draw.disk((height * 2 // 3, width * 2 // 3), min(width, height) // 5, shape=mask.shape))
        regions.append(draw.rectangle((height // 8, width // 2), (height // 8 + 8, width - 3), shape=mask.shape))
        for label, region in zip(labels, regions, strict=True):
            mask[region] = label
        image = COLOURS[mask].astype(np.float64) + rng.normal(0, 15, (height, width, 3))
        samples.append(Sample(f"img{index}", image.clip(0, 255).astype(np.uint8), mask))
    return samples


def components(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label, boolean region) of each connected region of each class, background left out."""
    labelled = measure.label(mask, background=0, connectivity=1)
    return [(int(mask[labelled == i][0]), labelled == i) for i in range(1, labelled.max() + 1)]


def polygons(region: np.ndarray) -> list[np.ndarray]:
    """Outline polygons [N, 2] of (x, y) in continuous pixel coordinates (pixel centres at +0.5)."""
    padded = np.pad(region, 1).astype(float)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, 0.2) - 1 + 0.5
        out.append(contour[:-1, ::-1])  # (row, col) -> (x, y); the last point repeats the first
    return out


def _save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_coco(root: Path, samples: list[Sample], rle: bool = False) -> Path:
    from pycocotools import mask as coco_mask

    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        height, width = sample.mask.shape
        _save_image(root / "images" / f"{sample.name}.png", sample.image)
        images.append({"id": image_id, "file_name": f"{sample.name}.png", "width": width, "height": height})
        for number, (label, region) in enumerate(components(sample.mask)):
            if rle or number % 2:
                encoded = coco_mask.encode(np.asfortranarray(region.astype(np.uint8)))
                segmentation = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
            else:
                segmentation = [p.ravel().tolist() for p in polygons(region)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "segmentation": segmentation,
                    "area": int(region.sum()),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "thing"} for i, name in enumerate(NAMES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    return root


def write_coco_panoptic(root: Path, samples: list[Sample]) -> Path:
    images, annotations = [], []
    png_dir = root / "annotations" / "panoptic_default"
    for image_id, sample in enumerate(samples, start=1):
        height, width = sample.mask.shape
        _save_image(root / "images" / f"{sample.name}.jpg", sample.image)
        images.append({"id": image_id, "file_name": f"{sample.name}.jpg", "width": width, "height": height})
        ids = np.zeros((height, width), dtype=np.int64)
        segments = []
        for number, (label, region) in enumerate(components(sample.mask)):
            segment_id = 1000 * (number + 1) + 7  # ids above 255 use the G channel too
            ids[region] = segment_id
            segments.append({"id": segment_id, "category_id": label, "iscrowd": 0, "area": int(region.sum())})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        _save_image(png_dir / f"{sample.name}.png", rgb)
        annotations.append({"image_id": image_id, "file_name": f"{sample.name}.png", "segments_info": segments})
    categories = [{"id": i + 1, "name": name, "isthing": i % 2} for i, name in enumerate(NAMES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "panoptic_default.json").write_text(json.dumps(coco))
    return root


def write_labelme(root: Path, samples: list[Sample]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(samples):
        height, width = sample.mask.shape
        shapes = [
            {"label": NAMES[label - 1], "points": p.tolist(), "shape_type": "polygon", "group_id": None, "flags": {}}
            for label, region in components(sample.mask)
            for p in polygons(region)
        ]
        document = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"{sample.name}.png",
            "imageData": None,
            "imageHeight": height,
            "imageWidth": width,
        }
        if index == 0:  # embedded only, no file next to the JSON
            document["imageData"] = base64.b64encode(_png_bytes(sample.image)).decode("ascii")
        else:
            _save_image(root / f"{sample.name}.png", sample.image)
        (root / f"{sample.name}.json").write_text(json.dumps(document))
    return root


def write_cvat(root: Path, samples: list[Sample]) -> Path:
    lines = ["# label:color_rgb:parts:actions"]
    lines += [
        f"{name}:{','.join(str(v) for v in colour)}::"
        for name, colour in zip(["background", *NAMES], COLOURS, strict=True)
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    for sample in samples:
        _save_image(root / "JPEGImages" / f"{sample.name}.jpg", sample.image)
        _save_image(root / "SegmentationClass" / f"{sample.name}.png", COLOURS[sample.mask])
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(s.name for s in samples) + "\n")
    return root


def write_palette(root: Path, samples: list[Sample]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(["background", *NAMES]) + "\n")
    palette = COLOURS.ravel().tolist() + [0] * (768 - COLOURS.size)
    for sample in samples:
        _save_image(root / "JPEGImages" / f"{sample.name}.jpg", sample.image)
        mask = Image.fromarray(sample.mask)
        mask = mask.convert("P")
        mask.putpalette(palette)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        mask.save(root / "SegmentationClass" / f"{sample.name}.png")
    return root


def write_label_studio(root: Path, samples: list[Sample], brush: bool = True) -> Path:
    tasks = []
    for index, sample in enumerate(samples):
        height, width = sample.mask.shape
        _save_image(root / "images" / f"{sample.name}.png", sample.image)
        results = []
        for number, (label, region) in enumerate(components(sample.mask)):
            common = {"original_width": width, "original_height": height, "from_name": "tag", "to_name": "image"}
            if brush and number == 0 and index % 2 == 0:
                from label_studio_converter.brush import mask2rle

                rle = mask2rle(region.astype(np.uint8) * 255)
                value = {"format": "rle", "rle": rle, "brushlabels": [NAMES[label - 1]]}
                results.append({"type": "brushlabels", "value": value, **common})
                continue
            for polygon in polygons(region):
                points = (polygon / [width, height] * 100).tolist()
                value = {"points": points, "closed": True, "polygonlabels": [NAMES[label - 1]]}
                results.append({"type": "polygonlabels", "value": value, **common})
        tasks.append(
            {
                "id": index + 1,
                "data": {"image": f"/data/upload/1/{index:08x}-{sample.name}.png"},
                "annotations": [{"id": index + 1, "was_cancelled": False, "result": results}],
            }
        )
    (root / "project-1-export.json").write_text(json.dumps(tasks))
    return root


def write_yolo(root: Path, samples: list[Sample]) -> Path:
    for index, sample in enumerate(samples):
        split = "val" if index == len(samples) - 1 else "train"
        height, width = sample.mask.shape
        _save_image(root / "images" / split / f"{sample.name}.jpg", sample.image)
        lines = []
        for label, region in components(sample.mask):
            for polygon in polygons(region):
                coordinates = (polygon / [width, height]).ravel()
                lines.append(" ".join([str(label - 1), *(f"{v:.6f}" for v in coordinates)]))
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{sample.name}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(NAMES))}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root


WRITERS = {
    "coco": write_coco,
    "coco_rle": lambda root, samples: write_coco(root, samples, rle=True),
    "coco_panoptic": write_coco_panoptic,
    "labelme": write_labelme,
    "cvat": write_cvat,
    "palette": write_palette,
    "label_studio": write_label_studio,
    "yolo": write_yolo,
}
FORMAT_OF = {"coco_rle": "coco", "coco_panoptic": "coco"}
EXACT = {"coco_rle", "coco_panoptic", "cvat", "palette"}


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return make_samples()


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory, samples: list[Sample]) -> dict[str, Path]:
    """One export per writer, built once."""
    base = tmp_path_factory.mktemp("exports")
    return {name: writer(base / name, samples) for name, writer in WRITERS.items()}
