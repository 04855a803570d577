"""The one prediction loop, the padding rule, and the PyTorch backend.

Every runtime answers one question: "logits for these images and these class embeddings". A backend does only
that (`LogitsBackend`); `segment` does the rest for all of them: padding to the size the network takes, whole or
sliding-window inference (as mmseg), flip and multi-scale test-time augmentation, and the arg-max or the averaged
probabilities. Large images are segmented in bounded memory, as `bridgeseg.budget.plan_logits` plans: "whole" tile
by tile with context around each tile, "slide" one row of windows at a time (exactly as over the whole map).
`SegmentationModel.predict`, `bridgeseg.Predictor` and validation during training run this loop with
`TorchBackend`; the ONNX Runtime backend lives in `bridgeseg.onnx`.

The padding rule (`pad_to_multiple`): images are padded on the bottom and right with the model's mean colour,
which is 0 after normalisation, and masks with `IGNORE_INDEX`, so padding never counts in a loss or a metric.
The model owns it (`SegmentationModel.pad`): `loss` and `predict` both use it.

Example:
    >>> labels = segment(TorchBackend(model), images, model.text_embeddings(["sky", "cat"]))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from bridgeseg.budget import TILE_CONTEXT, plan_logits
from bridgeseg.models.inference import optimize_for_inference

if TYPE_CHECKING:
    from bridgeseg.models.methods.base import SegmentationModel

__all__ = [
    "FULL_UPSAMPLING_ABOVE",
    "MODES",
    "LogitsBackend",
    "TorchBackend",
    "boundary_share",
    "pad_to_multiple",
    "segment",
    "slide_windows",
    "upsampled_argmax",
]

MODES = ("whole", "slide")

FULL_UPSAMPLING_ABOVE = 0.5
"""`upsampled_argmax` upsamples every class when more than this share of the output pixels sit on a boundary of the
coarse arg-max: measured at 150 classes, 128² → 512², one thread, the shortcut cost 0.11× the full path at 6 % of
such pixels, 0.37× at 23 %, 0.78× at 43 %, and 1.2× at 75 %. A trained model's maps have far fewer."""

logger = logging.getLogger(__name__)


class LogitsBackend(Protocol):
    """What a runtime provides to `segment`.

    Attributes:
        size_multiple: Image heights and widths `logits` takes must be multiples of this.
        pixel_mean: The padding colour, [1, 3, 1, 1] in [0, 1] units (the normalisation mean).
        device: Where images are sent.
    """

    size_multiple: int
    pixel_mean: Tensor
    device: torch.device

    def logits(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        """Logits [B, K, H, W] of images [B, 3, H, W] in [0, 1] whose sides are multiples of `size_multiple`.

        `text_embeddings` [K, Dt] are the classes' embeddings (None for text-free or fixed-vocabulary models).
        """
        ...


def pad_to_multiple(tensor: Tensor, multiple: int, fill: float | Tensor) -> Tensor:
    """Pad the bottom and right of `tensor` [..., H, W] up to multiples of `multiple`.

    Args:
        tensor: Images [B, 3, H, W] or masks [B, H, W].
        multiple: The size multiple.
        fill: The padding value: the mean colour [1, 3, 1, 1] for images, `IGNORE_INDEX` for masks. The inside is
            copied as it is (not recomputed), so padding never changes a pixel.

    Returns:
        `tensor` itself when no padding is needed, else the padded copy.
    """
    height, width = tensor.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not (pad_h or pad_w):
        return tensor
    padded = tensor.new_empty((*tensor.shape[:-2], height + pad_h, width + pad_w))
    padded[...] = fill
    padded[..., :height, :width] = tensor
    return padded


def slide_windows(height: int, width: int, crop_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The windows (y1, y2, x1, x2) of mmseg's slide inference; the last row and column end at the border.

    Raises:
        ValueError: `crop_size` or `stride` is not positive.
    """
    if stride <= 0 or crop_size <= 0:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
    rows = max(height - crop_size + stride - 1, 0) // stride + 1
    cols = max(width - crop_size + stride - 1, 0) // stride + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride + crop_size, height), min(col * stride + crop_size, width)
            windows.append((max(y2 - crop_size, 0), y2, max(x2 - crop_size, 0), x2))
    return windows


def _source_pixels(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For bilinear upsampling `in_size` → `out_size` (align_corners=False), each output index's two source indices
    and their weights, computed as PyTorch's CPU kernel does (float32 scale `in / out`, clamped at 0)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    low = source.floor().long().clamp_(max=in_size - 1)
    high = torch.where(low < in_size - 1, low + 1, low)
    weight_high = (source - low).clamp_(0, 1)
    weight_low = 1 - weight_high
    return low.to(device), high.to(device), weight_low.to(device), weight_high.to(device)


def _corner_labels(
    coarse: Tensor, size: tuple[int, int]
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor]:
    """For the coarse arg-max [B, h, w]: the source pixels and weights of each output row and column, the arg-max
    read at each output pixel's first source pixel [B, H, W], and where its four source pixels disagree [B, H, W]."""
    rows = _source_pixels(coarse.shape[-2], size[0], coarse.device)
    cols = _source_pixels(coarse.shape[-1], size[1], coarse.device)
    (y0, y1, _, _), (x0, x1, _, _) = rows, cols
    top, bottom = coarse[:, y0], coarse[:, y1]  # [B, H, w]
    labels = top[:, :, x0]  # [B, H, W]
    disagree = (labels != top[:, :, x1]) | (labels != bottom[:, :, x0]) | (labels != bottom[:, :, x1])
    return rows, cols, labels, disagree


def boundary_share(logits: Tensor, size: tuple[int, int]) -> float:
    """The share of the pixels of `logits` [B, K, h, w] upsampled to `size` whose four bilinear source pixels
    disagree on the arg-max: the pixels `upsampled_argmax` interpolates in full."""
    return float(_corner_labels(logits.argmax(dim=1), size)[3].float().mean())


def upsampled_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)` without upsampling every class.

    A bilinear sample is a convex combination of (up to) four source pixels with the same weights for every class,
    so where class c is the arg-max at all four, c wins the sample too (it wins every term). Only the pixels whose
    source neighbourhood disagrees (region boundaries, typically a few percent) get all K classes interpolated,
    with the kernel's weights in the kernel's order; elsewhere the label is read off the coarse arg-max. For 150
    classes at 512×512 this replaces a [1, 150, 512, 512] interpolation and arg-max by one at 128×128. Where
    boundaries cover more than `FULL_UPSAMPLING_ABOVE` of the output, all classes are upsampled instead (as fast
    there, and exact either way).

    Args:
        logits: [B, K, h, w].
        size: (H, W) of the upsampled map.

    Returns:
        Labels [B, H, W] (int64).
    """
    height, width = logits.shape[-2:]
    # One row of K logits per source pixel (a copy unless the map is channels last): the arg-max over K and each
    # corner's gather below then read contiguous memory; over the strided NCHW layout both took several times as long.
    pixels = logits.permute(0, 2, 3, 1).contiguous()  # [B, h, w, K]
    (y0, y1, wy0, wy1), (x0, x1, wx0, wx1), labels, disagree = _corner_labels(pixels.argmax(dim=-1), size)
    if disagree.float().mean() > FULL_UPSAMPLING_ABOVE:
        # Boundaries nearly everywhere (an untrained model, noise): gathering K logits at four corners per pixel
        # costs more than a pixel of the full upsampling, so the full path is the faster exact answer here.
        # (Contiguous first: PyTorch's CPU kernel for a channels-last map with many channels is far slower.)
        return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False).argmax(dim=1)
    b, i, j = disagree.nonzero(as_tuple=True)
    if b.numel():
        pixels = pixels.view(-1, logits.shape[1])  # [B*h*w, K]
        image_start = b * (height * width)
        row0, row1 = image_start + y0[i] * width, image_start + y1[i] * width
        col0, col1 = x0[j], x1[j]
        col_weight0, col_weight1 = wx0[j, None], wx1[j, None]

        def corner(rows: Tensor, cols: Tensor) -> Tensor:
            return pixels.index_select(0, rows + cols)  # [N, K]

        # As ATen's separable kernel: interpolate along the width within each source row, then across the rows.
        upper = corner(row0, col0) * col_weight0 + corner(row0, col1) * col_weight1
        lower = corner(row1, col0) * col_weight0 + corner(row1, col1) * col_weight1
        labels[b, i, j] = (upper * wy0[i, None] + lower * wy1[i, None]).argmax(dim=1)
    return labels


def _padded_logits(backend: LogitsBackend, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
    """Logits at the input size for images of any size: padded by the rule, cropped back."""
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images, backend.size_multiple, backend.pixel_mean)
    return backend.logits(padded, text_embeddings)[..., :height, :width]


def _slide_logits(
    backend: LogitsBackend, images: Tensor, text_embeddings: Tensor | None, crop_size: int, stride: int
) -> Tensor:
    """mmseg's slide inference: average the logits of overlapping windows."""
    batch, _, height, width = images.shape
    logits: Tensor | None = None  # [B, K, H, W], allocated once K is known
    counts = images.new_zeros((1, 1, height, width))
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        window = _padded_logits(backend, images[..., y1:y2, x1:x2], text_embeddings)
        if logits is None:
            logits = window.new_zeros((batch, window.shape[1], height, width))
        logits[..., y1:y2, x1:x2] += window
        counts[..., y1:y2, x1:x2] += 1
    return logits.div_(counts)


def _tiled_labels(
    backend: LogitsBackend, images: Tensor, text_embeddings: Tensor | None, side: int, flip: bool
) -> Tensor:
    """Labels of "whole" inference for a large image, tile by tile: at most `side` × `side` pixels per pass.

    Each tile is segmented with `TILE_CONTEXT` pixels of the image around it, which are then dropped, so the tiles'
    labels agree with one pass except where the receptive field reaches past the context. Tiles start on multiples
    of the context (a multiple of 32), so every tile keeps the stride grid of the whole image.
    """
    batch, _, height, width = images.shape
    step = side - 2 * TILE_CONTEXT
    labels = torch.empty((batch, height, width), dtype=torch.long, device=images.device)
    for y1 in range(0, height, step):
        for x1 in range(0, width, step):
            y2, x2 = min(y1 + step, height), min(x1 + step, width)
            top, left = max(y1 - TILE_CONTEXT, 0), max(x1 - TILE_CONTEXT, 0)
            bottom, right = min(y2 + TILE_CONTEXT, height), min(x2 + TILE_CONTEXT, width)
            tile = segment(backend, images[..., top:bottom, left:right], text_embeddings, "whole", flip=flip)
            labels[..., y1:y2, x1:x2] = tile[..., y1 - top : y2 - top, x1 - left : x2 - left]
    return labels


def _banded_slide_labels(
    backend: LogitsBackend, images: Tensor, text_embeddings: Tensor | None, crop_size: int, stride: int, flip: bool
) -> Tensor:
    """Labels of "slide" inference holding one row of windows at a time: `crop_size` rows of logits per view.

    The windows are those of `_slide_logits`, summed in the same order, so every pixel gets the same logits, and
    rows are finished (averaged, flipped back, arg-maxed) as soon as no later window covers them. The mirrored
    view's windows are cut from the image and mirrored one by one, so the image is never copied whole.
    """
    batch, _, height, width = images.shape
    mirrors = (False, True) if flip else (False,)
    labels = torch.empty((batch, height, width), dtype=torch.long, device=images.device)
    bands: list[Tensor] = []  # per view [B, K, bottom - top, W]: the rows [top, bottom) being accumulated
    counts = images.new_zeros((1, 1, 0, width))
    top = bottom = done = 0

    def finish(end: int) -> None:
        """Arg-max the rows [done, end), which no later window covers."""
        probs: Tensor | None = None
        for band, mirrored in zip(bands, mirrors, strict=True):
            logits = band[..., done - top : end - top, :] / counts[..., done - top : end - top, :]
            if mirrored:
                logits = logits.flip(-1)
            if not flip:
                labels[..., done:end, :] = logits.argmax(dim=1)
                return
            view_probs = logits.float().softmax(dim=1)
            probs = view_probs if probs is None else probs.add_(view_probs)
        labels[..., done:end, :] = probs.div_(len(mirrors)).argmax(dim=1)

    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        if y1 > done and bands:
            finish(y1)
            done = y1
        if y2 > bottom and bands:  # the next row of windows: move the bands down, keeping the rows they share
            kept = slice(y1 - top, bottom - top)
            bands = [_moved(band, band[..., kept, :], y2 - y1) for band in bands]
            counts = _moved(counts, counts[..., kept, :], y2 - y1)
            top, bottom = y1, y2
        for index, mirrored in enumerate(mirrors):
            # Window x1:x2 of the mirrored image is the mirror of the image's columns width-x2:width-x1.
            cut = images[..., y1:y2, width - x2 : width - x1].flip(-1) if mirrored else images[..., y1:y2, x1:x2]
            window = _padded_logits(backend, cut, text_embeddings)
            if not bands:
                bands = [window.new_zeros((batch, window.shape[1], y2 - y1, width)) for _ in mirrors]
                counts = images.new_zeros((1, 1, y2 - y1, width))
                top, bottom = y1, y2
            bands[index][..., y1 - top : y2 - top, x1:x2] += window
        counts[..., y1 - top : y2 - top, x1:x2] += 1
    finish(height)
    return labels


def _moved(band: Tensor, kept: Tensor, rows: int) -> Tensor:
    """A zeroed band of `rows` rows whose first rows are `kept`."""
    moved = band.new_zeros((*band.shape[:-2], rows, band.shape[-1]))
    moved[..., : kept.shape[-2], :] = kept
    return moved


def segment(
    backend: LogitsBackend,
    images: Tensor,
    text_embeddings: Tensor | None,
    mode: str = "whole",
    crop_size: int = 512,
    stride: int = 341,
    flip: bool = False,
    scales: Sequence[float] | None = None,
    output_size: tuple[int, int] | None = None,
    return_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Segment images with any backend. Call it without gradients (`torch.inference_mode`).

    Args:
        backend: The runtime.
        images: [B, 3, H, W] or [3, H, W], scaled to [0, 1], any size.
        text_embeddings: [K, Dt] for the backend (None for text-free or fixed-vocabulary models).
        mode: "whole" (one pass) or "slide" (overlapping `crop_size` windows, `stride` apart, as mmseg).
        crop_size: Window side for "slide".
        stride: Window stride for "slide".
        flip: Test-time augmentation: also segment the mirrored image.
        scales: Test-time augmentation: resize the input by each factor (e.g. 0.75, 1.0, 1.25).
        output_size: (height, width) of the result; default: the input's.
        return_probs: Also return the per-class probabilities.

    Returns:
        Label map [B, H, W] (int64), and probabilities [B, K, H, W] when `return_probs`; the probabilities are
        averaged over the augmented views.

    Raises:
        ValueError: Images of another shape, or an unknown mode.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W] or [3, H, W], got {tuple(images.shape)}")
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
    output_size = tuple(output_size or images.shape[-2:])
    images = images.to(device=backend.device, dtype=torch.float32)
    if not return_probs and output_size == tuple(images.shape[-2:]):
        num_classes = len(text_embeddings) if text_embeddings is not None else len(getattr(backend, "classes", ()))
        height, width = images.shape[-2:]
        plan = plan_logits(max(num_classes, 1), width, height, mode, flip, scales, crop_size=crop_size)
        if plan.tile_side:
            return _tiled_labels(backend, images, text_embeddings, plan.tile_side, flip)
        if plan.band:
            return _banded_slide_labels(backend, images, text_embeddings, crop_size, stride, flip)
    # One view and no probabilities asked for: softmax keeps the order of the classes, so the labels are the
    # arg-max of the logits; this skips a softmax over [B, K, H, W] (most of the time on a CPU with many classes).
    labels_only = not return_probs and not flip and len(scales or (1.0,)) == 1
    # A backend that can give the logits before their final upsampling gets the exact fast labels path.
    coarse_logits = getattr(backend, "coarse_logits", None)
    probs: Tensor | None = None
    views = 0
    for scale in scales or (1.0,):
        scaled = images
        if scale != 1.0:
            scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            if labels_only and mode == "whole" and output_size == tuple(view.shape[-2:]) and coarse_logits:
                height, width = view.shape[-2:]
                padded = pad_to_multiple(view, backend.size_multiple, backend.pixel_mean)
                logits = coarse_logits(padded, text_embeddings)
                return upsampled_argmax(logits, padded.shape[-2:])[..., :height, :width]
            if mode == "whole":
                logits = _padded_logits(backend, view, text_embeddings)
            else:
                logits = _slide_logits(backend, view, text_embeddings, crop_size, stride)
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != output_size:
                logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
            if labels_only:
                return logits.argmax(dim=1)
            view_probs = logits.float().softmax(dim=1)
            del logits  # before the next view's logits: at most three [B, K, H, W] maps at once (see bridgeseg.budget)
            probs = view_probs if probs is None else probs.add_(view_probs)  # [B, K, H, W]: no copies
            views += 1
    probs = probs.div_(views)
    labels = probs.argmax(dim=1)
    return (labels, probs) if return_probs else labels


class TorchBackend:
    """A `SegmentationModel` as a backend of `segment` (and of `bridgeseg.Predictor`).

    Args:
        model: The model; `segment` does not switch it to eval mode (`SegmentationModel.predict` does).
        autocast_dtype: Run the forward under `torch.autocast` with this dtype (e.g. `torch.bfloat16`); the logits
            come back as float32 either way. None: the model's own precision.
        optimize: On a CPU, run an inference-optimised copy of the model (`optimize_for_inference`: BatchNorms
            folded, channels last) instead of the model itself. The copy is made at the first forward and again
            whenever the model's weights change (an optimiser step, `load_state_dict`, a move), so it never serves
            stale weights; `model` itself is never changed. Off for training and validation.
    """

    runtime = "torch"

    def __init__(
        self, model: SegmentationModel, autocast_dtype: torch.dtype | None = None, optimize: bool = False
    ) -> None:
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.optimize = optimize
        self._optimized: tuple[tuple[tuple[int, int], ...], SegmentationModel] | None = None
        # Fixed when the model is built.
        self.size_multiple, self.method, self.classes = model.output_stride, model.method, list(model.classes)
        self.open_vocabulary, self.text_encoder_name = model.open_vocabulary, model.config.text_encoder

    # The model may move between devices: these follow it.
    pixel_mean = property(lambda self: self.model.pixel_mean)
    device = property(lambda self: self.model.pixel_mean.device)

    @property
    def precision(self) -> str:
        """The precision the forward runs in: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def text_embeddings(self, classes: Sequence[str] | None) -> Tensor | None:
        """The classes' embeddings [K, Dt] (default: the model's); None for a text-free model."""
        return self.model.text_embeddings(classes)

    def logits(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        return self._run(lambda network: network(images, text_embeddings))

    def coarse_logits(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        """Logits before the final bilinear upsampling, [B, K, H/s, W/s]: for the exact fast labels path."""
        return self._run(lambda network: network.coarse_logits(images, text_embeddings))

    def _run(self, forward: Callable[[SegmentationModel], Tensor]) -> Tensor:
        network = self._network()
        if self.autocast_dtype is None:
            return forward(network)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return forward(network).float()

    def _network(self) -> SegmentationModel:
        """The model, or its inference-optimised copy, remade when the model's weights have changed."""
        if not self.optimize or self.device.type != "cpu" or self.model.training:
            return self.model
        weights = [*self.model.parameters(), *self.model.buffers()]
        key = tuple((tensor.data_ptr(), _version(tensor)) for tensor in weights)
        if self._optimized is None or self._optimized[0] != key:
            try:
                self._optimized = (key, optimize_for_inference(self.model))
            except RuntimeError as error:
                logger.warning("running %s without inference optimisations: %s", self.method, error)
                self.optimize = False
                return self.model
        return self._optimized[1]


def _version(tensor: Tensor) -> int:
    """A tensor's in-place change counter; -1 for inference tensors, which keep none (their storage still counts)."""
    return -1 if tensor.is_inference() else tensor._version
