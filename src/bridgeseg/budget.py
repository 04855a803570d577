"""The cost bound of a prediction: how many logits the prediction loop holds at once, and the one budget for them.

A prediction's memory is dominated by the per-class maps the loop materialises: float32 `[K, H, W]` logits, the
softmax of each augmented view and their running average. Their size grows with the number of classes K times the
pixels of the output, so one budget, `MAX_LOGIT_VALUES`, bounds the product for the command line, the Python API
(`bridgeseg.Predictor.predict`) and the web app alike, checked from the class count and the image's size before the
text encoder embeds a name or a pixel is decoded.

What the loop holds depends on the mode (`bridgeseg.models.prediction.segment` follows the plan made here):

- labels only, "whole": images above `ONE_PASS_SIDE`² are segmented tile by tile, each tile with `TILE_CONTEXT`
  pixels of context on every side; the tile shrinks as the classes grow, so only the classes and the views count;
- labels only, "slide": the windows' logits are accumulated one row of windows at a time, a band of `crop_size`
  rows by the image's width per view (exactly the result of accumulating the whole map);
- probabilities, or multi-scale views: the whole `[K, H, W]` maps, as the result holds them.

Example:
    >>> plan = plan_logits(171, 512, 512, flip=True)
    >>> plan.values <= MAX_LOGIT_VALUES
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_LOGIT_VALUES",
    "MIN_TILE_SIDE",
    "ONE_PASS_SIDE",
    "TILE_CONTEXT",
    "TILE_SIDE",
    "LogitsPlan",
    "check_logits_budget",
    "plan_logits",
]

MAX_LOGIT_VALUES = 2**28
"""Most float32 values (1 GiB) the per-class maps of one prediction may hold at once. COCO-Stuff's 171 classes at
512 × 512 with flip TTA and probabilities hold 3 × 171 × 512² = 134 M; the 10,000-name list of issue 21 at 512 ×
512 would hold 2.6 G (10.5 GB), and is refused."""
ONE_PASS_SIDE = 1536
"""Images of up to 1536 × 1536 pixels (a 1920 × 1080 frame) are segmented in one pass in "whole" mode, exactly as
without tiling, and likewise "slide" accumulates their whole map; larger ones are tiled (labels only)."""
TILE_SIDE = 1024
"""Side of the tiles of a larger image in "whole" mode, context included: each pass holds the backbone's
activations of one megapixel (about 170 MB per megapixel for EfficientNet-Lite0 on a CPU), so a 25 Mpx photo is
segmented in under 2 GB."""
MIN_TILE_SIDE = 512
"""The smallest tile: below it the context would outweigh the tile, and the class list is refused instead."""
TILE_CONTEXT = 128
"""Pixels of context segmented around each tile and then dropped: a tile's labels then match one pass except where
the backbone's receptive field reaches past the context. A multiple of 32, so tiles keep the stride grid of the
whole image."""

_SIZE_MULTIPLE = 32  # the tile's side keeps the models' largest output stride


@dataclass(frozen=True)
class LogitsPlan:
    """How the prediction loop segments an image, and the float32 values its per-class maps hold at once.

    Attributes:
        values: Logit, softmax and average values held at once (K × pixels × maps).
        tile_side: "whole" mode, labels only: the side of the tiles the image is segmented in (context included);
            0 when the image is segmented in one pass.
        band: "slide" mode, labels only: whether the windows are accumulated one row of windows at a time.
        what: The map that was counted, for the message, e.g. "171 classes × 512×512 pixels × 3 maps".
    """

    values: int
    tile_side: int = 0
    band: bool = False
    what: str = ""


def _maps(views: int, return_probs: bool) -> int:
    # One view, labels only: the logits alone (their arg-max needs no softmax). Otherwise each view's logits, its
    # softmax and the running average of the views are alive together.
    return 1 if views == 1 and not return_probs else 3


def plan_logits(
    num_classes: int,
    width: int,
    height: int,
    mode: str = "whole",
    flip: bool = False,
    scales: Sequence[float] | None = None,
    return_probs: bool = False,
    crop_size: int = 512,
    budget: int = MAX_LOGIT_VALUES,
) -> LogitsPlan:
    """Plan the segmentation of a `width` × `height` image into `num_classes` classes; nothing is allocated.

    Args:
        num_classes: Classes segmented (K).
        width: The image's width, as given to the loop.
        height: Its height.
        mode: "whole" or "slide".
        flip: Flip test-time augmentation.
        scales: Multi-scale test-time augmentation factors (None: the image's own size only).
        return_probs: Whether the probabilities [K, H, W] are returned.
        crop_size: Window side of "slide".
        budget: The budget the tile is fitted in.

    Returns:
        The plan: whether and how the loop tiles the image, and how many values it holds.
    """
    scales = tuple(scales or (1.0,))
    views = (2 if flip else 1) * len(scales)
    maps = _maps(views, return_probs)
    # Tiles and bands hold one view's worth of rows at the image's own size; other scales resize the whole image.
    labels_only = not return_probs and scales == (1.0,)
    large = width * height > ONE_PASS_SIDE * ONE_PASS_SIDE
    if labels_only and mode == "whole":
        fits = math.isqrt(budget // max(num_classes * maps, 1))
        fits -= fits % _SIZE_MULTIPLE
        if width * height > min(ONE_PASS_SIDE, fits) ** 2:
            side = max(min(TILE_SIDE, fits), MIN_TILE_SIDE)
            return LogitsPlan(num_classes * side * side * maps, side, False, _what(num_classes, side, side, maps))
    if labels_only and mode == "slide" and large and height > crop_size:
        # Per view the band being accumulated (two while it moves down), and the softmax of its finished rows.
        band_maps = 2 * views + maps - 1
        values = num_classes * crop_size * width * band_maps
        return LogitsPlan(values, 0, True, _what(num_classes, width, crop_size, band_maps))
    scale = max(*scales, 1.0)
    scaled_width, scaled_height = (max(math.floor(side * scale), 1) for side in (width, height))
    values = num_classes * scaled_width * scaled_height * maps
    return LogitsPlan(values, 0, False, _what(num_classes, scaled_width, scaled_height, maps))


def _what(num_classes: int, width: int, height: int, maps: int) -> str:
    return f"{num_classes} classes × {width}×{height} pixels" + (f" × {maps} maps" if maps > 1 else "")


def check_logits_budget(
    num_classes: int,
    width: int,
    height: int,
    mode: str = "whole",
    flip: bool = False,
    scales: Sequence[float] | None = None,
    return_probs: bool = False,
    crop_size: int = 512,
    budget: int = MAX_LOGIT_VALUES,
    source: str = "image",
) -> LogitsPlan:
    """Refuse a prediction whose per-class maps would exceed `budget` float32 values; nothing is allocated.

    Args:
        num_classes: Classes segmented.
        width: The image's width.
        height: Its height.
        mode: "whole" or "slide".
        flip: Flip test-time augmentation.
        scales: Multi-scale test-time augmentation factors.
        return_probs: Whether the probabilities are returned.
        crop_size: Window side of "slide".
        budget: The most values held at once.
        source: How to name the image in the message.

    Returns:
        The plan, for the loop to follow.

    Raises:
        ValueError: Over the budget; the message says what to reduce.
    """
    plan = plan_logits(num_classes, width, height, mode, flip, scales, return_probs, crop_size, budget)
    if plan.values <= budget:
        return plan
    if plan.tile_side:
        remedy = "give fewer classes" + (" or drop the flip TTA" if flip else "")
    elif plan.band:
        remedy = "give fewer classes, use a narrower image, or use mode whole"
    else:
        remedy = "give fewer classes or downscale the image" + (", or do not ask for probabilities" * return_probs)
        remedy += ", or drop the test-time augmentation" * (flip or len(scales or ()) > 1)
    raise ValueError(
        f"{source}: {num_classes} classes on a {width}×{height} image in {mode} mode would hold {plan.what} = "
        f"{plan.values / 1e6:.0f} M logits, over the budget of {budget / 1e6:.0f} M; {remedy}"
    )
