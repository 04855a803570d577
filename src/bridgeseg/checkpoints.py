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
from bridgeseg.io import write_atomically
from bridgeseg.models import ModelConfig, SegmentationModel, create_model
from bridgeseg.models.saved import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH_KEY,
    METADATA_KEY,
    WEIGHTS_NAME,
    read_saved_model,
)
from bridgeseg.models.text import DEFAULT_TEMPLATES

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
    payload = safetensors.torch.save(tensors, metadata={"format": "pt", METADATA_KEY: json.dumps(config)})
    write_atomically(directory / WEIGHTS_NAME, lambda file: file.write(payload))
    config[HASH_KEY] = hashlib.sha256(payload).hexdigest()
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
    config, state = read_saved_model(path)
    model = _rebuild(config, state, Path(path), method)
    return model.to(device).eval()


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
