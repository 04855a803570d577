"""The PyTorch runtime: a `SegmentationModel` as a backend of the one prediction loop, made fast for inference.

`TorchBackend` runs a model's forward for `bridgeseg.Predictor`, under bf16 autocast when asked
(`bridgeseg.runtime.cpu.resolve_precision`), and on a CPU with an inference-optimised copy of the model.

`optimize_for_inference` returns that faster copy of any eval-mode module with the model's interface: every
BatchNorm that directly follows a convolution is folded into it (PyTorch's `fuse_conv_bn_eval`), which removes a
full pass over each of those feature maps, and the weights are stored channels last, which oneDNN's CPU
convolutions run faster in (see docs/inference.md for the measurements). The original model is left as it is, so
training, validation and checkpoints never see the copy. The outputs equal the original's up to float rounding
(checked on a sample when the copy is made).

Example:
    >>> fast = optimize_for_inference(model.eval())  # doctest: +SKIP
    >>> torch.allclose(fast(images), model(images), atol=1e-4)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from timm.layers import BatchNormAct2d
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bridgeseg.models import SegmentationModel

__all__ = ["TorchBackend", "fold_batch_norms", "optimize_for_inference"]

logger = logging.getLogger(__name__)

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
