"""Datasets: each mmseg layout as a tiny fake tree, label conventions, pairing, and the boundary checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import default_collate

from bridgeseg.data import (
    ADE20K_CLASSES,
    COCO_STUFF164K_CLASSES,
    DatasetError,
    DatasetNotFoundError,
    FolderDataset,
    SegmentationDataset,
    build_train_transforms,
    clean_class_name,
    clean_class_names,
    create_dataset,
    list_datasets,
    load_image,
    load_mask,
    synonyms,
)

H, W = 24, 32  # image height, width


def write_image(path: Path, size: tuple[int, int] = (W, H), seed: int = 0, **save_kwargs: object) -> np.ndarray:
    """Random RGB image of ``size`` (width, height); returns its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_kwargs)
    return pixels


def write_mask(path: Path, values: np.ndarray, mode: str = "L", **save_kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")
        palette = [0] * 768
        for index, color in enumerate([(0, 0, 0), (128, 0, 0), (0, 128, 0)] * 85):
            palette[3 * index : 3 * index + 3] = color
        image.putpalette(palette)
    image.save(path, **save_kwargs)


def label_grid(values: list[int], size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A mask whose columns cycle through ``values``."""
    row = np.array([values[i % len(values)] for i in range(size[0])], dtype=np.int64)
    return np.tile(row, (size[1], 1))


# ---------------------------------------------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------------------------------------------


def test_class_tables_and_prompt_cleaning() -> None:
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[7] == "bed "
    assert len(COCO_STUFF164K_CLASSES) == 171
    assert clean_class_name("bed ") == "bed"
    assert clean_class_name("person;individual;someone") == "person"
    assert synonyms(" person ; individual;person;") == ["person", "individual"]
    assert clean_class_name("wall-brick") == "brick wall"
    assert clean_class_name("building-other") == "building"
    assert clean_class_name("desk-stuff") == "desk"
    assert clean_class_name("pottedplant") == "potted plant"
    assert clean_class_name("traffic_light") == "traffic light"
    assert clean_class_name("x-ray machine") == "x ray machine"
    prompts = clean_class_names(list(COCO_STUFF164K_CLASSES))
    assert len(set(prompts)) == 171 and "-" not in "".join(prompts)
    assert clean_class_names(["floor", "floor-other"]) == ["floor", "floor other"]  # collisions fall back


def test_unknown_name_lists_valid_ones(tmp_path: Path) -> None:
    assert set(list_datasets()) >= {"ade20k", "cityscapes", "voc", "pascal_context59", "coco_stuff164k", "folder"}
    with pytest.raises(ValueError, match=r"valid names: .*ade20k"):
        create_dataset("ade21k", root=tmp_path, split="train")


# ---------------------------------------------------------------------------------------------------------------
# Benchmark layouts
# ---------------------------------------------------------------------------------------------------------------


def test_ade20k_layout_and_reduce_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        write_image(base / "images" / split / f"{stem}.jpg")
        write_mask(base / "annotations" / split / f"{stem}.png", label_grid([0, 1, 150, 255, 8]))
    write_image(base / "images" / "training" / "ADE_train_00000002.jpg", seed=1)
    write_mask(base / "annotations" / "training" / "ADE_train_00000002.png", label_grid([3]))

    for root in (tmp_path, tmp_path / "ade", base):  # the dataset folder or any parent of the standard layout
        dataset = create_dataset("ade20k", root=root, split="train")
        assert len(dataset) == 2 and dataset.num_classes == 150 and dataset.ignore_index == 255
    assert dataset.classes[7] == "bed " and dataset.prompt_names[7] == "bed"
    sample = dataset[0]
    assert sample["path"].endswith("ADE_train_00000001.jpg")
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (H, W)
    assert sample["mask"][0, :5].tolist() == [255, 0, 149, 255, 7]
    assert len(create_dataset("ade20k", root=base, split="validation")) == 1
    assert create_dataset("ADE20K", root=base, split="val").split == "val"
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        create_dataset("ade20k", root=base, split="test")


def test_cityscapes_layout(tmp_path: Path) -> None:
    for city, frame in (("aachen", "000000_000019"), ("bochum", "000000_000313")):
        stem = f"{city}_{frame}"
        write_image(tmp_path / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png")
        gt = tmp_path / "gtFine" / "train" / city
        write_mask(gt / f"{stem}_gtFine_labelTrainIds.png", label_grid([0, 18, 255]))
        write_mask(gt / f"{stem}_gtFine_labelIds.png", label_grid([7, 33, 0]))  # ignored: not train ids
        write_image(gt / f"{stem}_gtFine_color.png")
    dataset = create_dataset("cityscapes", root=tmp_path, split="train")
    assert len(dataset) == 2 and dataset.num_classes == 19
    image_path, mask_path = dataset.samples[1]
    assert image_path.name == "bochum_000000_000313_leftImg8bit.png"
    assert mask_path.name == "bochum_000000_000313_gtFine_labelTrainIds.png"
    assert dataset[0]["mask"][0, :3].tolist() == [0, 18, 255]


def test_cityscapes_without_train_ids_says_how_to_make_them(tmp_path: Path) -> None:
    write_image(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    write_mask(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", label_grid([7]))
    with pytest.raises(DatasetError, match="csCreateTrainIdLabelImgs"):
        create_dataset("cityscapes", root=tmp_path, split="val")


def test_voc_palette_masks_and_aug(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    ids = ["2007_000032", "2007_000039", "2008_000002"]
    for index, image_id in enumerate(ids):
        write_image(base / "JPEGImages" / f"{image_id}.jpg", seed=index)
    write_mask(base / "SegmentationClass" / "2007_000032.png", label_grid([0, 15, 255, 20]), mode="P")
    write_mask(base / "SegmentationClass" / "2007_000039.png", label_grid([1]), mode="P")
    write_mask(base / "SegmentationClassAug" / "2008_000002.png", label_grid([2, 3]))
    write_mask(base / "SegmentationClassAug" / "2007_000032.png", label_grid([4]))
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2007_000039\n")
    (lists / "aug.txt").write_text("2007_000032\n2007_000039\n2008_000002\n")

    assert Image.open(base / "SegmentationClass" / "2007_000032.png").mode == "P"
    dataset = create_dataset("voc", root=tmp_path, split="train")
    assert len(dataset) == 2 and dataset.num_classes == 21 and dataset.classes[0] == "background"
    assert dataset.prompt_names[11] == "dining table"
    assert dataset[0]["mask"][0, :4].tolist() == [0, 15, 255, 20]  # palette indices, not colours
    assert len(create_dataset("voc", root=base, split="val")) == 1

    augmented = create_dataset("voc", root=tmp_path / "VOCdevkit", split="train", aug=True)
    assert [image.stem for image, _ in augmented.samples] == ids
    masks = {image.stem: mask.parent.name for image, mask in augmented.samples}
    assert masks == {
        "2007_000032": "SegmentationClassAug",
        "2007_000039": "SegmentationClass",
        "2008_000002": "SegmentationClassAug",
    }
    assert augmented[0]["mask"].unique().tolist() == [4]

    (lists / "trainval.txt").write_text("2007_000032\n2009_999999\n")
    with pytest.raises(DatasetError, match=r"2009_999999\.jpg.*2009_999999\.png"):
        create_dataset("voc", root=tmp_path, split="trainval")


def test_pascal_context59_reduce_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2010"
    write_image(base / "JPEGImages" / "2008_000002.jpg")
    write_image(base / "JPEGImages" / "2008_000003.jpg", seed=2)
    write_mask(base / "SegmentationClassContext" / "2008_000002.png", label_grid([0, 1, 59, 255]))
    write_mask(base / "SegmentationClassContext" / "2008_000003.png", label_grid([0, 60]))
    lists = base / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2008_000002\n")
    (lists / "val.txt").write_text("2008_000003\n")
    dataset = create_dataset("pascal_context59", root=tmp_path, split="train")
    assert dataset.num_classes == 59 and dataset.classes[0] == "aeroplane"
    assert dataset[0]["mask"][0, :4].tolist() == [255, 0, 58, 255]
    bad = create_dataset("pascal_context59", root=base, split="val")
    with pytest.raises(DatasetError, match=r"2008_000003\.png: label values 60 "):
        bad[0]


def test_coco_stuff164k_layout(tmp_path: Path) -> None:
    base = tmp_path / "coco_stuff164k"
    for split, stem in (("train2017", "000000000009"), ("val2017", "000000000139")):
        write_image(base / "images" / split / f"{stem}.jpg")
        write_mask(base / "annotations" / split / f"{stem}_labelTrainIds.png", label_grid([0, 170, 255]))
        write_mask(base / "annotations" / split / f"{stem}.png", label_grid([181]))  # raw, unconverted: not read
    dataset = create_dataset("coco_stuff164k", root=tmp_path, split="train")
    assert len(dataset) == 1 and dataset.num_classes == 171
    assert dataset.samples[0][1].name == "000000000009_labelTrainIds.png"
    assert dataset[0]["mask"][0, :3].tolist() == [0, 170, 255]
    assert dataset.prompt_names[COCO_STUFF164K_CLASSES.index("wall-brick")] == "brick wall"
    assert len(create_dataset("coco_stuff164k", root=base, split="val2017")) == 1

    raw_only = tmp_path / "raw" / "coco_stuff164k"
    write_image(raw_only / "images" / "val2017" / "a.jpg")
    write_mask(raw_only / "annotations" / "val2017" / "a.png", label_grid([181]))
    with pytest.raises(DatasetError, match=r"coco_stuff164k\.py"):
        create_dataset("coco_stuff164k", root=raw_only, split="val")


# ---------------------------------------------------------------------------------------------------------------
# Folder dataset and its checks
# ---------------------------------------------------------------------------------------------------------------


def make_folder(root: Path, classes: list[str], masks: dict[str, np.ndarray], split: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    for index, (name, mask) in enumerate(masks.items()):
        extension = ".jpg" if index % 2 == 0 else ".png"
        write_image(root / "images" / split / f"{name}{extension}", size=(mask.shape[1], mask.shape[0]), seed=index)
        write_mask(root / "masks" / split / f"{name}.png", mask)
    return root


def test_folder_dataset(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path, ["background", "cat", "dog_house"], {"a": label_grid([0, 1, 2, 255]), "b": label_grid([1])}
    )
    dataset = create_dataset("folder", root=root, split="train")
    assert dataset.classes == ["background", "cat", "dog_house"]
    assert dataset.prompt_names == ["background", "cat", "dog house"]
    assert [image.name for image, _ in dataset.samples] == ["a.jpg", "b.png"]
    assert dataset[0]["mask"][0, :4].tolist() == [0, 1, 2, 255]
    assert create_dataset("folder", root=root, split="training").split == "training"  # alias of train
    overridden = FolderDataset(root, "train", classes=["bg", "x", "y"], reduce_zero_label=True)
    assert overridden.classes == ["bg", "x", "y"] and overridden[0]["mask"][0, :4].tolist() == [255, 0, 1, 255]

    batch = default_collate(
        [create_dataset("folder", root=root, split="train", transforms=build_train_transforms(16))[i] for i in range(2)]
    )
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16) and len(batch["path"]) == 2

    report = dataset.check()
    assert report.ok and report.num_samples == 2
    assert report.class_pixels.tolist() == [8 * H, (8 + W) * H, 8 * H] and report.ignore_pixels == 8 * H
    assert "2 samples" in report.summary()


def test_missing_root_and_split_name_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere")):
        create_dataset("folder", root=tmp_path / "nowhere", split="train")
    root = make_folder(tmp_path / "set", ["a", "b"], {"x": label_grid([0, 1])})
    with pytest.raises(FileNotFoundError, match=str(root / "images" / "test")):
        create_dataset("folder", root=root, split="test")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "images")):
        create_dataset("ade20k", root=tmp_path, split="train")
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/Segmentation/val\.txt"):
        (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
        create_dataset("voc", root=tmp_path, split="val")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"classes\.txt"):
        create_dataset("folder", root=root, split="train")


def test_unpaired_files_are_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a", "b"], {"x": label_grid([0]), "y": label_grid([1])})
    write_image(root / "images" / "train" / "lonely.jpg")
    write_mask(root / "masks" / "train" / "orphan.png", label_grid([0]))
    with pytest.raises(DatasetError, match=r"1 image\(s\) in .* have no mask .*lonely\.jpg.*orphan\.png"):
        create_dataset("folder", root=root, split="train")


def test_size_mismatch(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a", "b"], {"x": label_grid([0, 1])})
    write_mask(root / "masks" / "train" / "x.png", label_grid([0, 1], size=(W + 1, H)))
    with pytest.raises(DatasetError, match=rf"x\.png: mask is {W + 1}x{H} but its image .*x\.jpg is {W}x{H}"):
        create_dataset("folder", root=root, split="train")[0]


def test_label_values_out_of_range(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a", "b", "c"], {"x": label_grid([0, 1, 7, 9, 255])})
    dataset = create_dataset("folder", root=root, split="train")
    with pytest.raises(DatasetError, match=r"x\.png: label values 7, 9 are >= 3"):
        dataset[0]


def test_binary_0_255_trap(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["background", "crack"], {"x": label_grid([0, 255])})
    dataset = create_dataset("folder", root=root, split="train")
    with pytest.raises(DatasetError, match=r"x\.png: .*255 is ignore.*use 0/1"):
        dataset[0]
    report = dataset.check(raise_on_error=False)
    assert not report.ok and "255 is ignore" in report.problems[0]
    allowed = create_dataset("folder", root=root, split="train", allow_binary_255=True)
    assert allowed[0]["mask"].unique().tolist() == [0, 255]


def test_colour_mask_rejected_grey_rgb_accepted(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a", "b", "c"], {"x": label_grid([0, 1]), "y": label_grid([2])})
    grey = label_grid([0, 2]).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(root / "masks" / "train" / "y.png")  # RGB, R == G == B
    colour = np.zeros((H, W, 3), dtype=np.uint8)
    colour[:, :10] = (128, 0, 0)
    Image.fromarray(colour).save(root / "masks" / "train" / "x.png")
    dataset = create_dataset("folder", root=root, split="train")
    assert dataset[1]["mask"][0, :2].tolist() == [0, 2]
    with pytest.raises(DatasetError, match=r"x\.png: mask is a colour \(RGB\) image"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"(?s)1 problem\(s\).*x\.png"):
        dataset.check(num_workers=2)


def test_corrupt_and_truncated_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path, ["a", "b"], {"x": label_grid([0, 1]), "y": label_grid([1])})
    (root / "images" / "train" / "x.jpg").write_bytes(b"definitely not a jpeg")
    png = (root / "images" / "train" / "y.png").read_bytes()
    (root / "images" / "train" / "y.png").write_bytes(png[: len(png) // 2])
    dataset = create_dataset("folder", root=root, split="train")
    with pytest.raises(DatasetError, match=r"x\.jpg: cannot read image"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"y\.png: cannot decode image"):
        dataset[1]
    assert len(dataset.check(decode_images=True, raise_on_error=False).problems) == 2


def test_exif_orientation_applied_to_image_and_mask(tmp_path: Path) -> None:
    # Stored pixels: left half red / class 1, right half blue / class 2; both files carry orientation 6.
    stored = np.zeros((H, W, 3), dtype=np.uint8)
    stored[:, : W // 2] = (255, 0, 0)
    stored[:, W // 2 :] = (0, 0, 255)
    labels = np.where(np.arange(W) < W // 2, 1, 2)[None].repeat(H, axis=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    root = make_folder(tmp_path, ["bg", "red", "blue"], {"x": labels})
    Image.fromarray(stored).save(root / "images" / "train" / "x.jpg", exif=exif, quality=100)
    write_mask(root / "masks" / "train" / "x.png", labels, exif=exif)

    sample = create_dataset("folder", root=root, split="train")[0]
    assert sample["image"].shape == (3, W, H) and sample["mask"].shape == (W, H)  # rotated
    expected = np.array(ImageOps.exif_transpose(Image.open(root / "images" / "train" / "x.jpg")))
    assert torch.allclose(sample["image"], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    red = sample["image"][0] > 0.5
    assert torch.equal(sample["mask"] == 1, red) and torch.equal(sample["mask"] == 2, ~red)

    # Mask without the tag, drawn on the stored pixels: the message explains the EXIF rotation.
    write_mask(root / "masks" / "train" / "x.png", labels)
    with pytest.raises(DatasetError, match=r"x\.png: .*EXIF orientation 6"):
        create_dataset("folder", root=root, split="train")[0]


def test_image_modes_convert_to_rgb(tmp_path: Path) -> None:
    ramp16 = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 85).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    image = load_image(tmp_path / "sixteen.png")
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert torch.allclose(image[1], torch.from_numpy(ramp16.astype(np.float32) / 65535.0))
    assert torch.equal(image[0], image[2])

    grey = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert torch.allclose(load_image(tmp_path / "grey.png"), torch.from_numpy(grey / 255.0).float().expand(3, H, W))

    rgba = np.random.default_rng(1).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert torch.allclose(
        load_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3] / 255.0).float().permute(2, 0, 1)
    )

    Image.new("CMYK", (W, H), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    assert torch.allclose(load_image(tmp_path / "cmyk.tif"), torch.ones(3, H, W))

    write_mask(tmp_path / "mask.png", label_grid([0, 3, 255]))
    assert load_mask(tmp_path / "mask.png")[0, :3].tolist() == [0, 3, 255]


def test_custom_subclass_and_transforms_hook(tmp_path: Path) -> None:
    write_image(tmp_path / "i.png")
    write_mask(tmp_path / "m.png", label_grid([0, 1]))
    seen: list[str] = []

    def transforms(sample: dict) -> dict:
        seen.append(sample["path"])
        return {**sample, "mask": sample["mask"] + 0}

    dataset = SegmentationDataset(tmp_path, "all", [(tmp_path / "i.png", tmp_path / "m.png")], ["a", "b"], transforms)
    assert dataset[0]["mask"][0, :2].tolist() == [0, 1] and seen == [str(tmp_path / "i.png")]
    with pytest.raises(DatasetError, match="at most 255 classes"):
        SegmentationDataset(tmp_path, "all", dataset.samples, [str(i) for i in range(256)])
