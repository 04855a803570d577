"""Inference-only transforms of a trained model, and the bf16 choice for CPUs.

`optimize_for_inference` returns a faster copy of an eval-mode `SegmentationModel` for prediction: every
BatchNorm that directly follows a convolution is folded into it (PyTorch's `fuse_conv_bn_eval`), which removes a
full pass over each of those feature maps, and the weights are stored channels last, which oneDNN's CPU
convolutions run faster in (see docs/inference.md for the measurements). The original model is left as it is, so
training, validation and checkpoints never see the copy. The outputs equal the original's up to float rounding
(checked on a sample when the copy is made).

`bf16_is_fast` says whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates
it and a bf16 forward is slower than fp32. `resolve_precision` turns the `precision` option of
`bridgeseg.Predictor` ("fp32", the default; "bf16"; "auto") into an autocast dtype.

Example:
    >>> fast = optimize_for_inference(model.eval())  # doctest: +SKIP
    >>> torch.allclose(fast(images), model(images), atol=1e-4)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from timm.layers import BatchNormAct2d
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bridgeseg.options import PRECISIONS, check_precision

if TYPE_CHECKING:
    from bridgeseg.models.methods.base import SegmentationModel

__all__ = [
    "PRECISIONS",
    "bf16_is_fast",
    "cpuinfo_flags",
    "detect_native_bf16",
    "fold_batch_norms",
    "optimize_for_inference",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

# The CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic: AVX512-BF16 and AMX's bf16 tiles.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Side of the sample image the conv → BatchNorm pairs are found and the copy is checked on (a multiple of 32).
_SAMPLE_SIZE = 64
# Largest difference allowed between the copy's logits and the original's, relative to the logits' range.
_RELATIVE_TOLERANCE = 1e-3


def optimize_for_inference(
    model: SegmentationModel, channels_last: bool = True, sample_size: int = _SAMPLE_SIZE
) -> SegmentationModel:
    """A copy of `model` for fast inference: BatchNorms folded into the convolutions before them, channels last.

    The copy is in eval mode and shares nothing with `model` that it changes (a frozen text encoder, which it
    does not change, is shared rather than copied). Use it for prediction only: it has no BatchNorm left to
    train, and its state dict differs from the model's (save the original).

    Args:
        model: The model; it is not modified.
        channels_last: Store the convolution weights channels last (NHWC): the convolutions then run and return
            their maps in that layout, which on CPUs is faster for them and for reductions over the channels.
        sample_size: Side of the random image the copy is checked on against `model`.

    Returns:
        The optimised copy.

    Raises:
        RuntimeError: The copy's logits differ from the model's on the sample (a layer pattern the folding does
            not understand); use the model as it is.
    """
    memo = {} if model.text_encoder is None else {id(model.text_encoder): model.text_encoder}
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, sample_size, sample_size, generator=generator).to(model.pixel_mean)
    # Ordinary tensors even when called under inference mode (`Predictor` makes the copy at its first forward):
    # the copy's weights must also work outside it.
    with torch.inference_mode(False), torch.no_grad():
        optimized = copy.deepcopy(model, memo).eval()
        text_embeddings = model.text_embeddings()
        folded = fold_batch_norms(optimized, lambda: optimized.coarse_logits(images, text_embeddings))
        if channels_last:
            optimized = optimized.to(memory_format=torch.channels_last)
        _check_same_logits(model, optimized, images, text_embeddings)
    logger.debug("optimised %s for inference: %d BatchNorms folded", model.method, folded)
    return optimized


def fold_batch_norms(module: nn.Module, run: Callable[[], object]) -> int:
    """Fold every eval-mode BatchNorm that takes a convolution's output straight into that convolution, in place.

    The pairs are found by running `module` once (`run`) with hooks, so the order in which the layers are called
    decides, not the order in which they were registered; a layer called more than once is left alone. Each fold
    is PyTorch's `fuse_conv_bn_eval`; the BatchNorm is replaced by what it did after normalising (timm's
    `BatchNormAct2d` applies its activation) or by nothing.

    Args:
        module: A module in eval mode.
        run: Calls `module` once on a sample input.

    Returns:
        The number of BatchNorms folded.
    """
    names = {child: name for name, child in module.named_modules()}
    calls: Counter[nn.Module] = Counter()
    produced: dict[int, tuple[nn.Module, Tensor]] = {}  # id(output) -> (conv, output); the tensor keeps the id
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(conv: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        calls[conv] += 1
        produced[id(output)] = (conv, output)

    def before_norm(norm: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        calls[norm] += 1
        producer = produced.get(id(inputs[0]))
        if producer is not None and producer[1] is inputs[0]:
            pairs.append((producer[0], norm))

    handles = []
    for child in names:
        if isinstance(child, nn.Conv2d):
            handles.append(child.register_forward_hook(after_conv))
        elif _foldable(child):
            handles.append(child.register_forward_pre_hook(before_norm))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    convs = Counter(conv for conv, _ in pairs)
    folded = 0
    for conv, norm in pairs:
        if calls[conv] != 1 or calls[norm] != 1 or convs[conv] != 1:
            continue
        _replace(module, names[conv], fuse_conv_bn_eval(conv, norm))
        _replace(module, names[norm], _after_normalisation(norm))
        folded += 1
    return folded


def _foldable(module: nn.Module) -> bool:
    """A BatchNorm whose eval forward is an affine map with running statistics (then, for timm's, its activation)."""
    if type(module) not in (nn.BatchNorm2d, BatchNormAct2d):
        return False
    return not module.training and module.track_running_stats and module.running_mean is not None


def _after_normalisation(norm: nn.Module) -> nn.Module:
    """What a folded BatchNorm still has to do: timm's `BatchNormAct2d` drops and activates after normalising."""
    if isinstance(norm, BatchNormAct2d):
        rest = [layer for layer in (norm.drop, norm.act) if not isinstance(layer, nn.Identity)]
        if rest:
            return rest[0] if len(rest) == 1 else nn.Sequential(*rest)
    return nn.Identity()


def _replace(root: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attribute, replacement)


def _check_same_logits(
    model: SegmentationModel, optimized: SegmentationModel, images: Tensor, text_embeddings: Tensor | None
) -> None:
    was_training = model.training
    model.eval()
    try:
        expected = model.coarse_logits(images, text_embeddings)
    finally:
        model.train(was_training)
    actual = optimized.coarse_logits(images, text_embeddings)
    scale = float(expected.abs().max().clamp(min=1.0))
    difference = float((actual - expected).abs().max())
    if not difference <= _RELATIVE_TOLERANCE * scale:
        raise RuntimeError(
            f"the inference-optimised copy of '{model.method}' differs from the model by {difference:.3g} "
            f"(logits up to {scale:.3g}); predict with the model as it is"
        )


# -- bf16 -----------------------------------------------------------------------------------------------------


def bf16_is_fast() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that a bf16 forward beats fp32.

    The answer is detected once per process (`detect_native_bf16`); tests pin it, so that no outcome depends on the
    CPU that runs them.
    """
    return detect_native_bf16()


@functools.cache
def detect_native_bf16() -> bool:
    """Ask the CPU whether it computes bfloat16 natively (cached: the CPU does not change while a process runs).

    PyTorch's own CPU capability query is used; without it (older PyTorch), the flags of /proc/cpuinfo.
    Elsewhere (AVX2, AVX512 without BF16, Arm, macOS) oneDNN emulates bf16 and it is slower than fp32.
    """
    queries = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(query) for query in queries):
        return any(bool(query()) for query in queries)
    return bool(cpuinfo_flags() & _BF16_CPU_FLAGS)


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU flags Linux reports; empty where there is no such file."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype of a `precision` option: None for fp32, `torch.bfloat16` for bf16.

    "auto" (asked for; the default is fp32) is bf16 on a CPU that computes it natively (`bf16_is_fast`) and fp32
    everywhere else (GPUs included: choose bf16 there explicitly). An explicit "bf16" on a CPU without native bf16
    works but is slower than fp32, and says so once in the log.

    Raises:
        ValueError: An unknown precision.
    """
    check_precision(precision)
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        return torch.bfloat16 if on_cpu and bf16_is_fast() else None
    if precision == "fp32":
        return None
    if on_cpu and not bf16_is_fast():
        logger.warning(
            "bf16 on this CPU is emulated (no AVX512-BF16 or AMX): it will be slower than fp32; "
            "use --precision fp32 for speed"
        )
    return torch.bfloat16
