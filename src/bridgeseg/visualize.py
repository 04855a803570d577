"""Colour label maps and draw overlays with a legend.

The palette is generated, not tabulated: colour ``i`` is the same whatever the class count, so a mask PNG's
palette and an overlay agree, and vocabularies of any size get distinct, stable colours.

Example:
    >>> labels = np.array([[0, 1], [1, 2]])
    >>> colorize(labels, num_classes=3).shape
    (2, 2, 3)
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colorize", "overlay", "palette", "rgb_array"]

logger = logging.getLogger(__name__)

# Hue steps by the golden ratio spread any prefix of the sequence around the colour wheel; cycling saturation and
# value separates colours whose hues land close together in long palettes.
_GOLDEN_RATIO = 0.618033988749895
_SATURATIONS = (0.85, 0.55, 1.0)
_VALUES = (0.95, 0.75, 0.55, 0.85)
_UNLABELLED = (0, 0, 0)
_BLOCK_ROWS = 256  # rows converted and blended at a time: a few MB of float32 for any image width
_LEGEND_MAX_ROWS = 20  # more would not fit beside a typical image; the rest are summed into one line


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours for `num_classes` classes.

    Args:
        num_classes: Number of colours; the first `n` colours are the same for every `num_classes >= n`.

    Returns:
        uint8 array [num_classes, 3] of RGB colours.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    return _palette(num_classes).copy()


@lru_cache(maxsize=8)
def _palette(num_classes: int) -> np.ndarray:
    colours = np.empty((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        hue = (index * _GOLDEN_RATIO) % 1.0
        saturation = _SATURATIONS[index % len(_SATURATIONS)]
        value = _VALUES[(index // len(_SATURATIONS)) % len(_VALUES)]
        colours[index] = [round(channel * 255) for channel in colorsys.hsv_to_rgb(hue, saturation, value)]
    return colours


def colorize(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Render a label map in colour.

    Args:
        labels: Integer label map [H, W]; values outside 0..num_classes-1 (e.g. 255 = ignore) are drawn black.
        num_classes: Number of classes.

    Returns:
        uint8 RGB image [H, W, 3].
    """
    labels = _as_label_array(labels)
    colours = np.concatenate([palette(num_classes), np.array([_UNLABELLED], dtype=np.uint8)])
    # Out-of-range labels index the trailing black entry.
    indices = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
    return colours[indices]


def overlay(
    image: Image.Image | np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """Blend a coloured label map onto an image, with a legend of the classes present.

    Args:
        image: PIL image, uint8 array [H, W, 3] (or [H, W]), float array in [0, 1], or float tensor [3, H, W]
            in [0, 1].
        labels: Label map [H, W] of the image's size.
        class_names: Names of the label indices.
        alpha: Opacity of the colours: 0 shows the image only, 1 the colours only.
        legend: Add a panel on the right listing the classes present (swatch, name, share of the pixels),
            largest first.

    Returns:
        An RGB image: the overlay, widened by the legend panel when `legend` is set.

    Raises:
        ValueError: The label map and the image differ in size, or `alpha` is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_array(image)
    labels = _as_label_array(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(
            f"labels have shape {labels.shape} but the image is {rgb.shape[:2]}; predict at the image's size"
        )
    num_classes = len(class_names)
    blended = np.empty_like(rgb)
    # Blended in blocks of rows: the float32 temporaries of a whole 25 Mpx image would take over a gigabyte.
    for top in range(0, rgb.shape[0], _BLOCK_ROWS):
        rows = slice(top, top + _BLOCK_ROWS)
        colours = colorize(labels[rows], num_classes).astype(np.float32)
        valid = ((labels[rows] >= 0) & (labels[rows] < num_classes))[..., None]
        block = np.where(valid, (1.0 - alpha) * rgb[rows].astype(np.float32) + alpha * colours, rgb[rows])
        blended[rows] = block.round().clip(0, 255).astype(np.uint8)
    result = Image.fromarray(blended)
    if legend:
        result = _add_legend(result, labels, class_names)
    return result


def _add_legend(image: Image.Image, labels: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """Append a panel listing the classes present, largest first."""
    num_classes = len(class_names)
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)].ravel(), minlength=num_classes)
    total = max(labels.size, 1)
    present = [int(index) for index in np.argsort(-counts, kind="stable") if counts[index] > 0]
    rows = [(index, f"{class_names[index]}  {100.0 * counts[index] / total:.1f}%") for index in present]
    if len(rows) > _LEGEND_MAX_ROWS:
        rest = rows[_LEGEND_MAX_ROWS - 1 :]
        share = sum(counts[index] for index, _ in rest) / total
        rows = [*rows[: _LEGEND_MAX_ROWS - 1], (None, f"{len(rest)} more  {100.0 * share:.1f}%")]
    if not rows:
        return image

    # Text readable at any image size: about a fortieth of the shorter side, never below 10 px.
    font_size = max(10, min(image.size) // 40)
    font = _font(font_size)
    padding = max(4, font_size // 2)
    swatch = font_size
    row_height = font_size + padding
    measure = ImageDraw.Draw(image)
    text_width = max(int(measure.textlength(text, font=font)) for _, text in rows)
    panel_width = padding * 3 + swatch + text_width
    panel_height = padding * 2 + row_height * len(rows)

    canvas = Image.new("RGB", (image.width + panel_width, max(image.height, panel_height)), (32, 32, 32))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    colours = palette(num_classes)
    x = image.width + padding
    for row, (index, text) in enumerate(rows):
        y = padding + row * row_height
        if index is not None:
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(int(c) for c in colours[index]))
        draw.text((x + swatch + padding, y), text, fill=(240, 240, 240), font=font)
    return canvas


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font: nothing to download or install."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        # Pillow < 10.1 or no FreeType: the fixed-size bitmap font.
        return ImageFont.load_default()


def _as_label_array(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array [H, W], got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64, copy=False)


def rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Any image `overlay` takes as uint8 RGB [H, W, 3]: a quarter of a float32 tensor's memory, converted in blocks
    of rows.

    Raises:
        ValueError: An array or tensor of another shape.
    """
    return _as_rgb_array(image)


def _as_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Any supported image as uint8 [H, W, 3]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image tensors must be [3, H, W] scaled to [0, 1], got {tuple(image.shape)}")
        image = image.detach().cpu().expand(3, -1, -1)
        rgb = np.empty((*image.shape[1:], 3), dtype=np.uint8)
        for top in range(0, image.shape[1], _BLOCK_ROWS):  # in blocks of rows, as `overlay` blends
            array = image[:, top : top + _BLOCK_ROWS].float().permute(1, 2, 0).numpy()
            rgb[top : top + _BLOCK_ROWS] = (array.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
        return rgb
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image arrays must be [H, W], [H, W, 3] or [H, W, 4], got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return (np.nan_to_num(array).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float scaled to [0, 1]")
