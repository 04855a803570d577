"""Reading saved models: the model config and the weights of a checkpoint, checked, without building the model.

One reader for every caller: `bridgeseg.load_model` rebuilds the model from what it returns, and `fit
--model.init_from` (`bridgeseg.models.transfer`) takes the weights that fit another model from it. Three formats
are read, none by unpickling code:

- a checkpoint folder (`config.json` + `model.safetensors`, written by `bridgeseg.checkpoints.save_checkpoint`),
- such a `.safetensors` file alone (its header holds a copy of the config),
- a Lightning training checkpoint (`.ckpt`), read with `torch.load(..., weights_only=True)`.

Example:
    >>> config, state = read_saved_model("outputs/demo/model")  # doctest: +SKIP
    >>> config["method"], len(state)  # doctest: +SKIP
    ('bridge', 412)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from bridgeseg.errors import CheckpointError
from bridgeseg.io import checkpoint_error
from bridgeseg.models.weights import load_torch_file, read_safetensors

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HASH_KEY",
    "METADATA_KEY",
    "WEIGHTS_NAME",
    "read_saved_model",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "bridgeseg"
FORMAT_VERSION = 1
# The safetensors header keeps a copy of config.json: the weights file alone is enough, and a save interrupted
# between the two files is detected (their save ids differ) instead of pairing new weights with an old config.
METADATA_KEY = "bridgeseg_config"
# In config.json only (the copy in the weights' header cannot hold the hash of the file it is in).
HASH_KEY = "weights_sha256"


def read_saved_model(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The model config (as saved, a dict) and the segmentor's weights of a checkpoint.

    Args:
        path: A checkpoint folder, its `config.json`, a `.safetensors` file written by `save_checkpoint`, or a
            Lightning training checkpoint (`.ckpt`).

    Returns:
        The config (`ModelConfig.from_saved_dict` takes it) and the weights, keyed as the segmentor's state dict.

    Raises:
        CheckpointError: The path is missing, corrupt or truncated, holds a pickle that would execute code, or is
            not a bridgeseg checkpoint.
    """
    path = Path(path)
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise checkpoint_error(path, error) from error
        if path.is_symlink():
            raise CheckpointError(
                f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; point it at a checkpoint"
            ) from error
        raise CheckpointError(
            f"{path}: no such checkpoint; give a model folder, a .safetensors or a .ckpt file"
        ) from error
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: not a checkpoint folder (no {WEIGHTS_NAME}){_ckpt_hint(path)}")
        return _read_safetensors(weights)
    if path.name == CONFIG_NAME:
        return read_saved_model(path.parent)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".onnx":
        raise CheckpointError(
            f"{path}: an ONNX model, not a PyTorch checkpoint: `bridgeseg predict`, `bridgeseg serve` and "
            "`Predictor.from_checkpoint` run it as it is; `bridgeseg export` needs the model folder, .safetensors or "
            ".ckpt it was exported from"
        )
    return _read_training_checkpoint(path)


def _ckpt_hint(directory: Path) -> str:
    candidates = sorted(directory.glob("*.ckpt")) + sorted(directory.glob("checkpoints/*.ckpt"))
    if not candidates:
        return ""
    return f"; did you mean {', '.join(str(c) for c in candidates[:3])}?"


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The model config and the weights of a safetensors checkpoint; config.json next to it wins if it matches."""
    try:
        state, metadata = read_safetensors(path)
    except Exception as error:  # safetensors raises its own error type for every kind of damage
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({error}); re-save or re-download it"
        ) from error
    embedded = None
    if METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: the config in the file's header is not valid JSON ({error})") from error
    config_path = path.parent / CONFIG_NAME
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if embedded is None:
                raise CheckpointError(f"{config_path}: not valid JSON ({error}); restore it") from error
            logger.warning("%s is not valid JSON (%s); using the copy saved in %s", config_path, error, path.name)
            config = embedded
        if embedded is not None and config.get("save_id") and config.get("save_id") != embedded.get("save_id"):
            logger.warning(
                "%s and %s come from different saves (was a save interrupted?); using the config saved with the "
                "weights",
                config_path,
                path.name,
            )
            config = embedded
    elif embedded is not None:
        config = embedded
    else:
        raise CheckpointError(
            f"{path}: no {CONFIG_NAME} beside it and no bridgeseg config in the file; not a bridgeseg checkpoint"
        )
    _check_format(config, path)
    if isinstance(config.get(HASH_KEY), str):  # only config.json holds it; older checkpoints have none
        _check_hash(path, config[HASH_KEY])
    return config["model"], state


def _check_hash(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise CheckpointError(
            f"{path}: the weights are damaged: their SHA-256 is not the one recorded in {CONFIG_NAME} when they were "
            "saved (a corrupted copy or disk); re-copy or re-export the checkpoint"
        )


def _check_format(config: Any, path: Path) -> None:
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: not a bridgeseg checkpoint (its config lacks format '{FORMAT_NAME}')")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} was written by bridgeseg {config.get('bridgeseg_version')}; "
            f"this bridgeseg reads format {FORMAT_VERSION}: upgrade bridgeseg"
        )


def _read_training_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The model config and the segmentor's weights of a Lightning checkpoint, read without unpickling code."""
    try:
        checkpoint = load_torch_file(path)
    except Exception as error:  # torch.load raises anything from UnpicklingError to RuntimeError and KeyError
        raise checkpoint_error(path, error) from error
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    net = hyper_parameters.get("net") if isinstance(hyper_parameters, dict) else None
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(net, dict) or not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{path}: not a bridgeseg training checkpoint (no hyper_parameters.net and state_dict); "
            "give a checkpoint written by `bridgeseg fit` or a folder written by `bridgeseg export`"
        )
    state = {name[len("model.") :]: tensor for name, tensor in state_dict.items() if name.startswith("model.")}
    return net, state
