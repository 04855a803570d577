"""CLIP's visual ResNet (open_clip `ModifiedResNet`) as a backbone, the one DenseCLIP builds on."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from bridgeseg.models.backbones.base import REDUCTIONS, Backbone, PathLike, pretrained_file
from bridgeseg.models.weights import (
    download_openclip_weights,
    openclip_weights_file,
    parse_openclip_spec,
    read_state_dict,
)

__all__ = ["OpenClipResNetBackbone", "create_openclip_backbone", "openclip_resnet_archs"]

logger = logging.getLogger(__name__)


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


def openclip_resnet_archs() -> list[str]:
    """The open_clip architectures with a ModifiedResNet visual tower (RN50, RN101, RN50x4, ...)."""
    import open_clip

    archs = []
    for arch in open_clip.list_models():
        config = open_clip.get_model_config(arch) or {}
        if isinstance(config.get("vision_cfg", {}).get("layers"), list | tuple):
            archs.append(arch)
    return archs


def create_openclip_backbone(name: str, pretrained: bool | PathLike) -> OpenClipResNetBackbone:
    """Build CLIP's visual ResNet from `openclip:<arch>[:<tag or file>]`, loading only the visual tensors."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIPVisionCfg
    from open_clip.modified_resnet import ModifiedResNet

    arch, source = parse_openclip_spec(name)
    config = open_clip.get_model_config(arch)
    resnet_archs = openclip_resnet_archs()
    if config is None or arch not in resnet_archs:
        raise ValueError(
            f"Unknown open_clip ResNet arch {arch!r} in {name!r}; use one of {', '.join(resnet_archs)} "
            f"(open_clip ViT towers are not supported: they have a single stride)."
        )

    weights_file = pretrained_file(pretrained)
    if source and weights_file is not None and Path(source).expanduser() != weights_file:
        raise ValueError(f"{name!r} names weights {source!r} but pretrained names another file, {str(weights_file)!r}.")
    if not source and weights_file is not None:
        source = str(weights_file)
    elif not source and pretrained is True:
        source = "openai"

    # Resolve (and validate) the weight source before building the 38M-parameter tower.
    mean, std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
    source_file: Path | None = None
    origin = source
    if source:
        source_file = openclip_weights_file(source)
        if source_file is not None:
            origin = str(source_file)
        else:
            # Downloads through open_clip (hub or URL): needs a network, not exercised by the test suite.
            downloaded, tag_cfg = download_openclip_weights(arch, source)
            source_file, origin = Path(downloaded), f"open_clip tag {source!r}"
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
        _load_openclip_visual(tower, read_state_dict(source_file), origin)
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
