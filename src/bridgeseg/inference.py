"""Inference: self-contained checkpoints, a `Segmenter` for any image, and `bridgeseg predict`.

A checkpoint is a folder that is enough to predict, with nothing to unpickle::

    model_dir/
      config.json         # format version, bridgeseg version, model config (classes, templates, text encoder,
                          # ...), prompt names, normalisation mean/std
      model.safetensors   # weights, the class embeddings included; the frozen text tower is left out

It is the layout of the Hugging Face Hub mixins, so `Segmenter.save_pretrained`, `Segmenter.from_pretrained`
and `Segmenter.push_to_hub` read and write it too. Training checkpoints (Lightning `.ckpt`) load directly
with `torch.load(..., weights_only=True)`, which refuses any pickle that would run code.

Example:
    >>> segmenter = Segmenter.from_checkpoint("outputs/demo/model")  # doctest: +SKIP
    >>> prediction = segmenter.predict("street.jpg", classes=["sky", "road", "car"])  # doctest: +SKIP
    >>> prediction.labels.shape, prediction.areas()  # doctest: +SKIP
    ((480, 640), {'road': 0.52, 'sky': 0.31, 'car': 0.17})
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import pickle
import re
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin
from PIL import Image
from torch import Tensor

from bridgeseg.data.datasets import IMAGE_EXTENSIONS, DatasetError, load_image
from bridgeseg.io import write_atomically
from bridgeseg.models import ModelConfig, Segmentor, create_model, validate_class_names

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "Prediction",
    "Segmenter",
    "convert_checkpoint",
    "image_to_tensor",
    "load_segmentor",
    "predict_command",
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
_PREDICT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".webp")
_MAX_STEM_LENGTH = 100

ImageInput = str | os.PathLike | Image.Image | np.ndarray | Tensor


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe, or not one bridgeseg can rebuild."""


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------------


def save_checkpoint(model: Segmentor | Segmenter, directory: str | os.PathLike[str]) -> Path:
    """Write a checkpoint folder that is enough to predict: `config.json` and `model.safetensors`.

    Each file is written atomically (an interrupted save never leaves a half-written file), weights first.

    Args:
        model: The segmentor (or a `Segmenter` wrapping one).
        directory: Destination folder, created if needed; existing checkpoint files are replaced.

    Returns:
        The folder.
    """
    import safetensors.torch

    segmentor = model.model if isinstance(model, Segmenter) else model
    directory = Path(directory)
    config = _checkpoint_config(segmentor)
    # Copies: safetensors refuses tensors that share memory, and the file must not depend on the device.
    tensors = {
        name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in segmentor.state_dict().items()
    }
    payload = safetensors.torch.save(tensors, metadata={"format": "pt", _METADATA_KEY: json.dumps(config)})
    write_atomically(directory / WEIGHTS_NAME, lambda file: file.write(payload))
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    write_atomically(directory / CONFIG_NAME, lambda file: file.write(text.encode("utf-8")))
    logger.info("saved %s checkpoint (%d classes) to %s", segmentor.method, segmentor.num_classes, directory)
    return directory


def _checkpoint_config(model: Segmentor) -> dict[str, Any]:
    from bridgeseg import __version__
    from bridgeseg.models.text import DEFAULT_TEMPLATES

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


def load_segmentor(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", method: str | None = None
) -> Segmentor:
    """Rebuild a segmentor from a checkpoint, without downloading or unpickling anything.

    Args:
        path: A checkpoint folder (`config.json` + `model.safetensors`), a `.safetensors` file written by
            `save_checkpoint`, or a Lightning training checkpoint (`.ckpt`, read with `weights_only=True`).
        device: Where to put the model.
        method: When given, the method the checkpoint must hold ("bridge", "lseg", "denseclip", "fpn").

    Returns:
        The segmentor, in eval mode.

    Raises:
        CheckpointError: The path is missing, corrupt or truncated, holds a pickle that would execute code, is
            not a bridgeseg checkpoint, or holds another method than `method`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; give a model folder, a .safetensors or a .ckpt file")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: not a checkpoint folder (no {WEIGHTS_NAME}){_ckpt_hint(path)}")
        config, state = _read_safetensors(weights)
    elif path.name == CONFIG_NAME:
        return load_segmentor(path.parent, device, method)
    elif path.suffix == ".safetensors":
        config, state = _read_safetensors(path)
    elif path.suffix == ".onnx":
        raise CheckpointError(f"{path}: an ONNX model runs with onnxruntime: use `--runtime onnx` or OnnxSegmenter")
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
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
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
    return config["model"], state


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
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise CheckpointError(f"{path}: corrupt file, not a PyTorch checkpoint ({_first_line(error)})") from error
        culprit = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if culprit:
            raise CheckpointError(
                f"{path}: not a safe checkpoint: it holds Python objects ({culprit.group(1)}) that only a full "
                "unpickle could rebuild, which can execute arbitrary code; bridgeseg refuses to load it"
            ) from error
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        raise CheckpointError(
            f"{path}: not a safe checkpoint: the weights-only loader refused it "
            f"({reason.group(1).strip() if reason else 'unknown content'}); the file is corrupt or holds objects "
            "that would have to be unpickled"
        ) from error
    except Exception as error:  # truncated zip (RuntimeError), empty file (EOFError), garbage (KeyError)...
        if isinstance(error, OSError) and not isinstance(error, EOFError):
            raise CheckpointError(f"{path}: cannot read ({error})") from error
        message = _first_line(error) or type(error).__name__
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({message}); re-copy it or use another checkpoint"
        ) from error
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


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _rebuild(config: dict[str, Any], state: dict[str, Tensor], path: Path, method: str | None) -> Segmentor:
    try:
        # The weights come from the checkpoint: never fetch pretrained ones.
        model_config = ModelConfig.from_saved_dict({**config, "pretrained": False})
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: invalid model config ({error}); was it written by a newer bridgeseg?"
        ) from error
    if method is not None and model_config.method != method:
        raise CheckpointError(f"{path}: holds a '{model_config.method}' model, expected '{method}'")
    try:
        model = create_model(model_config, class_embeddings=state.get("class_embeddings"))
    except Exception as error:  # unknown backbone, missing text tower (learned prompt context), bad shapes...
        raise CheckpointError(
            f"{path}: cannot rebuild the '{model_config.method}' model: {_first_line(error)}"
        ) from error
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{path}: the weights do not fit the model config: {_first_line(error)}") from error
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: the weights do not fit the model config (missing: {_few(result.missing_keys)}; "
            f"unexpected: {_few(result.unexpected_keys)})"
        )
    return model


def _few(names: Sequence[str], limit: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def convert_checkpoint(src: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert any loadable checkpoint (e.g. a Lightning `.ckpt`) into a checkpoint folder.

    Args:
        src: A checkpoint accepted by `load_segmentor`.
        out_dir: The folder to write (`config.json` + `model.safetensors`).

    Returns:
        The folder.

    Raises:
        CheckpointError: `src` cannot be loaded.
    """
    return save_checkpoint(load_segmentor(src), out_dir)


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


def image_to_tensor(image: ImageInput) -> Tensor:
    """Any supported image as float32 RGB [3, H, W] in [0, 1].

    Args:
        image: A file path (EXIF orientation applied); a PIL image (used as it is); a numpy array [H, W],
            [H, W, 3] or [H, W, 4] (alpha dropped) of uint8, uint16 or floats in [0, 1]; or a tensor [3, H, W]
            (or [1, 3, H, W]) of floats in [0, 1] or uint8.

    Returns:
        The image tensor, on the input's device for tensors, else on the CPU.

    Raises:
        DatasetError: A file cannot be read.
        ValueError: An array or tensor has an unsupported shape, dtype or value range.
        TypeError: The input is of another type.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image)
    if isinstance(image, Tensor):
        return _check_tensor(image)
    raise TypeError(f"unsupported image type {type(image).__name__}; give a path, PIL image, numpy array or tensor")


def _pil_to_tensor(image: Image.Image) -> Tensor:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"mode {image.mode!r} image holds values outside 0..65535; convert it to 8 or 16 bit")
        return _array_to_tensor(array.astype(np.uint16))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        # As `load_image`: a float image beyond 1 holds 16-bit values.
        return _array_to_tensor(array / 65535.0 if array.size and array.max() > 1.0 else array)
    return _array_to_tensor(np.asarray(image.convert("RGB")))


def _array_to_tensor(array: np.ndarray) -> Tensor:
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3]
    elif array.ndim != 2:
        raise ValueError(
            f"numpy images must be [H, W], [H, W, 3] or [H, W, 4] (channels last), got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
        _check_unit_range(torch.from_numpy(scaled))
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or floats scaled to [0, 1]")
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(2, 0, 1).expand(3, -1, -1).contiguous()


def _check_tensor(image: Tensor) -> Tensor:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image tensors must be [3, H, W] (or [1, 3, H, W]), got {tuple(image.shape)}")
    if image.shape[-1] == 0 or image.shape[-2] == 0:
        raise ValueError(f"the image is empty (shape {tuple(image.shape)})")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.is_floating_point():
        image = image.float()
        _check_unit_range(image)
    else:
        raise ValueError(f"unsupported tensor dtype {image.dtype}; use floats scaled to [0, 1] or uint8")
    return image.expand(3, -1, -1)


def _check_unit_range(image: Tensor) -> None:
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("the image holds NaN or infinite values")
    # A little slack for resampling overshoot.
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise ValueError(
            f"float images must be scaled to [0, 1], got values in [{low:.3g}, {high:.3g}]; divide 8-bit data by 255"
        )


# ------------------------------------------------------------------------------------------------------------------
# The Python API
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """The segmentation of one image.

    Attributes:
        labels: Class indices [H, W] (int64) at the input's size; index `i` is `classes[i]`.
        classes: The class names used, in index order.
        probs: Per-class probabilities [K, H, W] (float32), when asked for.
    """

    labels: np.ndarray
    classes: list[str]
    probs: np.ndarray | None = None

    def areas(self) -> dict[str, float]:
        """Share of the pixels of each class present, largest first; the shares sum to 1."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        total = max(int(self.labels.size), 1)
        order = np.argsort(-counts, kind="stable")
        return {self.classes[index]: float(counts[index]) / total for index in order if counts[index] > 0}


class Segmenter(
    ModelHubMixin,
    library_name="bridgeseg",
    pipeline_tag="image-segmentation",
    tags=["image-segmentation", "open-vocabulary-segmentation", "bridgeseg"],
):
    """Segment images of any kind with a trained model, with its classes or (open vocabulary) any others.

    Args:
        segmentor: The model, e.g. from `load_segmentor`.

    Example:
        >>> segmenter = Segmenter.from_checkpoint("outputs/demo/model")  # doctest: +SKIP
        >>> segmenter.predict(image, classes=["sky", "road", "car"]).areas()  # doctest: +SKIP
        {'road': 0.52, 'sky': 0.31, 'car': 0.17}
    """

    def __init__(self, segmentor: Segmentor) -> None:
        self.model = segmentor.eval()
        self._text_encoder_error: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Segmenter:
        """Load a checkpoint folder, `.safetensors` or Lightning `.ckpt` (see `load_segmentor`).

        Raises:
            CheckpointError: The checkpoint cannot be loaded safely.
        """
        return cls(load_segmentor(path, device=device))

    @property
    def classes(self) -> list[str]:
        """The model's own class names, in index order."""
        return list(self.model.classes)

    @property
    def open_vocabulary(self) -> bool:
        """Whether `predict` takes class names other than the model's."""
        return self.model.open_vocabulary

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    def predict(
        self,
        image: ImageInput,
        classes: Sequence[str] | None = None,
        mode: str = "whole",
        tta: bool = False,
        crop_size: int = 512,
        stride: int = 341,
        return_probs: bool = False,
    ) -> Prediction:
        """Segment one image.

        Args:
            image: A path, PIL image, numpy array or tensor (see `image_to_tensor`); any size.
            classes: Class names; default: the model's. New names need an open-vocabulary model ("bridge",
                "lseg") and its text encoder, which embeds them once and caches them.
            mode: "whole" (one pass) or "slide" (overlapping `crop_size` windows `stride` apart).
            tta: Also segment the mirrored image and average.
            crop_size: Window side for "slide".
            stride: Window stride for "slide".
            return_probs: Also return the per-class probabilities.

        Returns:
            The prediction, at the input's size.

        Raises:
            ValueError: Bad class list (closed-set model, duplicates, text encoder unavailable) or image.
            DatasetError: An image file cannot be read.
        """
        names = self._check_classes(classes)
        tensor = image_to_tensor(image)
        output = self.model.predict(
            tensor,
            classes=names,
            mode=mode,
            crop_size=crop_size,
            stride=stride,
            flip=tta,
            return_probs=return_probs,
        )
        labels, probs = output if return_probs else (output, None)
        return Prediction(
            labels=labels[0].cpu().numpy(),
            classes=list(names),
            probs=None if probs is None else probs[0].float().cpu().numpy(),
        )

    def _check_classes(self, classes: Sequence[str] | None) -> list[str]:
        """Validate a class list and make sure it can be embedded, with a clear error when it cannot."""
        if classes is None:
            return self.classes
        names = validate_class_names(classes)
        if names == self.model.classes:
            return names
        if not self.open_vocabulary:
            self.model.text_embeddings(names)  # raises: the segmentor explains closed-set refusals itself
            return names
        if self._text_encoder_error is None:
            try:
                # Embeds and caches the names; `predict` then reuses them.
                self.model.text_embeddings(names)
                return names
            except Exception as error:  # the encoder's loaders raise anything from OSError to HTTP errors
                logger.debug("text encoder failed", exc_info=True)
                self._text_encoder_error = _first_line(error) or type(error).__name__
        own = ", ".join(self.model.classes[:8]) + (", ..." if self.model.num_classes > 8 else "")
        raise ValueError(
            f"cannot embed new class names: the text encoder '{self.model.config.text_encoder}' is unavailable "
            f"({self._text_encoder_error}); the model's own classes still work ({own}); make the encoder available "
            "offline (e.g. a local 'hf:<dir>' or 'openclip:<arch>:<file>') to use other names"
        )

    # -- Hugging Face Hub ---------------------------------------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        save_checkpoint(self.model, save_directory)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device = "cpu",
        **hub_options: Any,
    ) -> Segmenter:
        """Load a local checkpoint folder or download one from the Hub (only its two files)."""
        if not Path(model_id).exists():
            from huggingface_hub import snapshot_download

            model_id = snapshot_download(
                repo_id=model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            )
        return cls.from_checkpoint(model_id, device=device)


# ------------------------------------------------------------------------------------------------------------------
# bridgeseg predict
# ------------------------------------------------------------------------------------------------------------------


def predict_command(args: argparse.Namespace) -> int:
    """Run `bridgeseg predict`: masks, overlays and area JSON for every image, one image at a time.

    For each image `<stem>` it writes `<out>/<stem>_mask.png` (class indices; a palette PNG, or 16-bit beyond
    256 classes), `<out>/<stem>_overlay.png` (colours and a legend) and `<out>/<stem>.json` (size and the share
    of each class present). Unreadable images are reported on stderr and skipped.

    Args:
        args: The parsed `predict` arguments (see `bridgeseg.cli`).

    Returns:
        0 when every image was segmented, 1 when some failed.

    Raises:
        CheckpointError: The checkpoint cannot be loaded.
        ValueError: No image was found, or the class list, device or options are invalid.
    """
    from tqdm import tqdm

    classes = _parse_classes(args.classes)
    inputs, problems = _collect_images(args.images)
    if not inputs:
        raise ValueError(f"no images found: {'; '.join(problems)}")
    segmenter = _load_runtime(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for problem in problems:
        tqdm.write(f"error: {problem}", file=sys.stderr)
    written = failed = 0
    stems = _output_stems(inputs)
    for path, stem in tqdm(zip(inputs, stems, strict=True), total=len(inputs), unit="image", disable=None):
        try:
            image = load_image(path)
        except (DatasetError, OSError) as error:
            tqdm.write(f"error: {error if str(path) in str(error) else f'{path}: {error}'}", file=sys.stderr)
            failed += 1
            continue
        try:
            prediction = segmenter.predict(
                image, classes=classes, mode=args.mode, tta=args.tta, crop_size=args.crop_size, stride=args.stride
            )
        except RuntimeError as error:  # e.g. out of memory on a huge image; the next one may fit
            logger.debug("prediction failed", exc_info=True)
            tqdm.write(f"error: {path}: prediction failed ({_first_line(error)})", file=sys.stderr)
            failed += 1
            continue
        # A ValueError (bad class list or options) would fail for every image, so it ends the command.
        _write_outputs(out_dir, stem, path, image, prediction)
        written += 1
        # Free this image's buffers before the next one is decoded: peak memory stays one image's worth.
        del image, prediction
    print(f"wrote results for {written} of {written + failed} images to {out_dir}")
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


def _parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    # A trailing or doubled comma is a typo, not a blank class.
    return validate_class_names([name for name in names if name])


def _load_runtime(args: argparse.Namespace) -> Any:
    runtime = args.runtime
    if runtime == "torch" and str(args.checkpoint).endswith(".onnx"):
        logger.info("%s is an ONNX model: using the onnx runtime", args.checkpoint)
        runtime = "onnx"
    if runtime == "onnx":
        try:
            from bridgeseg.export import OnnxSegmenter
        except ImportError as error:
            raise ValueError(
                f"the onnx runtime is unavailable ({error}); install it with `pip install bridgeseg[onnx]`"
            ) from error
        return OnnxSegmenter(args.checkpoint)
    return Segmenter.from_checkpoint(args.checkpoint, device=_check_device(args.device))


def _check_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine; use --device cpu")
    return parsed


def _collect_images(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files of the arguments (files as given, folders' images, glob matches), each once, in order.

    Returns:
        The files, and one problem line for each argument that gave no image.
    """
    found: dict[Path, Path] = {}
    problems: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            images = [c for c in sorted(path.iterdir()) if c.is_file() and c.suffix.lower() in _PREDICT_EXTENSIONS]
            if not images:
                problems.append(f"{pattern}: no image in this folder ({', '.join(_PREDICT_EXTENSIONS)})")
        elif path.exists():
            images = [path]
        elif glob.has_magic(pattern):
            matches = (Path(match) for match in sorted(glob.glob(pattern)))
            images = [m for m in matches if m.is_file() and m.suffix.lower() in _PREDICT_EXTENSIONS]
            if not images:
                problems.append(f"{pattern}: no image matches this pattern")
        else:
            images = []
            problems.append(f"{pattern}: no such file or folder")
        for image in images:
            found.setdefault(image.resolve(), image)
    return list(found.values()), problems


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """A safe, distinct output name per input: no separators or parent references, suffixes on collisions."""
    used: set[str] = set()
    stems = []
    for path in paths:
        base = _sanitize_stem(path.name)
        stem, number = base, 1
        # Case-insensitive: on macOS and Windows "A" and "a" are the same file.
        while stem.casefold() in used:
            stem = f"{base}_{number}"
            number += 1
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def _sanitize_stem(name: str) -> str:
    stem = Path(name).stem if Path(name).suffix.lower() in _PREDICT_EXTENSIONS else name
    stem = re.sub(r"[^\w.-]+", "_", stem)
    # No hidden files, no "." or "..", nothing that reads as an option.
    stem = stem.strip("._-")[:_MAX_STEM_LENGTH]
    return stem or "image"


def _write_outputs(out_dir: Path, stem: str, path: Path, image: Tensor, prediction: Prediction) -> None:
    from bridgeseg.visualize import overlay, palette

    labels = prediction.labels
    num_classes = len(prediction.classes)
    if num_classes <= 256:
        mask = Image.fromarray(labels.astype(np.uint8))
        mask.putpalette(palette(256).reshape(-1).tolist())
    else:
        mask = Image.fromarray(labels.astype(np.uint16))
    mask_path = out_dir / f"{stem}_mask.png"
    overlay_path = out_dir / f"{stem}_overlay.png"
    json_path = out_dir / f"{stem}.json"
    for target in (mask_path, overlay_path, json_path):
        # The stems are sanitised; this guards the invariant.
        if target.resolve().parent != out_dir.resolve():
            raise ValueError(f"refusing to write {target} outside {out_dir}")
    write_atomically(mask_path, lambda file: mask.save(file, format="PNG"))
    rendered = overlay(image, labels, prediction.classes)
    write_atomically(overlay_path, lambda file: rendered.save(file, format="PNG"))
    summary = {
        "image": str(path),
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "mask": mask_path.name,
        "overlay": overlay_path.name,
        "label_names": list(prediction.classes),
        "classes": prediction.areas(),
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_atomically(json_path, lambda file: file.write(text.encode("utf-8")))
