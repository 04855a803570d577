"""Bad input data: every case ends in one line naming the file or value and what to do, or loads correctly.

Extends tests/data/test_datasets.py (which covers the dataset classes one by one) with the end-to-end view: what
`bridgeseg fit` / `bridgeseg validate` print for each broken folder, and the image kinds the reader must accept.
"""

from __future__ import annotations

import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bridgeseg.data import (
    DatasetError,
    DatasetNotFoundError,
    build_eval_transforms,
    build_train_transforms,
    create_dataset,
    load_image,
    read_class_file,
)
from tests.engine.helpers import CLASSES, fit_args, make_folder_dataset, run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "bridgeseg"


@pytest.fixture(scope="module")
def good_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 3-class folder dataset (8 train, 3 val images of 64 px); copy it before breaking it."""
    return make_folder_dataset(tmp_path_factory.mktemp("good"), num_train=8, num_val=3)


@pytest.fixture
def data(good_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_data, tmp_path / "data"))


def fit(capsys: pytest.CaptureFixture[str], data: Path, run: Path, *extra: str, workers: int = 0) -> tuple[int, str]:
    return run_cli(capsys, "fit", *fit_args(data, run, max_steps=4, **{"--data.num_workers": str(workers)}), *extra)


def write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> None:
    """A PNG written chunk by chunk, so its header can say anything (16-bit RGB, absurd sizes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


def test_missing_empty_and_text_images_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nowhere\.png: image file not found"):
        load_image(tmp_path / "nowhere.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.png: cannot read image .*corrupt or not an image"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("this is a text file with an image extension\n")
    with pytest.raises(DatasetError, match=r"notes\.jpg: cannot read image .*replace it or remove it"):
        load_image(tmp_path / "notes.jpg")


def test_image_deleted_after_listing_is_named(data: Path) -> None:
    dataset = create_dataset("folder", root=data, split="train")
    (data / "images" / "train" / "005.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"005\.png: image file not found; restore it or remove it"):
        dataset[5]
    (data / "masks" / "train" / "006.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"masks/train/006\.png: mask file not found"):
        dataset[6]


def test_decompression_bomb_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    # 29 bytes of header claiming 100000 x 100000 pixels: PIL's guard must stay on and the message must say why.
    write_png(tmp_path / "bomb.png", 100_000, 100_000, 8, 2, b"")
    with pytest.raises(DatasetError, match=r"bomb\.png: image refused by PIL's decompression-bomb guard") as info:
        load_image(tmp_path / "bomb.png")
    assert "10000000000 pixels" in str(info.value) and "downscale or tile it" in str(info.value)


def test_pil_pixel_limit_is_never_disabled() -> None:
    import bridgeseg.cli
    import bridgeseg.data.datasets
    import bridgeseg.engine.lightning  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= 80_000_000
    offenders = [
        str(path) for path in SRC.rglob("*.py") if re.search(r"MAX_IMAGE_PIXELS\s*=(?!=)", path.read_text("utf-8"))
    ]
    assert not offenders, f"Image.MAX_IMAGE_PIXELS is reassigned in {offenders}"


def test_sixteen_bit_rgb_png_loads_scaled(tmp_path: Path) -> None:
    # PIL has no 16-bit RGB mode: such PNGs (scanners, microscopes) must still come out as RGB in [0, 1].
    values = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(">u2")
    write_png(tmp_path / "rgb16.png", 5, 4, 16, 2, b"".join(b"\x00" + row.tobytes() for row in values))
    image = load_image(tmp_path / "rgb16.png")
    expected = torch.from_numpy((values >> 8).astype(np.float32) / 255.0).permute(2, 0, 1)
    assert image.shape == (3, 4, 5) and torch.allclose(image, expected)


@pytest.mark.parametrize("mode", ["I;16", "L", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_image_mode_goes_through_the_training_pipeline(mode: str, tmp_path: Path) -> None:
    height, width = 40, 48
    grey = np.linspace(0, 255, height * width).reshape(height, width).astype(np.uint8)
    root = tmp_path / "set"
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("dark\nbright\n")
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "CMYK":
        image = Image.fromarray(np.stack([grey] * 3, axis=-1)).convert("CMYK")
    else:
        image = Image.fromarray(grey).convert(mode)
    assert image.mode == mode
    image.save(root / "images" / "train" / ("x.tif" if mode == "CMYK" else "x.png"))
    Image.fromarray((grey > 127).astype(np.uint8)).save(root / "masks" / "train" / "x.png")

    dataset = create_dataset("folder", root=root, split="train")
    raw = dataset[0]["image"]
    assert raw.shape == (3, height, width) and raw.dtype == torch.float32
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    if mode in ("I;16", "L", "LA", "P"):
        assert torch.allclose(raw[0], torch.from_numpy(grey / 255.0).float(), atol=1 / 255)
    sample = create_dataset("folder", root=root, split="train", transforms=build_train_transforms(32))[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_rotates_image_and_mask_alike(orientation: int, tmp_path: Path) -> None:
    # Stored pixels: four quadrants, each a colour and a class; after loading, every pixel's class must still
    # match its colour, and the geometry must be what PIL's exif_transpose gives.
    height, width = 12, 20
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 2, width // 2 :] = 1
    labels[height // 2 :, : width // 2] = 2
    labels[height // 2 :, width // 2 :] = 3
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    root = tmp_path / "set"
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
    Image.fromarray(colours[labels]).save(root / "images" / "train" / "x.png", exif=exif)
    Image.fromarray(labels).save(root / "masks" / "train" / "x.png", exif=exif)

    sample = create_dataset("folder", root=root, split="train")[0]
    expected = np.array(ImageOps.exif_transpose(Image.open(root / "images" / "train" / "x.png")))
    assert sample["image"].shape == (3, *expected.shape[:2]) and sample["mask"].shape == expected.shape[:2]
    assert torch.equal((sample["image"] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(expected))
    assert torch.equal(torch.from_numpy(colours)[sample["mask"]], torch.from_numpy(expected))
    if orientation in (5, 6, 7, 8):
        assert sample["mask"].shape == (width, height)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (63, 7)])
def test_images_smaller_than_the_crop_are_padded_not_cropped(size: tuple[int, int], tmp_path: Path) -> None:
    width, height = size
    root = tmp_path / "set"
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (width, height), (200, 10, 10)).save(root / "images" / "train" / "x.png")
    Image.new("L", (width, height), 1).save(root / "masks" / "train" / "x.png")
    transforms = build_train_transforms(64, scale_range=(0.5, 2.0))
    dataset = create_dataset("folder", root=root, split="train", transforms=transforms)
    for seed in range(5):
        torch.manual_seed(seed)
        sample = dataset[0]
        assert sample["image"].shape == (3, 64, 64) and sample["mask"].shape == (64, 64)
        labelled = sample["mask"] != 255
        assert labelled.any() and set(sample["mask"][labelled].unique().tolist()) == {1}
        assert float(sample["image"][:, ~labelled].abs().max()) == 0.0  # padding is black and ignored


def test_fit_on_tiny_images_pads_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "tiny"
    for split, count in (("train", 4), ("val", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for index in range(count):
            width, height = 3 + 5 * index, 2 + 3 * index
            Image.new("RGB", (width, height), (40 * index, 90, 200)).save(root / "images" / split / f"{index}.png")
            mask = np.arange(width)[None].repeat(height, 0) % 3
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / split / f"{index}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    code, _ = run_cli(capsys, "fit", *fit_args(root, tmp_path / "run", max_steps=2))
    assert code == 0 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_large_image_is_cropped_and_validated_within_bounds(tmp_path: Path) -> None:
    width, height = 2400, 1600  # 3.8 Mpx: far above the crop, below PIL's limit
    root = tmp_path / "set"
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("left\nright\n")
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None].repeat(height, 0).astype(np.uint8)
    Image.fromarray(gradient).save(root / "images" / "val" / "big.png")
    Image.fromarray((np.arange(width) >= width // 2).astype(np.uint8)[None].repeat(height, 0)).save(
        root / "masks" / "val" / "big.png"
    )
    train = create_dataset("folder", root=root, split="val", transforms=build_train_transforms(64))[0]
    assert train["image"].shape == (3, 64, 64)
    evaluated = create_dataset("folder", root=root, split="val", transforms=build_eval_transforms(512, 1024))[0]
    assert evaluated["image"].shape == (3, 512, 768) and evaluated["mask"].shape == (height, width)


# ---------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------


def test_fit_stops_on_labels_outside_the_class_list(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = np.array(Image.open(data / "masks" / "train" / "003.png"))
    mask[0, :4] = [7, 9, 255, 9]
    Image.fromarray(mask).save(data / "masks" / "train" / "003.png")
    code, error = fit(capsys, data, tmp_path / "run", workers=2)
    assert code == 2, "a fit on masks with out-of-range labels must not train silently"
    assert re.search(r"masks/train/003\.png: label values 7, 9 are >= 3 .*classes\.txt", error), error


def test_check_reports_every_bad_mask_with_its_values(data: Path) -> None:
    for name, values in (("001", [4]), ("006", [3, 200])):
        mask = np.array(Image.open(data / "masks" / "train" / f"{name}.png"))
        mask[-1, : len(values)] = values
        Image.fromarray(mask).save(data / "masks" / "train" / f"{name}.png")
    report = create_dataset("folder", root=data, split="train").check(raise_on_error=False)
    assert len(report.problems) == 2
    assert re.search(r"001\.png: label values 4 are", report.problems[0])
    assert re.search(r"006\.png: label values 3, 200 are", report.problems[1])
    with pytest.raises(DatasetError, match=r"(?s)2 problem\(s\) in 8 samples.*001\.png.*006\.png"):
        create_dataset("folder", root=data, split="train").check()


def break_masks(data: Path) -> None:
    """Val mask 000 as a VOC-style colour rendering, 001 as RGBA colours, 002 four rows short."""
    palette = np.array([[0, 0, 0, 255], [128, 0, 0, 255], [0, 128, 0, 255]], dtype=np.uint8)
    masks = {name: np.array(Image.open(data / "masks" / "val" / f"{name}.png")) for name in ("000", "001", "002")}
    Image.fromarray(palette[masks["000"]][..., :3]).save(data / "masks" / "val" / "000.png")
    Image.fromarray(palette[masks["001"]], mode="RGBA").save(data / "masks" / "val" / "001.png")
    Image.fromarray(masks["002"][:60]).save(data / "masks" / "val" / "002.png")


def test_colour_and_misfitting_masks_are_each_named(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    break_masks(data)
    problems = create_dataset("folder", root=data, split="val").check(raise_on_error=False).problems
    assert len(problems) == 3
    assert re.match(
        r"\S+val/000\.png: mask is a colour \(RGB\) image, expected a single-channel index PNG", problems[0]
    )
    assert re.match(r"\S+val/001\.png: mask is a colour \(RGBA\) image.*map its colours to indices", problems[1])
    assert re.match(r"\S+val/002\.png: mask is 64x60 but its image \S+val/002\.png is 64x64; .*re-export", problems[2])
    code, error = run_cli(capsys, "validate", *fit_args(data, tmp_path / "run", max_steps=1))
    assert code == 2 and error == f"error: {problems[0]}"


def test_class_list_shorter_than_the_mask_labels_stops_validation(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "classes.txt").write_text("sky\ngrass\n")  # the masks use 0..2
    code, error = run_cli(capsys, "validate", *fit_args(data, tmp_path / "run", max_steps=1))
    assert code == 2
    assert re.search(r"val/000\.png: label values 2 are >= 2 .*add the missing class names or fix the mask", error)


def test_missing_mask_and_image_are_listed_before_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "masks" / "val" / "002.png").unlink()
    (data / "images" / "val" / "001.png").unlink()
    code, error = fit(capsys, data, tmp_path / "run")
    assert code == 2
    assert re.search(r"1 image\(s\) in \S+images/val have no mask in \S+masks/val: 002\.png", error), error
    assert re.search(r"1 mask\(s\) in \S+masks/val have no image in \S+images/val: 001\.png", error), error
    assert error.endswith("each images/<split>/<name>.<ext> needs masks/<split>/<name>.png")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"classes\.txt: class list is empty; write one class name a line"),
        ("\n\n", r"classes\.txt: class list is empty"),
        ("sky\ngrass\nsky\n", r"classes\.txt: line 3 repeats class 'sky' of line 1; give each label a distinct name"),
        ("sky\ngrass \ngrass\n", r"classes\.txt: line 3 repeats class 'grass' of line 2"),
        ("sky\n   \nroad\n", r"classes\.txt: line 2 is blank; every line up to the last names one class"),
    ],
    ids=["empty", "blank-only", "duplicate", "duplicate-after-strip", "blank-name"],
)
def test_bad_class_lists_are_named(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_class_file(tmp_path / "classes.txt")


def test_fit_with_a_duplicate_class_stops_before_building_the_model(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "classes.txt").write_text("sky\ngrass\nsky\n")
    code, error = fit(capsys, data, tmp_path / "run")
    assert code == 2 and re.fullmatch(r"error: \S+classes\.txt: line 3 repeats class 'sky' of line 1; .*", error)


def test_missing_class_list_and_empty_override(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data / "classes.txt").unlink()
    code, error = fit(capsys, data, tmp_path / "run")
    assert code == 2 and re.search(r"classes\.txt: class list not found; write one class name a line", error)
    with pytest.raises(DatasetError, match="the class list is empty"):
        create_dataset("folder", root=data, split="train", classes=[])


def test_classes_never_present_are_reported_not_fatal(data: Path) -> None:
    (data / "classes.txt").write_text("sky\ngrass\nroad\nboat\n")  # one more class than the masks use
    report = create_dataset("folder", root=data, split="val").check()
    assert report.ok and report.absent_classes(["sky", "grass", "road", "boat"]) == ["boat"]
    assert "classes never present: 1" in report.summary()


# ---------------------------------------------------------------------------------------------------------------
# Unreadable files in a validation run: the policy is to stop and name the file, never to skip it silently
# ---------------------------------------------------------------------------------------------------------------


def test_validation_over_a_folder_with_an_unreadable_image_stops_with_its_path(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = data / "images" / "val" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    args = fit_args(data, tmp_path / "run", max_steps=1, **{"--data.num_workers": "2"})
    code, error = run_cli(capsys, "validate", *args)
    assert code == 2
    assert re.fullmatch(
        r"error: \S+/images/val/001\.png: cannot decode image \(.*\); .*truncated: replace it .*", error
    )
    # Before a long run, `check` finds every such file at once instead of one per attempt.
    (data / "images" / "val" / "002.png").write_bytes(b"")
    report = create_dataset("folder", root=data, split="val").check(decode_images=True, raise_on_error=False)
    assert [Path(problem.split(":")[0]).name for problem in report.problems] == ["001.png", "002.png"]


def test_data_replaces_a_generated_dataset_only_with_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mosaic"
    argv = ["data", "mosaic", "--out", str(out), "--num-train", "1", "--num-val", "1", "--size", "32"]
    assert run_cli(capsys, *argv)[0] == 0
    meta = (out / "meta.json").read_bytes()
    code, error = run_cli(capsys, *argv, "--seed", "1")
    assert code == 2 and error == (
        f"error: {out} already holds 4 of the output files (meta.json, classes.txt, images and 1 more); pass "
        "--overwrite to replace them, or choose another --out folder"
    )
    assert (out / "meta.json").read_bytes() == meta
    assert run_cli(capsys, *argv, "--seed", "1", "--overwrite")[0] == 0
    assert (out / "meta.json").read_bytes() != meta
    # A folder of the user's own is never emptied, --overwrite or not; a file as --out is named as such.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, error = run_cli(capsys, "data", "mosaic", "--out", str(mine), "--overwrite")
    assert code == 2 and "is not empty and was not written by" in error and (mine / "notes.txt").exists()
    code, error = run_cli(capsys, "data", "nuclei", "--out", str(mine / "notes.txt"))
    assert code == 2 and error.endswith("notes.txt is a file; --out must be a folder (a new or an existing one)")
