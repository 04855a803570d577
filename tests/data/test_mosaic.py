"""Tests of the offline stand-in datasets: photo mosaics and stardist nuclei tiles."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridgeseg.data.mosaic import (
    ATTRIBUTION_SOURCES,
    MOSAIC_SOURCES,
    generate_mosaic,
    load_source_photo,
    mosaic_classes,
    split_areas,
)

TINY = {"num_train": 8, "num_val": 4, "size": 64, "seed": 3}


@pytest.fixture(scope="module")
def tiny_mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_mosaic(tmp_path_factory.mktemp("mosaic") / "out", **TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_classes_and_sources() -> None:
    classes = mosaic_classes()
    assert len(classes) >= 12
    assert len(set(classes)) == len(classes)
    assert classes == list(MOSAIC_SOURCES)
    assert mosaic_classes(include_cc_by=True) == classes + list(ATTRIBUTION_SOURCES)
    for source in MOSAIC_SOURCES.values():
        assert source.licence in {"CC0-1.0", "Public domain", "No known copyright restrictions"}
    for name in mosaic_classes(include_cc_by=True):
        photo = load_source_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 150
    with pytest.raises(KeyError, match="valid names"):
        load_source_photo("unicorn")


def test_split_areas_are_disjoint() -> None:
    for name in mosaic_classes(include_cc_by=True):
        areas = split_areas(name, val_fraction=0.3)
        (tx0, ty0, tx1, ty1), (vx0, vy0, vx1, vy1) = areas["train"], areas["val"]
        assert tx0 < tx1 and ty0 < ty1 and vx0 < vx1 and vy0 < vy1
        overlap_w = min(tx1, vx1) - max(tx0, vx0)
        overlap_h = min(ty1, vy1) - max(ty0, vy0)
        assert overlap_w <= 0 or overlap_h <= 0, name


def test_layout_and_counts(tiny_mosaic: Path) -> None:
    classes = (tiny_mosaic / "classes.txt").read_text().splitlines()
    assert classes == mosaic_classes()
    for split, count in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
        images = sorted((tiny_mosaic / "images" / split).glob("*.png"))
        masks = sorted((tiny_mosaic / "masks" / split).glob("*.png"))
        assert len(images) == count
        assert [p.stem for p in images] == [p.stem for p in masks]
        for image_path, mask_path in zip(images, masks, strict=True):
            with Image.open(image_path) as image, Image.open(mask_path) as mask:
                assert image.mode == "RGB" and image.size == (TINY["size"], TINY["size"])
                assert mask.mode in {"L", "P"} and mask.size == image.size
    meta = json.loads((tiny_mosaic / "meta.json").read_text())
    assert meta["seed"] == TINY["seed"] and meta["classes"] == classes
    assert set(meta["sources"]) == set(classes)
    assert "stand-in" in (tiny_mosaic / "README.md").read_text()


def test_masks_cover_every_class(tiny_mosaic: Path) -> None:
    num_classes = len(mosaic_classes())
    seen: dict[str, set[int]] = {"train": set(), "val": set()}
    for split in seen:
        for mask_path in (tiny_mosaic / "masks" / split).glob("*.png"):
            mask = np.asarray(Image.open(mask_path))
            assert mask.dtype == np.uint8 and mask.max() < num_classes
            assert len(np.unique(mask)) >= 2, "every mosaic holds several classes"
            seen[split] |= set(np.unique(mask).tolist())
    assert seen["train"] == set(range(num_classes))
    assert seen["val"] == set(range(num_classes))


def test_deterministic(tmp_path: Path, tiny_mosaic: Path) -> None:
    again = generate_mosaic(tmp_path / "again", **TINY)
    assert _files(again) == _files(tiny_mosaic)
    other = generate_mosaic(tmp_path / "other", **{**TINY, "seed": TINY["seed"] + 1})
    assert _files(other)["images/train/train_00000.png"] != _files(tiny_mosaic)["images/train/train_00000.png"]


def test_train_and_val_read_disjoint_photo_areas(tiny_mosaic: Path) -> None:
    val_fraction = json.loads((tiny_mosaic / "meta.json").read_text())["difficulty"]["val_fraction"]
    records = [json.loads(line) for line in (tiny_mosaic / "provenance.jsonl").read_text().splitlines()]
    assert len(records) == TINY["num_train"] + TINY["num_val"]
    checked = {"train": 0, "val": 0}
    for record in records:
        split = record["image"].split("/")[1]
        for region in record["regions"]:
            assert region["split"] == split
            areas = split_areas(region["class"], val_fraction)
            footprint = np.asarray(region["footprint"])  # [4, 2] corners (x, y) in photo pixels
            x0, y0, x1, y1 = areas[split]
            assert footprint[:, 0].min() >= x0 and footprint[:, 0].max() <= x1, region
            assert footprint[:, 1].min() >= y0 and footprint[:, 1].max() <= y1, region
            # And away from the other split's area altogether.
            ox0, oy0, ox1, oy1 = areas["val" if split == "train" else "train"]
            disjoint_x = footprint[:, 0].max() <= ox0 or footprint[:, 0].min() >= ox1
            disjoint_y = footprint[:, 1].max() <= oy0 or footprint[:, 1].min() >= oy1
            assert disjoint_x or disjoint_y, region
            checked[split] += 1
    assert checked["train"] > 0 and checked["val"] > 0


def test_difficulty_knobs(tmp_path: Path) -> None:
    root = generate_mosaic(
        tmp_path / "easy",
        num_train=2,
        num_val=1,
        size=48,
        num_classes=4,
        num_regions=(2, 2),
        max_rotation=0,
        colour_jitter=0,
        boundary_jitter=0,
        noise=0,
    )
    assert (root / "classes.txt").read_text().splitlines() == mosaic_classes()[:4]
    for mask_path in (root / "masks").rglob("*.png"):
        assert np.asarray(Image.open(mask_path)).max() < 4
    with pytest.raises(TypeError, match="valid ones"):
        generate_mosaic(tmp_path / "bad", num_train=1, num_val=1, size=48, blur=3)
    with pytest.raises(ValueError, match="num_regions"):
        generate_mosaic(tmp_path / "bad", num_train=1, num_val=1, size=48, num_regions=(5, 2))


def test_refuses_foreign_or_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="empty"):
        generate_mosaic(tmp_path / "foreign", num_train=1, num_val=1, size=32)
    root = generate_mosaic(tmp_path / "ours", num_train=2, num_val=1, size=32)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_mosaic(root, num_train=1, num_val=1, size=32)
    generate_mosaic(root, num_train=1, num_val=1, size=32, overwrite=True)
    assert len(list((root / "images" / "train").glob("*.png"))) == 1


def test_nuclei_tiles(tmp_path: Path) -> None:
    from bridgeseg.data.nuclei import NUCLEI_CLASSES, generate_nuclei

    root = generate_nuclei(tmp_path / "nuclei", tile=64, seed=0, num_train=6)
    assert (root / "classes.txt").read_text().splitlines() == list(NUCLEI_CLASSES)
    meta = json.loads((root / "meta.json").read_text())
    assert len(meta["tiles"]["train"]) == 6
    vx0 = meta["split_areas"]["val"][0]
    assert all(x1 <= vx0 for _, _, x1, _ in meta["tiles"]["train"])
    assert all(x0 >= vx0 for x0, _, _, _ in meta["tiles"]["val"])
    masks = [np.asarray(Image.open(path)) for path in sorted((root / "masks").rglob("*.png"))]
    assert len(masks) == 6 + len(meta["tiles"]["val"])
    assert all(mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1} for mask in masks)
    assert any(mask.any() for mask in masks)
    again = generate_nuclei(tmp_path / "again", tile=64, seed=0, num_train=6)
    assert _files(again) == _files(root)
