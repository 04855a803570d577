"""Transforms: crop size, padding with ignore, category-balanced crops, joint geometry, determinism."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from bridgeseg.data.transforms import (
    CatMaxRandomCrop,
    PhotoMetricDistortion,
    RandomScaleResize,
    build_eval_transforms,
    build_train_transforms,
)


def labelled_sample(height: int, width: int, num_classes: int = 4, seed: int = 0, block: int = 8) -> dict:
    """Blocky random labels, and an image whose red channel encodes the label (so alignment can be checked)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, num_classes, (height // block + 1, width // block + 1), generator=generator)
    mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width].contiguous()
    image = torch.stack([mask.float() / num_classes, torch.full_like(mask, 1, dtype=torch.float32), mask.float() * 0])
    return {"image": image.float(), "mask": mask.long(), "path": "x.png"}


@pytest.mark.parametrize(("height", "width"), [(48, 80), (20, 24)])
def test_output_size_and_padding(height: int, width: int) -> None:
    torch.manual_seed(0)
    transforms = build_train_transforms(32, scale_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    out = transforms(labelled_sample(height, width))
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.int64
    assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    assert out["path"] == "x.png"
    if height < 32:  # padded bottom / right: mask 255, image 0
        assert (out["mask"][height:] == 255).all() and (out["mask"][:, width:] == 255).all()
        assert (out["image"][:, height:] == 0).all() and (out["image"][:, :, width:] == 0).all()
        assert (out["mask"][:height, :width] != 255).all()
    else:
        assert (out["mask"] != 255).all()


def test_image_and_mask_stay_aligned() -> None:
    torch.manual_seed(1)
    transforms = build_train_transforms((40, 48), scale_range=(0.5, 2.0), photometric=False, flip_prob=0.5)
    for _ in range(8):
        out = transforms(labelled_sample(64, 96, seed=2, block=16))
        valid = out["mask"] != 255
        decoded = (out["image"][0] * 4).round().long()
        assert (decoded[valid] == out["mask"][valid]).float().mean() > 0.85  # only resampled borders may differ
        flipped = out["mask"].flip(-1)  # a mask that moved without its image would agree far less
        valid = flipped != 255
        assert (decoded[valid] == flipped[valid]).float().mean() < 0.7


def test_random_scale_resize_follows_mmseg_rescale() -> None:
    sample = {"image": tv_tensors.Image(torch.rand(3, 100, 200)), "mask": tv_tensors.Mask(torch.zeros(100, 200))}
    out = RandomScaleResize(base_size=(2048, 512), scale_range=(1.0, 1.0))(sample)
    assert out["image"].shape[-2:] == (512, 1024) and out["mask"].shape == (512, 1024)  # min(2048/200, 512/100)
    portrait = {"image": tv_tensors.Image(torch.rand(3, 400, 100))}
    assert RandomScaleResize(base_size=(512, 2048), scale_range=(1.0, 1.0))(portrait)["image"].shape[-2:] == (2048, 512)
    assert RandomScaleResize(base_size=64, scale_range=(0.5, 0.5))(sample)["image"].shape[-2:] == (32, 64)
    assert RandomScaleResize(None, scale_range=(0.5, 0.5))(sample)["image"].shape[-2:] == (50, 100)


def test_cat_max_ratio_respected_when_possible() -> None:
    # Class 1 fills columns 0..19 of a 64x64 mask: about a third of the 32-px crops hold 25-75 % of it.
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[:, :20] = 1
    mask[:8] = 255  # ignore rows do not count in the shares
    sample = {"image": tv_tensors.Image(torch.rand(3, 64, 64)), "mask": tv_tensors.Mask(mask)}

    def balanced_rate(cat_max_ratio: float) -> float:
        torch.manual_seed(0)
        crop = CatMaxRandomCrop(32, cat_max_ratio=cat_max_ratio)
        hits = 0
        for _ in range(60):
            labels = crop(sample)["mask"]
            labels = labels[labels != 255]
            share = float((labels == 1).float().mean())
            hits += 0.25 < share < 0.75
        return hits / 60

    assert balanced_rate(0.75) >= 0.9
    assert balanced_rate(1.0) < 0.6
    single = {"image": tv_tensors.Image(torch.rand(3, 64, 64)), "mask": tv_tensors.Mask(torch.zeros(64, 64))}
    assert CatMaxRandomCrop(32)(single)["mask"].shape == (32, 32)  # impossible: still a crop


def test_deterministic_under_seed() -> None:
    transforms = build_train_transforms(32, base_size=(96, 48))
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(transforms(labelled_sample(60, 90)))
    assert torch.equal(outputs[0]["image"], outputs[1]["image"]) and torch.equal(outputs[0]["mask"], outputs[1]["mask"])
    assert not torch.equal(outputs[0]["image"], outputs[2]["image"])


def test_photometric_changes_image_only() -> None:
    torch.manual_seed(3)
    sample = {"image": tv_tensors.Image(torch.rand(3, 16, 16)), "mask": tv_tensors.Mask(torch.arange(256).view(16, 16))}
    distort = PhotoMetricDistortion()
    changed = 0
    for _ in range(5):
        out = distort(sample)
        assert torch.equal(out["mask"], sample["mask"])
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
        changed += not torch.equal(out["image"], sample["image"])
    assert changed >= 3


def test_eval_transforms_resize_image_only() -> None:
    sample = labelled_sample(40, 100)
    out = build_eval_transforms(short_side=20)(sample)
    assert out["image"].shape == (3, 20, 50) and torch.equal(out["mask"], sample["mask"])
    assert build_eval_transforms(short_side=20, max_long_side=40)(sample)["image"].shape == (3, 16, 40)
    assert torch.equal(build_eval_transforms(None)(sample)["image"], sample["image"])
