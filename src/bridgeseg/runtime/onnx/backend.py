"""Exported graphs as backends of the one prediction loop: `GraphBackend` (what every runtime's backend shares)
and `OnnxBackend` (ONNX Runtime)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.models.text import create_text_encoder
from bridgeseg.runtime.onnx.metadata import (
    PROBE_KEY,
    decode_metadata,
    ort_session,
    probe_feed,
    probe_means,
    probe_tolerance,
)
from bridgeseg.vocabulary import check_vocabulary, describe_classes

# ----------------------------------------------------------------------------------------------------- runtime


class GraphBackend:
    """What every backend of an exported graph shares (ONNX Runtime, OpenVINO, ExecuTorch).

    A runtime's subclass opens its file, decodes the metadata (`decode_metadata`, from wherever the runtime keeps it),
    calls this `__init__`, implements `_infer`, and calls `_check_probe` before it is used. The rest is here: the
    metadata as attributes, the class list and its embeddings, full-size logits from a coarse graph, and the exact
    fast labels path of the shared loop.

    Attributes:
        classes: The default class names, in index order.
        open_vocabulary: Whether other class lists are accepted.
        metadata: The decoded metadata (see `read_metadata`).
        precision: "int8" for a quantised graph, else "fp32" (a runtime may say otherwise, e.g. OpenVINO's "bf16").
    """

    device = torch.device("cpu")
    export_command = "bridgeseg export --onnx"
    """The command that writes this runtime's files, for the errors' advice."""
    runtime_name = "ONNX"

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata
        self.classes: list[str] = list(metadata["classes"])
        self.open_vocabulary: bool = bool(metadata["open_vocab"])
        self.method: str = metadata["method"]
        self.text_encoder_name: str = metadata["text_encoder"]
        self.size_multiple: int = metadata["size_multiple"]
        self.pixel_mean = torch.tensor(metadata["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.output: str = metadata["output"]
        self.precision: str = "int8" if metadata.get("precision") == "int8" else "fp32"
        if self.output == "coarse_logits":
            # The shared loop's exact fast labels path looks for this method (see `segment`).
            self.coarse_logits = self._coarse_logits
        self._text_encoder: Any = None

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for `feed` ({"images": [B, 3, H, W] (, "text_embeddings": [K, Dt])}), float32."""
        raise NotImplementedError

    def _probe_tolerance(self) -> float:
        return probe_tolerance(self.metadata)

    def _check_probe(self) -> None:
        """Run the graph once on the blank probe image and compare it with the metadata.

        Milliseconds (with the default classes' embeddings for an open vocabulary): copied or edited metadata would
        otherwise label pixels with the wrong names, or fail after some outputs are written. The class count is
        checked, and the mean logits are compared with those recorded at export.

        Raises:
            CheckpointError: The graph and the metadata disagree, or the graph does not run.
        """
        if self.open_vocabulary and "class_embeddings" not in self.metadata:
            return  # nothing to probe the graph with
        feed = probe_feed(self.metadata)
        try:
            probe = self._infer(feed)
        except Exception as error:  # each runtime raises its own error types
            height, width = feed["images"].shape[-2:]
            raise CheckpointError(
                f"{self.path}: the {self.runtime_name} model does not run on a {height}×{width} image "
                f"({first_line(error)[:200]}); re-export it"
            ) from error
        if probe.ndim != 4 or probe.shape[1] != len(self.classes):
            raise CheckpointError(
                f"{self.path}: the graph gives {probe.shape[1] if probe.ndim == 4 else 'no'} classes but its metadata "
                f"names {len(self.classes)} ({describe_classes(self.classes)}); the metadata belongs to another "
                f"model: re-export it with `{self.export_command}`"
            )
        recorded = self.metadata.get(PROBE_KEY)  # older exports have none
        if recorded is not None:
            actual = probe_means(probe)
            tolerance = self._probe_tolerance()
            if recorded.shape != actual.shape or not np.allclose(actual, recorded, rtol=tolerance, atol=tolerance):
                difference = float(np.abs(actual - recorded).max()) if recorded.shape == actual.shape else float("nan")
                raise CheckpointError(
                    f"{self.path}: the graph does not give the logits recorded in its metadata at export (largest "
                    f"difference {difference:.3g}); the metadata was copied from another model: re-export it with "
                    f"`{self.export_command}`"
                )

    def __repr__(self) -> str:
        vocabulary = "open" if self.open_vocabulary else "fixed"
        return (
            f"{type(self).__name__}({str(self.path)!r}, {self.method}, {vocabulary} vocabulary, "
            f"{len(self.classes)} classes)"
        )

    def text_embeddings(self, classes: Sequence[str] | None) -> Tensor | None:
        """The embeddings [K, Dt] to feed (None for a fixed-vocabulary model); default: the model's classes.

        Raises:
            ValueError: New classes for a fixed-vocabulary model, or for one whose prompt context was learned.
        """
        hint = (
            "re-export it with `bridgeseg export --classes ...`, or with --open-vocab from a 'bridge' or 'lseg' "
            "checkpoint"
        )
        names = check_vocabulary(
            classes, self.classes, self.open_vocabulary, f"{self.path.name} (fixed vocabulary)", hint
        )
        if not self.open_vocabulary:
            return None
        if names == self.classes and "class_embeddings" in self.metadata:
            return torch.from_numpy(self.metadata["class_embeddings"])
        if self.metadata["prompt_context"]:
            raise ValueError(
                f"{self.path.name} learned its prompt context, which the {self.runtime_name} file does not hold; "
                "embed the classes with the PyTorch checkpoint, or export the new class list with `bridgeseg export "
                "--classes`"
            )
        if self._text_encoder is None:
            self._text_encoder = create_text_encoder(self.text_encoder_name, templates=self.metadata["templates"])
        with torch.no_grad():
            return self._text_encoder.encode(names, self.metadata["templates"]).float().cpu()

    def _run(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        feed = {"images": np.ascontiguousarray(images.cpu().numpy(), dtype=np.float32)}
        if self.open_vocabulary:
            feed["text_embeddings"] = np.ascontiguousarray(text_embeddings.cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._infer(feed))

    def logits(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        """Logits [B, K, H, W] of images [B, 3, H, W] in [0, 1] whose sides are multiples of `size_multiple`.

        A coarse graph's logits are upsampled here as the PyTorch model's `forward` does (bilinear,
        align_corners=False).
        """
        logits = self._run(images, text_embeddings)
        if self.output == "coarse_logits":
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def _coarse_logits(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        """A coarse graph's output [B, K, H/s, W/s], for the exact fast labels path of `segment`."""
        return self._run(images, text_embeddings)


class OnnxBackend(GraphBackend):
    """An exported model on ONNX Runtime, as a backend of the shared prediction loop and of `bridgeseg.Predictor`.

    Args:
        path: An `.onnx` file written by `export_onnx`.
        providers: ONNX Runtime execution providers; default: CPU.
        threads: Intra-op threads (ONNX Runtime's default when None).

    Attributes:
        classes: The default class names, in index order.
        open_vocabulary: Whether other class lists are accepted.
        metadata: The decoded metadata (see `read_metadata`).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is not a valid ONNX model (truncated, corrupt), has no or damaged bridgeseg
            metadata, or its graph gives another number of classes than its metadata names or other logits than
            were recorded at export (metadata copied from another model); all checked here, at load, before any
            image is segmented.
    """

    runtime = "onnx"

    def __init__(
        self, path: str | os.PathLike[str], providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        path = Path(path)
        if path.is_dir():
            raise FileNotFoundError(
                f"{path} is a folder; the onnx runtime runs one .onnx file: export it with `bridgeseg export "
                f"--checkpoint {path} --onnx model.onnx` and pass model.onnx (the folder runs as it is with PyTorch)"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX model {path} not found; export a checkpoint to it with `bridgeseg export --checkpoint MODEL "
                f"--onnx {path}`"
            )
        try:
            self.session = ort_session(path, threads=threads, providers=providers)
        except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for damage
            raise CheckpointError(
                f"{path}: not a valid ONNX model ({first_line(error)[:200]}); the file is truncated or corrupt: "
                "re-export it with `bridgeseg export --onnx` or re-copy it"
            ) from error
        super().__init__(path, decode_metadata(self.session.get_modelmeta().custom_metadata_map, path))
        self._check_graph()

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feed)[0]

    def _check_graph(self) -> None:
        """The graph must agree with the metadata: its inputs, its class count, and the logits of a blank image.

        Raises:
            CheckpointError: The graph and the metadata disagree, or the graph does not run.
        """
        inputs = {item.name: item.shape for item in self.session.get_inputs()}
        expected = {"images", "text_embeddings"} if self.open_vocabulary else {"images"}
        if set(inputs) != expected or self.output not in {item.name for item in self.session.get_outputs()}:
            raise CheckpointError(
                f"{self.path}: the graph's inputs ({', '.join(inputs)}) do not match its metadata (open_vocab "
                f"{self.open_vocabulary}); it was not written by `bridgeseg export`: re-export it"
            )
        if self.open_vocabulary:
            width = inputs["text_embeddings"][1] if len(inputs["text_embeddings"]) == 2 else None
            if isinstance(width, int) and width != self.metadata["text_dim"]:
                raise CheckpointError(
                    f"{self.path}: the graph takes text embeddings of width {width}, its metadata says "
                    f"{self.metadata['text_dim']}; the metadata belongs to another model: re-export it"
                )
        self._check_probe()
