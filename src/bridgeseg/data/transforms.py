"""Training and evaluation transforms on sample dicts, image and mask together (``torchvision.transforms.v2``).

The training pipeline follows mmseg's ADE20K recipe::

    RandomResize(scale=base_size, ratio_range=scale_range, keep_ratio=True)
    RandomCrop(crop_size, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    pad to crop_size (image 0, mask 255)

Samples are dicts with ``image`` float32 ``[3, H, W]`` in ``[0, 1]`` and ``mask`` int64 ``[H, W]``; inside the
pipeline they are wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so every geometric transform moves both
(bilinear with antialiasing for the image, nearest for the mask), and unwrapped to plain tensors at the end. All
randomness comes from torch's global generator, so ``torch.manual_seed`` (and the DataLoader's per-worker seeding)
makes the pipeline reproducible.

Example:
    >>> transforms = build_train_transforms(512, base_size=(2048, 512))
    >>> dataset = create_dataset("ade20k", root="data/ade", split="train", transforms=transforms)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bridgeseg.vocabulary import IGNORE_INDEX

__all__ = [
    "CatMaxRandomCrop",
    "PadToSize",
    "PhotoMetricDistortion",
    "RandomScaleResize",
    "ResizeImage",
    "ToPlainTensors",
    "ToTVTensors",
    "build_eval_transforms",
    "build_train_transforms",
]

Sample = dict[str, Any]


def _pair(size: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``int`` → ``(size, size)``; a pair is read as ``(height, width)``."""
    if isinstance(size, int):
        pair = (size, size)
    else:
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {size!r}")
        pair = (int(size[0]), int(size[1]))
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return pair


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _coin(probability: float = 0.5) -> bool:
    return bool(torch.rand(()) < probability)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """``(height, width)`` of the sample's image."""
    for item in flat_inputs:
        if isinstance(item, tv_tensors.Image):
            height, width = F.get_size(item)
            return height, width
    raise TypeError("the sample has no tv_tensors.Image; wrap it with ToTVTensors first")


def _rescaled_size(height: int, width: int, scale: float) -> list[int]:
    # mmcv rounding: int(x * scale + 0.5)
    return [max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))]


class ToTVTensors:
    """Wrap ``image`` as ``tv_tensors.Image`` and ``mask`` as ``tv_tensors.Mask`` so v2 transforms move both."""

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = tv_tensors.Image(sample["image"])
        if sample.get("mask") is not None:
            out["mask"] = tv_tensors.Mask(sample["mask"])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToPlainTensors:
    """Unwrap to plain tensors: ``image`` float32 ``[3, H, W]``, ``mask`` int64 ``[H, W]``."""

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = sample["image"].as_subclass(torch.Tensor).contiguous()
        if sample.get("mask") is not None:
            out["mask"] = sample["mask"].as_subclass(torch.Tensor).long().contiguous()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomScaleResize(v2.Transform):
    """Resize image and mask by a random ratio, keeping the aspect ratio (mmseg ``RandomResize``, keep_ratio).

    The target is ``base_size`` scaled by a ratio drawn uniformly from ``scale_range``:

    - ``base_size=None``: the image's own size times the ratio;
    - ``base_size=int``: short side = ``int(base_size * ratio)``;
    - ``base_size=(a, b)``: the largest size whose long side ≤ ``int(max(a, b) * ratio)`` and short side
      ≤ ``int(min(a, b) * ratio)`` (mmcv ``rescale_size``; mmseg's ADE20K recipe uses ``(2048, 512)``).

    Args:
        base_size: Reference size, see above.
        scale_range: ``(low, high)`` of the random ratio (mmseg's ``ratio_range``).
    """

    def __init__(
        self, base_size: int | tuple[int, int] | None = None, scale_range: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        if base_size is not None and not isinstance(base_size, int):
            base_size = _pair(base_size, "base_size")
        elif isinstance(base_size, int) and base_size <= 0:
            raise ValueError(f"base_size must be positive, got {base_size}")
        self.base_size = base_size
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        ratio = _uniform(*self.scale_range)
        if self.base_size is None:
            scale = ratio
        elif isinstance(self.base_size, int):
            scale = int(self.base_size * ratio) / min(height, width)
        else:
            long_target = int(max(self.base_size) * ratio)
            short_target = int(min(self.base_size) * ratio)
            scale = min(long_target / max(height, width), short_target / min(height, width))
        return {"size": _rescaled_size(height, width, scale)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return F.resize(inpt, params["size"], antialias=True)
        return inpt


class CatMaxRandomCrop(v2.Transform):
    """Random crop, re-drawn up to ``max_attempts`` times while one class covers ``cat_max_ratio`` or more of it.

    mmseg ``RandomCrop(cat_max_ratio=0.75)``: a crop passes when it holds at least two classes and the largest
    covers less than ``cat_max_ratio`` of its labelled (non-ignore) pixels; if no attempt passes, the last one is
    kept. An image smaller than the crop is kept whole (pad it afterwards with :class:`PadToSize`).

    Args:
        size: Crop size, ``int`` or ``(height, width)``.
        cat_max_ratio: Largest share of a single class; ``>= 1`` disables the check.
        ignore_index: Mask label excluded from the class shares.
        max_attempts: Crops drawn at most.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_attempts: int = 10,
    ) -> None:
        super().__init__()
        self.size = _pair(size, "crop size")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.max_attempts = max(1, int(max_attempts))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        mask = next((item for item in flat_inputs if isinstance(item, tv_tensors.Mask)), None)
        attempts = self.max_attempts if mask is not None and self.cat_max_ratio < 1.0 else 1
        for _ in range(attempts):
            top = int(torch.randint(0, height - crop_h + 1, ()))
            left = int(torch.randint(0, width - crop_w + 1, ()))
            if attempts == 1 or self._balanced(mask[..., top : top + crop_h, left : left + crop_w]):
                break
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def _balanced(self, crop: torch.Tensor) -> bool:
        labels = crop[crop != self.ignore_index]
        if labels.numel() == 0:
            return False
        counts = torch.bincount(labels.flatten().long())  # labels are 0..254 here; far cheaper than unique's sort
        counts = counts[counts > 0]
        return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return F.crop(inpt, params["top"], params["left"], params["height"], params["width"])
        return inpt


class PhotoMetricDistortion(v2.Transform):
    """mmseg-like photometric distortion of the image only, each step applied with probability 0.5.

    Brightness adds a delta in ``±brightness_delta / 255``; contrast multiplies by a factor in ``contrast_range``
    (mmseg's contrast is a plain gain), either before or after the colour steps (random order, as mmseg);
    saturation (``adjust_saturation``) by a factor in ``saturation_range``; hue shifts by up to ``hue_delta`` on
    OpenCV's 0–180 hue scale (``18`` = a tenth of the colour wheel). Values are clamped to ``[0, 1]``.

    Args:
        brightness_delta: Largest brightness change, in 8-bit levels.
        contrast_range: Range of the contrast gain.
        saturation_range: Range of the saturation factor.
        hue_delta: Largest hue shift, in OpenCV hue units (0–180).
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Draw in a fixed order so a seed reproduces the same distortion whatever steps end up applied.
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) / 255.0 if _coin() else None
        contrast_first = _coin()
        contrast = _uniform(*self.contrast_range) if _coin() else None
        saturation = _uniform(*self.saturation_range) if _coin() else None
        hue = _uniform(-self.hue_delta, self.hue_delta) / 180.0 if _coin() else None
        return {
            "brightness": brightness,
            "contrast_first": contrast_first,
            "contrast": contrast,
            "saturation": saturation,
            "hue": hue,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = inpt.as_subclass(torch.Tensor)
        if not image.is_floating_point():
            raise TypeError(f"PhotoMetricDistortion expects a float image in [0, 1], got {image.dtype}")
        if params["brightness"] is not None:
            image = (image + params["brightness"]).clamp_(0.0, 1.0)
        if params["contrast"] is not None and params["contrast_first"]:
            image = (image * params["contrast"]).clamp_(0.0, 1.0)
        if params["saturation"] is not None:
            image = F.adjust_saturation(image, params["saturation"]).clamp_(0.0, 1.0)
        if params["hue"] is not None:
            image = F.adjust_hue(image, params["hue"]).clamp_(0.0, 1.0)
        if params["contrast"] is not None and not params["contrast_first"]:
            image = (image * params["contrast"]).clamp_(0.0, 1.0)
        return tv_tensors.wrap(image, like=inpt)


class PadToSize(v2.Transform):
    """Pad bottom and right up to ``size``: image with ``image_fill``, mask with ``mask_fill`` (ignore).

    This is the training augmentation's padding (crops smaller than the crop size, black as the recipe was trained
    with), not the model's padding rule: `SegmentationModel.pad` pads to a multiple of the output stride with the
    mean colour, in `loss` and `predict`.

    Args:
        size: Minimum output size, ``int`` or ``(height, width)``.
        image_fill: Image padding value (0 = black, in ``[0, 1]`` units).
        mask_fill: Mask padding label (255 = ignore, so padding never counts in the loss).
    """

    def __init__(self, size: int | tuple[int, int], image_fill: float = 0.0, mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = _pair(size, "pad size")
        self.image_fill = image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        return {"pad_bottom": max(0, self.size[0] - height), "pad_right": max(0, self.size[1] - width)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["pad_bottom"] == 0 and params["pad_right"] == 0:
            return inpt
        padding = [0, 0, params["pad_right"], params["pad_bottom"]]  # left, top, right, bottom
        if isinstance(inpt, tv_tensors.Mask):
            return F.pad(inpt, padding, fill=self.mask_fill)
        if isinstance(inpt, tv_tensors.Image):
            return F.pad(inpt, padding, fill=self.image_fill)
        return inpt


class ResizeImage(v2.Transform):
    """Resize the image only, keeping the aspect ratio; the mask keeps its original resolution.

    This is mmseg's test-time ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``: evaluation compares
    predictions, resized back to the original size, with the untouched mask.

    Args:
        short_side: Target short side (None: no short-side target).
        max_long_side: Upper bound of the long side (None: unbounded).
    """

    def __init__(self, short_side: int | None = None, max_long_side: int | None = None) -> None:
        super().__init__()
        for name, value in (("short_side", short_side), ("max_long_side", max_long_side)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.short_side = short_side
        self.max_long_side = max_long_side

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        scales = []
        if self.short_side is not None:
            scales.append(self.short_side / min(height, width))
        if self.max_long_side is not None:
            scales.append(self.max_long_side / max(height, width))
        size = _rescaled_size(height, width, min(scales)) if scales else [height, width]
        return {"size": size, "unchanged": size == [height, width]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image) and not params["unchanged"]:
            return F.resize(inpt, params["size"], antialias=True)
        return inpt


def build_train_transforms(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
    base_size: int | tuple[int, int] | None = None,
) -> v2.Compose:
    """The mmseg training pipeline: random resize, category-balanced random crop, flip, photometric, pad.

    Args:
        crop_size: Output size, ``int`` or ``(height, width)``.
        scale_range: Range of the random resize ratio (mmseg ``ratio_range``).
        cat_max_ratio: Largest share one class may take of a crop (re-drawn up to 10 times); ``1`` disables it.
        flip_prob: Probability of a horizontal flip.
        photometric: Apply :class:`PhotoMetricDistortion`.
        ignore_index: Mask label for padding and for pixels excluded from the class shares.
        base_size: Size the ratio scales (see :class:`RandomScaleResize`): None = the image's own size, an int =
            short side, a pair = mmseg's ``scale`` such as ``(2048, 512)``.

    Returns:
        A callable taking and returning a sample dict; ``image`` ``[3, crop_h, crop_w]`` float32, ``mask``
        ``[crop_h, crop_w]`` int64 with padding = ``ignore_index``.
    """
    steps: list[Any] = [
        ToTVTensors(),
        RandomScaleResize(base_size=base_size, scale_range=scale_range),
        CatMaxRandomCrop(crop_size, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
    ]
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [PadToSize(crop_size, image_fill=0.0, mask_fill=ignore_index), ToPlainTensors()]
    return v2.Compose(steps)


def build_eval_transforms(short_side: int | None = None, max_long_side: int | None = None) -> v2.Compose:
    """The evaluation pipeline: resize the image only (aspect kept); the mask stays at its original resolution.

    Args:
        short_side: Target short side of the image (None: keep the size), e.g. 512 for ADE20K.
        max_long_side: Upper bound of the long side (mmseg's ``scale=(2048, 512)`` → ``max_long_side=2048``).

    Returns:
        A callable taking and returning a sample dict.
    """
    return v2.Compose([ToTVTensors(), ResizeImage(short_side, max_long_side), ToPlainTensors()])
