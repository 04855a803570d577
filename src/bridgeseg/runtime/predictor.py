"""`Predictor`: segment any image with a trained model, on PyTorch or ONNX Runtime, with any class list.

The two runtimes are backends of the one prediction loop (`bridgeseg.models.prediction.segment`): a
`TorchBackend` around a `SegmentationModel`, or an `OnnxBackend` around an exported `.onnx` file. Images of any
form go through `bridgeseg.images.to_tensor`, class lists through `bridgeseg.vocabulary`.

Example:
    >>> predictor = Predictor.from_checkpoint("outputs/demo/model")  # doctest: +SKIP
    >>> prediction = predictor.predict("street.jpg", classes=["sky", "road", "car"])  # doctest: +SKIP
    >>> prediction.labels.shape, prediction.areas()  # doctest: +SKIP
    ((480, 640), {'road': 0.52, 'sky': 0.31, 'car': 0.17})
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin
from torch import Tensor

from bridgeseg.budget import check_logits_budget
from bridgeseg.checkpoints import CONFIG_NAME, WEIGHTS_NAME, load_model, save_checkpoint
from bridgeseg.errors import DatasetError, ImageError, first_line
from bridgeseg.images import ImageInput, SizeLimits, check_size, image_size, to_tensor
from bridgeseg.models import SegmentationModel
from bridgeseg.models.prediction import segment
from bridgeseg.options import DEFAULT_PRECISION, check_precision
from bridgeseg.runtime.cpu import resolve_precision
from bridgeseg.runtime.pytorch import TorchBackend
from bridgeseg.vocabulary import check_class_count, describe_classes, validate_class_names

__all__ = ["Prediction", "Predictor"]

logger = logging.getLogger(__name__)

_DEFAULT_LIMITS = SizeLimits()


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


class Predictor(
    ModelHubMixin,
    library_name="bridgeseg",
    pipeline_tag="image-segmentation",
    tags=["image-segmentation", "open-vocabulary-segmentation", "bridgeseg"],
):
    """Segment images of any kind with a trained model, with its classes or (open vocabulary) any others.

    Args:
        model: A `SegmentationModel` (run with PyTorch), or a backend such as `bridgeseg.runtime.onnx.OnnxBackend`.
        limits: The largest image the model is asked to process, counted after padding and resizing (area and
            aspect ratio); images over it are refused before they are decoded. None: no limit but PIL's.
        precision: PyTorch runtime: "fp32" (the default, on every CPU), "bf16" (the forward under bf16 autocast;
            float32 logits; some labels change) or "auto": bf16 on a CPU with native bf16 (AVX512-BF16 or AMX,
            `bridgeseg.runtime.cpu.bf16_is_fast`), fp32 elsewhere. An explicit "bf16" where it is emulated
            works, slower, with a warning.
        optimize: PyTorch runtime on a CPU: predict with an inference-optimised copy of the model (BatchNorms
            folded, channels last; `bridgeseg.runtime.cpu.optimize_for_inference`), remade if the model's
            weights change. The model itself is never changed.

    Raises:
        ValueError: An unknown precision, or "bf16" for a backend other than PyTorch's.

    Example:
        >>> predictor = Predictor.from_checkpoint("outputs/demo/model")  # doctest: +SKIP
        >>> predictor.predict(image, classes=["sky", "road", "car"]).areas()  # doctest: +SKIP
        {'road': 0.52, 'sky': 0.31, 'car': 0.17}
    """

    def __init__(
        self,
        model: SegmentationModel | Any,
        limits: SizeLimits | None = _DEFAULT_LIMITS,
        precision: str = DEFAULT_PRECISION,
        optimize: bool = True,
    ) -> None:
        if isinstance(model, SegmentationModel):
            autocast_dtype = resolve_precision(precision, model.pixel_mean.device)
            model = TorchBackend(model.eval(), autocast_dtype=autocast_dtype, optimize=optimize)
        else:
            check_precision(precision, runtime=getattr(model, "runtime", type(model).__name__))
        self.backend = model
        self.limits = limits
        self._text_encoder_error: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        runtime: str | None = None,
        threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> Predictor:
        """Load a checkpoint folder, `.safetensors` or Lightning `.ckpt` (PyTorch), or an exported model: `.onnx`
        (ONNX Runtime, or OpenVINO with `runtime="openvino"`), `.xml` (OpenVINO IR) or `.pte` (ExecuTorch).

        Args:
            path: The checkpoint (see `bridgeseg.load_model`) or exported model.
            device: PyTorch device.
            runtime: "torch", "onnx", "openvino" or "executorch"; default: from the file
                (`bridgeseg.runtime.runtime_for_path`).
            threads: Threads of ONNX Runtime (intra-op), OpenVINO or ExecuTorch (XNNPACK).
            precision: "fp32" (the default), "bf16" or "auto": for PyTorch see `Predictor`; OpenVINO runs bf16
                only when asked ("bf16"), fp32 for "auto" and "fp32"; ONNX Runtime and ExecuTorch run what the file
                holds (fp32 or int8).

        Raises:
            CheckpointError: The checkpoint cannot be loaded safely.
            ImportError: The runtime is not installed (e.g. `pip install 'bridgeseg[onnx]'`).
            ValueError: An unknown runtime or precision, or "bf16" with ONNX Runtime or ExecuTorch.
        """
        from bridgeseg.runtime import RUNTIMES, runtime_for_path

        runtime = runtime or runtime_for_path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        check_precision(precision, runtime)
        if runtime == "openvino":
            from bridgeseg.runtime.openvino import OpenVinoBackend

            backend = OpenVinoBackend(path, precision="bf16" if precision == "bf16" else "fp32", threads=threads)
            return cls(backend)
        if runtime == "executorch":
            from bridgeseg.runtime.executorch import ExecuTorchBackend

            return cls(ExecuTorchBackend(path, threads=threads))
        if runtime == "onnx":
            from bridgeseg.runtime.onnx import OnnxBackend  # onnxruntime is an optional extra

            return cls(OnnxBackend(path, threads=threads), precision=precision)
        return cls(load_model(path, device=device), precision=precision)

    @property
    def model(self) -> SegmentationModel:
        """The PyTorch model (PyTorch runtime only)."""
        if not isinstance(self.backend, TorchBackend):
            raise AttributeError(f"{self.backend!r} runs an exported model and has no PyTorch model")
        return self.backend.model

    @property
    def method(self) -> str:
        return self.backend.method

    @property
    def classes(self) -> list[str]:
        """The model's own class names, in index order."""
        return list(self.backend.classes)

    @property
    def open_vocabulary(self) -> bool:
        """Whether `predict` takes class names other than the model's."""
        return bool(self.backend.open_vocabulary)

    @property
    def runtime(self) -> str:
        """The runtime that computes the logits: "torch", "onnx", ... (the backend's name for itself)."""
        return str(getattr(self.backend, "runtime", type(self.backend).__name__))

    @property
    def precision(self) -> str:
        """The precision the forward runs in: "fp32", "bf16" (PyTorch autocast, OpenVINO's hint) or "int8" (a
        quantised export); each backend says what it runs."""
        return str(getattr(self.backend, "precision", "fp32"))

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def size_multiple(self) -> int:
        """The model pads image sides to multiples of this."""
        return int(self.backend.size_multiple)

    def size_limits(self, scales: Sequence[float] | None = None) -> SizeLimits | None:
        """The limits images are checked against: `limits` with this model's size multiple and resize factor."""
        if self.limits is None:
            return None
        scale = max(1.0, *scales) if scales else 1.0
        return dataclasses.replace(self.limits, size_multiple=self.size_multiple, scale=float(scale))

    def predict(
        self,
        image: ImageInput,
        classes: Sequence[str] | None = None,
        mode: str = "whole",
        tta: bool = False,
        crop_size: int = 512,
        stride: int = 341,
        scales: Sequence[float] | None = None,
        return_probs: bool = False,
    ) -> Prediction:
        """Segment one image.

        Args:
            image: A path, file bytes, PIL image, numpy array or tensor (see `bridgeseg.images.to_tensor`); any size.
            classes: Class names; default: the model's. New names need an open-vocabulary model ("bridge", "lseg",
                or an open-vocabulary ONNX export) and its text encoder, which embeds them once and caches them.
            mode: "whole" (one pass) or "slide" (overlapping `crop_size` windows `stride` apart).
            tta: Also segment the mirrored image and average.
            crop_size: Window side for "slide".
            stride: Window stride for "slide".
            scales: Also segment the image resized by each factor and average.
            return_probs: Also return the per-class probabilities.

        Returns:
            The prediction, at the input's size.

        Raises:
            ValueError: Bad class list (closed-set model, duplicates, over `MAX_CLASSES` names, text encoder
                unavailable), mode, scales (each must be a positive, finite number) or image, or the logits would
                exceed their budget (`bridgeseg.budget`).
            ImageError: The image is too large for `limits` as the model would process it (padded, resized).
            DatasetError: An image file cannot be read, or is too large.
        """
        _check_scales(scales)
        self.check_cost(image, classes, mode, tta, crop_size, scales, return_probs)
        names, text_embeddings = self.embed_classes(classes)
        tensor = to_tensor(image, limits=self.size_limits(scales))
        views = {"flip": tta, "scales": scales}
        windows = {"mode": mode, "crop_size": crop_size, "stride": stride}
        with torch.inference_mode():
            output = segment(self.backend, tensor, text_embeddings, return_probs=return_probs, **views, **windows)
        labels, probs = output if return_probs else (output, None)
        return Prediction(
            labels=labels[0].cpu().numpy(),
            classes=names,
            probs=None if probs is None else probs[0].float().cpu().numpy(),
        )

    def check_cost(
        self,
        image: ImageInput,
        classes: Sequence[str] | None = None,
        mode: str = "whole",
        tta: bool = False,
        crop_size: int = 512,
        scales: Sequence[float] | None = None,
        return_probs: bool = False,
    ) -> None:
        """Refuse a prediction over the logits budget (`bridgeseg.budget`) before a name is embedded or a pixel
        decoded: the class count and the image's size (from its header, for files and bytes) are enough.

        Args:
            image: As for `predict`.
            classes: As for `predict`.
            mode: As for `predict`.
            tta: As for `predict`.
            crop_size: As for `predict`.
            scales: As for `predict`.
            return_probs: As for `predict`.

        Raises:
            ValueError: An invalid class list, over `MAX_CLASSES` names, or over the logits budget; the message says
                what to reduce.
            ImageError: The image is too large for `limits` as the model would process it.
            DatasetError: An image file cannot be read, or is too large for `limits`.
        """
        names = self.classes if classes is None else validate_class_names(classes)
        num_classes = len(names)
        check_class_count(num_classes)
        width, height = image_size(image)
        is_file = isinstance(image, (str, os.PathLike))
        source = str(image) if is_file else "image"
        limits = self.size_limits(scales)
        if limits is not None:  # the model's size limits first: the budget presumes an image the model takes
            check_size(width, height, limits, source, DatasetError if is_file else ImageError)
        check_logits_budget(num_classes, width, height, mode, tta, scales, return_probs, crop_size, source=source)

    def embed_classes(self, classes: Sequence[str] | None) -> tuple[list[str], Tensor | None]:
        """Validate a class list and embed it, with a clear error when the text encoder is unavailable.

        Args:
            classes: Class names; None: the model's own.

        Returns:
            The validated names, and their embeddings [K, Dt] for the backend (None for a text-free model).

        Raises:
            ValueError: A bad class list, new names for a closed-set model, or an unavailable text encoder.
        """
        names = self.classes if classes is None else validate_class_names(classes)
        if names == self.classes:
            return names, self.backend.text_embeddings(None)
        if not self.open_vocabulary:
            self.backend.text_embeddings(names)  # raises: each backend explains its closed-set refusal
        if self._text_encoder_error is None:
            try:
                return names, self.backend.text_embeddings(names)  # embedded once, then cached by the encoder
            except ValueError:
                raise
            except Exception as error:  # the encoder's loaders raise anything from OSError to HTTP errors
                logger.debug("text encoder failed", exc_info=True)
                self._text_encoder_error = first_line(error) or type(error).__name__
        raise ValueError(
            f"cannot embed new class names: the text encoder '{self.backend.text_encoder_name}' is unavailable "
            f"({self._text_encoder_error}); the model's own classes still work ({describe_classes(self.classes, 8)}); "
            "make the encoder available offline (e.g. a local 'hf:<dir>' or 'openclip:<arch>:<file>') to use other "
            "names"
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
    ) -> Predictor:
        """Load a local checkpoint folder or download one from the Hub (only its two files)."""
        if not Path(model_id).exists():
            from huggingface_hub import snapshot_download

            download = {"revision": revision, "cache_dir": cache_dir, "token": token}
            download |= {"force_download": force_download, "local_files_only": local_files_only}
            model_id = snapshot_download(repo_id=model_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **download)
        return cls.from_checkpoint(model_id, device=device)


def _check_scales(scales: Sequence[float] | None) -> None:
    """Refuse resize factors that would give an empty or undefined image, before any work.

    Raises:
        ValueError: A factor is not a positive, finite number.
    """
    for scale in scales or ():
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(
                f"scales must be positive, finite resize factors such as [0.75, 1.0, 1.25]; got {scale!r} in "
                f"{list(scales)}"
            )
