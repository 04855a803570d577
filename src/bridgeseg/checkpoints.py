"""Self-contained checkpoints: save, load (never unpickling code) and convert.

A checkpoint is a folder that is enough to predict, with nothing to unpickle::

    model_dir/
      config.json         # format version, bridgeseg version, model config (classes, templates, text encoder,
                          # ...), prompt names, normalisation mean/std, the weights' SHA-256
      model.safetensors   # weights, the class embeddings included; the frozen text tower is left out

Loading checks the weights against `weights_sha256` (a flipped byte is an error, not a model that predicts one
class) and the config's sizes against the weights' shapes before the model is built (a `fusion_dim` of 10⁶ in a
hand-edited config fails at once instead of allocating gigabytes).

It is the layout of the Hugging Face Hub mixins, so `bridgeseg.Predictor.save_pretrained`, `from_pretrained` and
`push_to_hub` read and write it too. Training checkpoints (Lightning `.ckpt`) load directly with
`torch.load(..., weights_only=True)`, which refuses any pickle that would run code.

Example:
    >>> model = load_model("outputs/demo/model")  # doctest: +SKIP
    >>> save_checkpoint(model, "copy")  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bridgeseg._version import __version__
from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.io import checkpoint_error, write_atomically
from bridgeseg.models import ModelConfig, SegmentationModel, create_model
from bridgeseg.models.text import DEFAULT_TEMPLATES
from bridgeseg.models.weights import load_torch_file, read_safetensors

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "checkpoint_files",
    "convert_checkpoint",
    "load_model",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "bridgeseg"
FORMAT_VERSION = 1
# The safetensors header keeps a copy of config.json: the weights file alone is enough, and a save interrupted
# between the two files is detected (their save ids differ) instead of pairing new weights with an old config.
_METADATA_KEY = "bridgeseg_config"
# In config.json only (the copy in the weights' header cannot hold the hash of the file it is in).
_HASH_KEY = "weights_sha256"


def save_checkpoint(model: SegmentationModel | Any, directory: str | os.PathLike[str]) -> Path:
    """Write a checkpoint folder that is enough to predict: `config.json` and `model.safetensors`.

    Each file is written atomically (an interrupted save never leaves a half-written file), weights first.

    Args:
        model: The model, or a `bridgeseg.Predictor` running one with PyTorch.
        directory: Destination folder, created if needed; existing checkpoint files are replaced.

    Returns:
        The folder.
    """
    import safetensors.torch

    segmentor = model if isinstance(model, SegmentationModel) else model.model
    directory = Path(directory)
    config = _checkpoint_config(segmentor)
    # Copies: safetensors refuses tensors that share memory, and the file must not depend on the device.
    tensors = {
        name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in segmentor.state_dict().items()
    }
    payload = safetensors.torch.save(tensors, metadata={"format": "pt", _METADATA_KEY: json.dumps(config)})
    write_atomically(directory / WEIGHTS_NAME, lambda file: file.write(payload))
    config[_HASH_KEY] = hashlib.sha256(payload).hexdigest()
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    write_atomically(directory / CONFIG_NAME, lambda file: file.write(text.encode("utf-8")))
    logger.info("saved %s checkpoint (%d classes) to %s", segmentor.method, segmentor.num_classes, directory)
    return directory


def _checkpoint_config(model: SegmentationModel) -> dict[str, Any]:
    config = model.config.to_dict()
    text: dict[str, Any] | None = None
    if model.uses_text:
        if model.text_encoder is not None:
            templates = list(model.text_encoder.templates)
        else:
            templates = list(config["templates"] or DEFAULT_TEMPLATES)
        text = {
            "encoder": config["text_encoder"],
            "prompt_names": list(model.classes),
            "templates": templates,
            "prompt_context": config["prompt_context"],
            "embedding_dim": int(model.text_dim),
        }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bridgeseg_version": __version__,
        "save_id": uuid.uuid4().hex,
        "method": model.method,
        "classes": list(model.classes),
        "open_vocabulary": bool(model.open_vocabulary),
        "text": text,
        # For images scaled to [0, 1]; the model applies it itself, other runtimes need it.
        "normalization": {"mean": list(model.backbone.mean), "std": list(model.backbone.std)},
        "model": config,
    }


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", method: str | None = None
) -> SegmentationModel:
    """Rebuild a model from a checkpoint, without downloading or unpickling anything.

    Args:
        path: A checkpoint folder (`config.json` + `model.safetensors`), a `.safetensors` file written by
            `save_checkpoint`, or a Lightning training checkpoint (`.ckpt`, read with `weights_only=True`).
        device: Where to put the model.
        method: When given, the method the checkpoint must hold ("bridge", "lseg", "denseclip", "fpn").

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: The path is missing, corrupt or truncated, holds a pickle that would execute code, is
            not a bridgeseg checkpoint, or holds another method than `method`.
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
        config, state = _read_safetensors(weights)
    elif path.name == CONFIG_NAME:
        return load_model(path.parent, device, method)
    elif path.suffix == ".safetensors":
        config, state = _read_safetensors(path)
    elif path.suffix == ".onnx":
        raise CheckpointError(
            f"{path}: an ONNX model, not a PyTorch checkpoint: `bridgeseg predict`, `bridgeseg serve` and "
            "`Predictor.from_checkpoint` run it as it is; `bridgeseg export` needs the model folder, .safetensors or "
            ".ckpt it was exported from"
        )
    else:
        config, state = _read_training_checkpoint(path)
    model = _rebuild(config, state, path, method)
    return model.to(device).eval()


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
    if _METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[_METADATA_KEY])
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
    if isinstance(config.get(_HASH_KEY), str):  # only config.json holds it; older checkpoints have none
        _check_hash(path, config[_HASH_KEY])
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


def _rebuild(config: dict[str, Any], state: dict[str, Tensor], path: Path, method: str | None) -> SegmentationModel:
    try:
        # The weights come from the checkpoint: never fetch pretrained ones.
        model_config = ModelConfig.from_saved_dict({**config, "pretrained": False})
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: invalid model config ({error}); was it written by a newer bridgeseg?"
        ) from error
    if method is not None and model_config.method != method:
        raise CheckpointError(f"{path}: holds a '{model_config.method}' model, expected '{method}'")
    _check_shapes(model_config, state, path)
    try:
        model = create_model(model_config, class_embeddings=state.get("class_embeddings"))
    except Exception as error:  # unknown backbone, missing text tower (learned prompt context), bad shapes...
        raise CheckpointError(
            f"{path}: cannot rebuild the '{model_config.method}' model: {first_line(error)}"
        ) from error
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches: one line per tensor after a heading
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        listed = "; ".join(details[:5]) + (f"; and {len(details) - 5} more" if len(details) > 5 else "")
        raise CheckpointError(
            f"{path}: the weights do not fit the model config: {listed or first_line(error)}"
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: the weights do not fit the model config (missing: {_few(result.missing_keys)}; "
            f"unexpected: {_few(result.unexpected_keys)})"
        )
    return model


def _check_shapes(model_config: ModelConfig, state: dict[str, Tensor], path: Path) -> None:
    """Compare the config's sizes with the weights' shapes before the model is built.

    The model is laid out on the meta device, which allocates nothing, so a hand-edited size (`fusion_dim`,
    `decoder_channels`, ...) is refused in milliseconds instead of after gigabytes are committed.

    Raises:
        CheckpointError: A tensor of the weights has another shape than the config's model would give it.
    """
    embeddings = state.get("class_embeddings")
    try:
        with torch.device("meta"):
            skeleton = create_model(
                model_config, class_embeddings=None if embeddings is None else embeddings.to("meta")
            ).state_dict()
    except Exception:  # the real build below reports what is wrong with the config
        logger.debug("no meta-device layout for the shape check", exc_info=True)
        return
    mismatched = [
        f"{name} {list(state[name].shape)} in the weights, {list(tensor.shape)} from the config"
        for name, tensor in skeleton.items()
        if name in state and tuple(state[name].shape) != tuple(tensor.shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"{path}: the sizes in the model config do not fit the weights ({len(mismatched)} tensors differ: "
            f"{_few(mismatched, 3)}); was a size such as fusion_dim or decoder_channels edited? restore the config "
            "saved with the weights"
        )


def _few(names: Sequence[str], limit: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """What `load_model(path)` reads: the folder, or the file and the `config.json` beside a `.safetensors`.

    A command that writes next to a checkpoint compares its outputs with these (`bridgeseg.io.refuse_input_as_output`)
    so that it never replaces the checkpoint it reads.
    """
    path = Path(path)
    if path.name == CONFIG_NAME:
        return [path.parent]
    if path.suffix == ".safetensors":
        return [path, path.parent / CONFIG_NAME]
    return [path]


def convert_checkpoint(src: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert any loadable checkpoint (e.g. a Lightning `.ckpt`) into a checkpoint folder.

    Args:
        src: A checkpoint accepted by `load_model`.
        out_dir: The folder to write (`config.json` + `model.safetensors`).

    Returns:
        The folder.

    Raises:
        CheckpointError: `src` cannot be loaded.
    """
    return save_checkpoint(load_model(src), out_dir)
