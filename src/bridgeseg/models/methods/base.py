"""The base of every method: its config, the three paths of mmseg's `EncoderDecoder`, and the method registry.

Every segmentation model has

- `loss(batch)` for training,
- `predict(images, classes)` for inference (eval mode, no grad, whole image or sliding window: the shared loop of
  `bridgeseg.models.prediction`),
- a pure-tensor `forward(images, text_embeddings)` for export and FLOP counting.

Images enter every path as float tensors scaled to [0, 1]; the model normalises them with its backbone's
statistics, so data pipelines and exported models need not know them. Inputs of any size are padded by the
model's one rule (`pad`): the mean colour for images, the ignore label for masks.

A method is a subclass in its own file under `bridgeseg.models.methods`, registered by name with
`@register_method("name")`; `create_model` builds it from that name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bridgeseg.models.backbones import create_backbone
from bridgeseg.models.prediction import pad_to_multiple, segment
from bridgeseg.models.text import TextEncoder, create_text_encoder
from bridgeseg.vocabulary import IGNORE_INDEX, check_vocabulary, validate_class_names

logger = logging.getLogger(__name__)

__all__ = ["LEGACY_OPTIONS", "ModelConfig", "SegmentationModel", "method_class", "method_names", "register_method"]


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild a segmentor; saved in every checkpoint.

    Attributes:
        method: "bridge", "denseclip", "lseg", "fpn", or the classic light heads "lraspp" and "segformer".
        backbone: A timm model name, "efficientnet_lite0" (offline ImageNet weights) or "openclip:<arch>".
        pretrained: False, True (the backbone's pretrained weights) or a path to a local weights file.
        text_encoder: "minilm", "openclip:<arch>:<tag or file>" or "hf:<id or dir>".
        classes: Class names, in label-index order; they are the prompts.
        templates: Prompt templates with "{}"; None uses the text encoder's defaults.
        prompt_context: Learnable context vectors (CoOp) for open_clip text encoders; 0 disables them.
        decoder_channels: Width of the Semantic FPN and of the pixel embeddings; for the light heads, the width of
            LR-ASPP's high branch and of SegFormer's MLP head.
        decoder_stride: Stride of the pixel embeddings and logits: 4 (Semantic FPN's) or 8 (the stride-4 level
            skipped; cheaper on a CPU). `lraspp` ignores it: its logits are at stride 8, as LR-ASPP's.
        fusion_dim: Width D of the bridge fusion module.
        fusion_heads: Attention heads of the fusion module.
        fusion_blocks: Bridge blocks N (ablation: 1, 2, 4).
        bridge: Bridge directions: "both", "v2t", "t2v" or "none" (ablation).
        v2t_kv_proj: Project keys/values on the vision→text side (ablation; Mobile-Former does not).
        cnn_branch: The fusion module's CNN branch (ablation).
        concat_score_map: Concatenate the score map onto the fused features as DenseCLIP does (ablation);
            it fixes the number of classes, so the model becomes closed-set.
        identity_start: Start the fusion module as the identity (layer scales at 1e-4, zero-γ CNN residuals)
            (ablation; False is the module as first built).
        keep_c5: Give the decoder the untouched C5 beside the fused map (concatenated), instead of replacing C5
            with it, so the fusion module can only add to the pretrained path (ablation).
        fusion_levels: 1 fuses C5 only; 2 fuses C4 first and carries its class tokens on to C5, as Mobile-Former
            carries its tokens through the stages (ablation).
        full_projection: Project queries, keys and values on both sides of the bridge (ablation; Mobile-Former
            leaves the pixel side unprojected).
        pixel_projection: A linear 1×1 projection of the pixel embeddings before the cosine classifier of
            `bridge` and `lseg`, as LSeg's head has (ablation; without it the cosine sees post-ReLU features).
            Off by default: in the benchmark's ablation it moved neither method's mIoU, for 4 % more FLOPs.
        aux_weight: Weight of the auxiliary loss on the stride-32 score map (DenseCLIP: 0.4; 0 disables it).
        tau: Temperature of the cosine logits.
        learnable_tau: Learn the temperature.
    """

    method: str = "bridge"
    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = False
    text_encoder: str = "minilm"
    classes: list[str] = dataclasses.field(default_factory=list)
    templates: list[str] | None = None
    prompt_context: int = 0
    decoder_channels: int = 96
    decoder_stride: int = 4
    fusion_dim: int = 256
    fusion_heads: int = 4
    fusion_blocks: int = 2
    bridge: str = "both"
    v2t_kv_proj: bool = False
    cnn_branch: bool = True
    concat_score_map: bool = False
    identity_start: bool = True
    keep_c5: bool = True
    fusion_levels: int = 1
    full_projection: bool = False
    pixel_projection: bool = False
    aux_weight: float = 0.4
    tau: float = 0.07
    learnable_tau: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build a config, rejecting unknown keys with the list of valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown model option(s) {', '.join(unknown)}; valid options: {', '.join(names)}")
        return cls(**values)

    @classmethod
    def from_saved_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild the config of a saved model; options it predates take the values that model was built with."""
        return cls.from_dict({**LEGACY_OPTIONS, **values})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)


# Options added after models were first saved, with the value every model saved before them was built with.
LEGACY_OPTIONS: dict[str, Any] = {
    "identity_start": False,
    "keep_c5": False,
    "fusion_levels": 1,
    "full_projection": False,
    "pixel_projection": False,
}


def _keep_frozen_weights_out_of_checkpoints(module: nn.Module) -> None:
    """Leave a frozen module's weights out of state dicts, and keep the current ones when loading.

    The frozen text tower is rebuilt from its encoder id, so saving it would only add its size (90 MB for
    MiniLM) to every checkpoint. Learnable prompt context vectors are kept.
    """

    def frozen_names() -> list[str]:
        names = [name for name, p in module.named_parameters() if not p.requires_grad]
        for prefix, sub in module.named_modules():
            persistent = [n for n in sub._buffers if n not in sub._non_persistent_buffers_set]
            names += [f"{prefix}.{n}" if prefix else n for n in persistent]
        return names

    def drop(mod: nn.Module, state_dict: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
        for name in frozen_names():
            state_dict.pop(prefix + name, None)

    def fill(mod: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        current = dict(module.named_parameters()) | dict(module.named_buffers())
        for name in frozen_names():
            state_dict.setdefault(prefix + name, current[name])

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_pre_hook(fill)


class SegmentationModel(nn.Module):
    """Base class of the methods: backbone, text side, normalisation, padding, loss and inference.

    Subclasses build their parts in `_build` and compute logits at `logits_stride` (4 or 8) in `_forward`.

    Args:
        config: The model config.
        class_embeddings: Precomputed text embeddings [K, Dt] of `config.classes` (from a checkpoint); when
            given, the text encoder is loaded only if a new class list is asked for.
    """

    method: ClassVar[str]
    uses_text: ClassVar[bool] = True
    output_stride: ClassVar[int] = 32

    def __init__(self, config: ModelConfig, class_embeddings: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.classes = validate_class_names(config.classes)
        self.backbone = create_backbone(config.backbone, pretrained=config.pretrained)
        self.register_buffer("pixel_mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        self.text_encoder: TextEncoder | None = None
        self._prompted_cache: tuple[tuple[tuple[int, int], ...], Tensor] | None = None
        if self.uses_text:
            if class_embeddings is None or config.prompt_context:
                self._load_text_encoder()
                with torch.no_grad():
                    class_embeddings = self.text_encoder.encode(self.classes, config.templates)
            if class_embeddings.shape[0] != len(self.classes):
                raise ValueError(
                    f"{class_embeddings.shape[0]} class embeddings for {len(self.classes)} classes; they must match"
                )
            self.register_buffer("class_embeddings", class_embeddings.detach().clone().float())
            self.text_dim = class_embeddings.shape[1]
        self._build()

    # -- construction -----------------------------------------------------------------------------------------

    def _build(self) -> None:
        raise NotImplementedError

    def _load_text_encoder(self) -> TextEncoder:
        if self.text_encoder is None:
            encoder = create_text_encoder(
                self.config.text_encoder, templates=self.config.templates, prompt_context=self.config.prompt_context
            )
            _keep_frozen_weights_out_of_checkpoints(encoder)
            device = self.pixel_mean.device
            self.text_encoder = encoder.to(device)
        return self.text_encoder

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def logits_stride(self) -> int:
        """Stride of `coarse_logits` with respect to the input: the decoder's, unless the method fixes its own."""
        return self.config.decoder_stride

    @property
    def open_vocabulary(self) -> bool:
        """Whether `predict` accepts a class list other than the training one."""
        return False

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        """The weights that hold one slice per class: state-dict name → (dimension, index of class 0 along it).

        Closed-set parts (a 1×1 conv classifier, a layer that takes the class score map as input channels) are
        sized by the class count. Fine-tuning onto another vocabulary (`bridgeseg.models.transfer`) copies the
        slices of the classes whose names match and leaves the other classes' slices as a fresh model initialises
        them. A method with such a layer must list it here; `tests/models/test_methods.py` checks every registered
        method against the shapes its weights take at two class counts.
        """
        return {}

    # -- text side --------------------------------------------------------------------------------------------

    def text_embeddings(self, classes: Sequence[str] | None = None) -> Tensor | None:
        """Text embeddings [K, Dt] for `classes` (default: the model's classes); None for text-free models.

        Raises:
            ValueError: A closed-set model is asked for classes other than its own.
        """
        if classes is not None:
            classes = check_vocabulary(classes, self.classes, self.open_vocabulary, f"'{self.method}'")
            if classes == self.classes:
                classes = None
        if not self.uses_text:
            return None
        if classes is None:
            if self.config.prompt_context:
                return self._prompted_class_embeddings()
            return self.class_embeddings
        encoder = self._load_text_encoder()
        with torch.no_grad():
            return encoder.encode(classes, self.config.templates).to(self.class_embeddings)

    def _prompted_class_embeddings(self) -> Tensor:
        """The model's classes embedded through the learned prompt context.

        Without gradients (predict, validation) the result is kept until the context changes: its tensors' version
        counters move with every optimiser step or `load_state_dict`, and their storage with every device move.
        """
        if torch.is_grad_enabled():
            return self.text_encoder.encode(self.classes)
        key = tuple((p.data_ptr(), p._version) for p in self.text_encoder.parameters() if p.requires_grad)
        cached = self._prompted_cache
        if cached is None or cached[0] != key:
            cached = (key, self.text_encoder.encode(self.classes))
            self._prompted_cache = cached
        return cached[1]

    def _check_text_embeddings(self, text_embeddings: Tensor | None) -> None:
        if not self.uses_text:
            return
        if text_embeddings is None or text_embeddings.dim() != 2 or text_embeddings.shape[-1] != self.text_dim:
            shape = None if text_embeddings is None else tuple(text_embeddings.shape)
            raise ValueError(f"text_embeddings must have shape [K, {self.text_dim}], got {shape}")
        if not self.open_vocabulary and text_embeddings.shape[-2] != self.num_classes:
            raise ValueError(
                f"'{self.method}' is closed-set with {self.num_classes} classes; got {text_embeddings.shape[-2]} "
                "text embeddings"
            )

    # -- the three paths --------------------------------------------------------------------------------------

    def normalize(self, images: Tensor) -> Tensor:
        """Normalise images scaled to [0, 1] with the backbone's mean and std."""
        return (images - self.pixel_mean) / self.pixel_std

    def pad(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The padding rule: bottom and right up to a multiple of the output stride.

        Images (in [0, 1]) get the mean colour, which is 0 after normalisation; masks get `IGNORE_INDEX`, so the
        padding adds compute but no loss. A size that is not a multiple of 32 would otherwise reach the stride-32
        features as a fractional grid whose upsampling no longer lines up with the finer levels.

        Args:
            images: [B, 3, H, W] scaled to [0, 1].
            masks: [B, H, W] labels, or None.

        Returns:
            The padded images and masks (the inputs themselves when no padding is needed).
        """
        images = pad_to_multiple(images, self.output_stride, self.pixel_mean.to(images))
        if masks is not None:
            masks = pad_to_multiple(masks, self.output_stride, IGNORE_INDEX)
        return images, masks

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        """Normalised images → {"logits": [B, K, H/s, W/s], "aux": stride-32 score map [B, K, h, w] or None}.

        s is `logits_stride` (4 or 8).
        """
        raise NotImplementedError

    # -- what the prediction loop needs of a backend (`bridgeseg.models.prediction.LogitsBackend`) -------------

    @property
    def size_multiple(self) -> int:
        """Image sides the network takes are multiples of this: its output stride."""
        return self.output_stride

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def logits(self, images: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        """The forward's logits at the input size, [B, K, H, W] (for the prediction loop)."""
        return self(images, text_embeddings)

    def forward(self, images: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        """Pure-tensor path for export and FLOP counting.

        Args:
            images: [B, 3, H, W] scaled to [0, 1].
            text_embeddings: [K, Dt]; default: the model's class embeddings.

        Returns:
            Logits [B, K, H, W].
        """
        logits = self.coarse_logits(images, text_embeddings)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def coarse_logits(self, images: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        """The logits at the network's own resolution: `forward` without the final bilinear upsampling.

        Args:
            images: [B, 3, H, W] scaled to [0, 1].
            text_embeddings: [K, Dt]; default: the model's class embeddings.

        Returns:
            Logits [B, K, H/s, W/s] with s = `logits_stride`, which `forward` upsamples to [B, K, H, W].
        """
        if text_embeddings is None:
            text_embeddings = self.text_embeddings()
        self._check_text_embeddings(text_embeddings)
        return self._forward(self.normalize(images), text_embeddings)["logits"]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training losses for a batch {"image": [B, 3, H, W] in [0, 1], "mask": [B, H, W] (255 = ignore)}.

        Crops of any size are padded by the model's rule (`pad`), as `predict` pads.

        Returns:
            {"loss": total, "loss_seg": ..., and "loss_aux" when the auxiliary loss is on}.

        Raises:
            ValueError: The masks hold labels outside 0..K-1 other than 255.
        """
        images, masks = self.pad(batch["image"], batch["mask"].long())
        labelled = masks[masks != IGNORE_INDEX]
        if labelled.numel() and (labelled.min() < 0 or labelled.max() >= self.num_classes):
            bad = sorted({int(v) for v in labelled.unique() if v < 0 or v >= self.num_classes})[:10]
            raise ValueError(
                f"mask labels {bad} are outside 0..{self.num_classes - 1} (255 = ignore); "
                "fix the masks or the class list"
            )
        outputs = self._forward(self.normalize(images), self.text_embeddings())
        losses = {"loss_seg": _cross_entropy(outputs["logits"], masks)}
        if outputs.get("aux") is not None and self.config.aux_weight > 0:
            losses["loss_aux"] = self.config.aux_weight * _cross_entropy(outputs["aux"], masks)
        losses["loss"] = sum(losses.values())
        return losses

    @torch.inference_mode()
    def predict(
        self, images: Tensor, classes: Sequence[str] | None = None, **options: Any
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Segment images, optionally with another class list (open-vocabulary models only).

        Runs the shared loop, `bridgeseg.models.prediction.segment`, in eval mode: inputs of any size are padded by
        the model's rule and the result is cropped back.

        Args:
            images: [B, 3, H, W] or [3, H, W], scaled to [0, 1].
            classes: Class names; default: the model's classes.
            **options: Those of `segment`: `mode` ("whole" or "slide"), `crop_size`, `stride`, `flip`, `scales`,
                `output_size`, `return_probs`.

        Returns:
            Label map [B, H, W] (int64), and probabilities [B, K, H, W] when `return_probs`; the probabilities
            are averaged over the augmented views.

        Example:
            >>> labels = model.predict(images, classes=["dog", "road"], mode="slide", flip=True)  # doctest: +SKIP
        """
        was_training = self.training
        self.eval()
        try:
            return segment(self, images, self.text_embeddings(classes), **options)
        finally:
            self.train(was_training)


def _cross_entropy(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy in fp32 at the mask's resolution; a batch with no labelled pixel gives 0, not NaN."""
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (masks != IGNORE_INDEX).sum().clamp(min=1)


_METHODS: dict[str, type[SegmentationModel]] = {}

ModelClass = TypeVar("ModelClass", bound=type[SegmentationModel])


def register_method(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator adding a method to `create_model` under `name` (its `method` attribute).

    The class is built as `cls(config, class_embeddings=...)`.

    Raises:
        ValueError: `name` is already registered to another class.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"Method name {name!r} is already registered to {_METHODS[name].__name__}")
        _METHODS[name] = cls
        cls.method = name
        return cls

    return decorator


def method_names() -> list[str]:
    """The registered method names, in the order they were registered."""
    return list(_METHODS)


def method_class(name: str) -> type[SegmentationModel]:
    """The class registered under `name`.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[name]
