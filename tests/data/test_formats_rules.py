"""Annotation exports: the overlap and background rules, checks, splits and conversion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridgeseg.cli import main
from bridgeseg.data import FolderDataset
from bridgeseg.data.formats import read_annotations
from bridgeseg.data.formats.split import stratified_split
from tests.data.conftest import NAMES, Sample


def _labelme(root: Path, shapes: list[dict], width: int = 40, height: int = 30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / "a.png")
    document = {"shapes": shapes, "imagePath": "a.png", "imageWidth": width, "imageHeight": height}
    (root / "a.json").write_text(json.dumps(document))
    return root


def _rectangle(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}


@pytest.mark.parametrize("big_first", [True, False])
def test_the_smaller_shape_is_on_top_whatever_the_file_order(tmp_path: Path, big_first: bool) -> None:
    big, small = _rectangle("wall", 0, 0, 30, 20), _rectangle("window", 10, 5, 20, 15)
    root = _labelme(tmp_path, [big, small] if big_first else [small, big])
    annotations = read_annotations(root)
    mask = annotations.render(annotations.entries[0], (40, 30))
    assert annotations.classes == ["background", "wall", "window"]
    assert (mask[5:15, 10:20] == 2).all() and mask[2, 2] == 1 and mask[25, 35] == 0


def test_unlabelled_pixels_are_ignored_on_request_and_ignore_labels_are_255(tmp_path: Path) -> None:
    shapes = [_rectangle("wall", 0, 0, 20, 10), _rectangle("__ignore__", 0, 20, 10, 30)]
    shapes.append({"label": "wall", "points": [[0, 0], [5, 5]], "shape_type": "line"})
    annotations = read_annotations(_labelme(tmp_path, shapes), background="ignore")
    mask = annotations.render(annotations.entries[0], (40, 30))
    assert annotations.classes == ["wall"]
    assert (mask[:10, :20] == 0).all() and (mask[20:, :10] == 255).all() and mask[15, 30] == 255
    assert any("has no area" in note for note in annotations.entries[0].notes)


def test_coco_crowd_regions_are_ignored(exports: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(exports["coco_rle"], tmp_path / "coco"))
    path = root / "annotations" / "instances_default.json"
    coco = json.loads(path.read_text())
    crowd = next(a for a in coco["annotations"] if a["image_id"] == 1)
    crowd["iscrowd"] = 1
    path.write_text(json.dumps(coco))
    annotations = read_annotations(root)
    entry = next(e for e in annotations.entries if e.key.endswith("img0.png"))
    mask = annotations.render(entry, annotations.image_info(entry).size)
    assert (mask == 255).sum() == crowd["area"]


def test_a_split_is_deterministic_and_stratified() -> None:
    keys = [f"{i:03d}.png" for i in range(40)]
    # class 9 is rare (4 images), class 1 is everywhere
    labels = [{1, 9} if i % 10 == 0 else {1, 2 + i % 3} for i in range(40)]
    train, val = stratified_split(keys, labels, val_fraction=0.25, seed=3)
    assert (train, val) == stratified_split(list(reversed(keys)), list(reversed(labels)), 0.25, 3)
    assert stratified_split(keys, labels, 0.25, 4) != (train, val)
    assert len(val) == 10 and sorted(train + val) == keys
    rare = {key for key, held in zip(keys, labels, strict=True) if 9 in held}
    assert len(rare & set(val)) == 1  # 4 × 0.25
    for label in (2, 3, 4):
        holders = {key for key, held in zip(keys, labels, strict=True) if label in held and 9 not in held}
        assert abs(len(holders & set(val)) - 0.25 * len(holders)) <= 1


def test_split_command_writes_lists_the_dataset_then_reads(exports: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(exports["cvat"], tmp_path / "cvat"))
    assert main(["data", "split", str(root), "--val-fraction", "0.5", "--seed", "1"]) == 0
    first = (root / "splits" / "val.txt").read_text()
    assert main(["data", "split", str(root), "--val-fraction", "0.5", "--seed", "1"]) == 0
    assert (root / "splits" / "val.txt").read_text() == first and len(first.split()) == 2
    from bridgeseg.data import create_dataset

    val = create_dataset("annotations", root, "val")
    assert sorted(e.key for e in val.entries) == sorted(first.split())


def test_convert_writes_a_folder_layout_with_the_same_masks(
    exports: dict[str, Path], samples: list[Sample], tmp_path: Path
) -> None:
    out = tmp_path / "folder"
    code = main(
        ["data", "convert", str(exports["labelme"]), "--to", "folder", "--out", str(out), "--val-fraction", "0.25"]
    )
    assert code == 0
    assert (out / "classes.txt").read_text().split() == ["background", *NAMES]
    truth = {sample.name: sample.mask for sample in samples}
    seen = 0
    for split in ("train", "val"):
        dataset = FolderDataset(out, split)
        for index in range(len(dataset)):
            mask = dataset[index]["mask"].numpy()
            stem = Path(dataset.samples[index][1]).stem
            assert (mask == truth[stem]).mean() > 0.99
            seen += 1
    assert seen == len(samples)  # the embedded image was written as a file too


def test_check_lists_a_planted_problem_of_each_kind(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(exports["coco"], tmp_path / "coco"))
    path = root / "annotations" / "instances_default.json"
    coco = json.loads(path.read_text())
    (root / "images" / "img0.png").write_bytes(b"not an image")  # unreadable
    coco["images"][1]["width"] += 10  # annotation drawn at another size
    coco["annotations"][-1]["category_id"] = 99  # unknown label
    coco["categories"] += [{"id": 4, "name": "brick"}, {"id": 5, "name": "water"}]  # duplicate name, empty class
    path.write_text(json.dumps(coco))
    chart = tmp_path / "chart.png"
    assert main(["data", "check", str(root), "--chart", str(chart)]) == 2
    out = capsys.readouterr().out
    assert "img0.png: cannot read image" in out
    assert "was drawn on a 106x72 image but the image is 96x72" in out
    assert "category_id 99 is not in the file's categories" in out
    assert "class names ['brick'] appear more than once" in out
    assert "classes no image holds: ['brick', 'water']" in out
    assert "problems: 4 (training would fail)" in out
    assert "image sizes (width x height)" in out and "pixels %" in out
    assert chart.is_file()


def test_check_of_a_mask_export_names_a_misfit_and_an_unknown_colour(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(exports["cvat"], tmp_path / "cvat"))
    masks = sorted((root / "SegmentationClass").glob("*.png"))
    with Image.open(masks[0]) as mask:
        mask.resize((mask.width + 4, mask.height)).save(masks[0])
    with Image.open(masks[1]) as mask:
        broken = mask.convert("RGB")
    broken.putpixel((0, 0), (1, 2, 3))
    broken.save(masks[1])
    assert main(["data", "check", str(root)]) == 2
    out = capsys.readouterr().out
    assert f"{masks[0]}: mask is" in out and "a mask must match its image" in out
    assert "colours (1,2,3) are not in labelmap.txt" in out


def test_check_of_a_good_folder_layout_exits_0(exports: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "folder"
    assert main(["data", "convert", str(exports["yolo"]), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "(splits: train 3, val 1)" in report and "problems: 0" in report
