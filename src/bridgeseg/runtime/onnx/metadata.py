"""The bridgeseg metadata an exported graph carries (class names, method, text encoder, stride) and the probe
fingerprint that ties the metadata to its graph, for every runtime that runs our exports."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.vocabulary import validate_class_names

OUTPUTS = ("logits", "coarse_logits")
"""The graph's output: full-size logits, or the logits at the decoder's stride (see the module docstring)."""
SIZE_MULTIPLE = 32
"""ONNX inputs must have heights and widths divisible by this (the backbones' output stride)."""

PROBE_KEY = "probe_logits"
"""The metadata property holding the exported graph's logits on the blank probe image (`encode_probe`)."""
# PyTorch and ONNX Runtime agree on these mean logits to about 1e-5; another graph differs by far more.
_PROBE_TOLERANCE = 1e-3
# An int8 graph's logits depend on the kernels that run it (fused int8 kernels differ by CPU; ONNX Runtime's
# unoptimised path does the QDQ arithmetic in float): on a small test model the two paths gave probe means 0.024
# apart, while another model's differ by whole logits.
INT8_PROBE_TOLERANCE = 0.1


def probe_tolerance(metadata: dict[str, Any]) -> float:
    """How far a graph's probe means may be from the recorded ones (`OnnxBackend`'s load-time check)."""
    return INT8_PROBE_TOLERANCE if metadata.get("precision") == "int8" else _PROBE_TOLERANCE


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bridgeseg metadata of an exported model, decoded (lists, bools, ints, embeddings as an array).

    Raises:
        ValueError: The file has no bridgeseg metadata.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in proto.metadata_props}, path)


def decode_metadata(raw: dict[str, str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decode the metadata strings of an exported graph, wherever the runtime keeps them (see `read_metadata`).

    Raises:
        CheckpointError: No bridgeseg metadata, or damaged metadata.
    """
    if "bridgeseg_format" not in raw:
        raise CheckpointError(f"{path} has no bridgeseg metadata; export it with `bridgeseg export --onnx`")
    metadata: dict[str, Any] = dict(raw)
    try:
        for key in ("classes", "templates", "open_vocab", "pixel_mean", "config"):
            metadata[key] = json.loads(raw[key])
        for key in ("text_dim", "prompt_context", "size_multiple"):
            metadata[key] = int(raw[key])
        # Files exported before the coarse form have full-size logits.
        metadata["output"] = raw.get("output", "logits")
        metadata["logits_stride"] = int(raw.get("logits_stride", "1"))
        if metadata["output"] not in OUTPUTS or metadata["logits_stride"] < 1:
            raise ValueError("'output' or 'logits_stride' is out of range")
        if "class_embeddings" in raw:
            values = np.frombuffer(base64.b64decode(raw["class_embeddings"]), dtype="<f4")
            metadata["class_embeddings"] = values.reshape(len(metadata["classes"]), metadata["text_dim"]).copy()
        if PROBE_KEY in raw:
            metadata[PROBE_KEY] = np.asarray(json.loads(raw[PROBE_KEY]), dtype=np.float32)
        if "input_size" in raw:  # graphs with a static input size (ExecuTorch)
            height, width = (int(side) for side in json.loads(raw["input_size"]))
            if height < 1 or width < 1 or height % metadata["size_multiple"] or width % metadata["size_multiple"]:
                raise ValueError("'input_size' is out of range")
            metadata["input_size"] = (height, width)
        # The names label every output (and draw the legend): the one validator, length cap included.
        metadata["classes"] = validate_class_names(metadata["classes"])
        if len(metadata["pixel_mean"]) != 3 or metadata["size_multiple"] < 1:
            raise ValueError("'pixel_mean' or 'size_multiple' is out of range")
    except (KeyError, ValueError, TypeError) as error:  # json.JSONDecodeError and binascii.Error are ValueErrors
        raise CheckpointError(
            f"{path}: its bridgeseg metadata is damaged ({type(error).__name__}: {first_line(error)}); re-export it "
            "with `bridgeseg export --onnx`"
        ) from error
    return metadata


# ------------------------------------------------------------------------------------------ ONNX Runtime sessions


def ort_session(
    model: str | os.PathLike[str] | bytes,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    spinning: bool | None = None,
) -> Any:
    """An ONNX Runtime `InferenceSession` on a file or a serialised graph, with bridgeseg's options.

    Args:
        model: An `.onnx` path, or the bytes of a `ModelProto`.
        threads: Intra-op threads (ONNX Runtime's default when None or 0).
        providers: Execution providers; default: CPU.
        spinning: Whether idle intra-op threads spin (True) or wait passively (False); ONNX Runtime's default
            (spinning) when None. Spinning lowers latency on dedicated cores and steals them on shared ones.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


def probe_logits(session: Any, metadata: dict[str, Any]) -> np.ndarray:
    """The graph's output on the blank probe image: one size multiple square, zeros.

    An open-vocabulary graph gets the default classes' embeddings stored in its metadata (`metadata` must hold
    them). Their mean over batch and pixels is the fingerprint that ties metadata to a graph (`probe_means`).
    """
    return session.run([metadata["output"]], probe_feed(metadata))[0]


def probe_feed(metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """The inputs of the probe: a blank (zero) image of one size multiple square (of the graph's `input_size` when
    it has a static one), and for an open vocabulary the default classes' embeddings (`metadata` must hold them)."""
    side = metadata["size_multiple"]
    feed = {"images": np.zeros((1, 3, *metadata.get("input_size", (side, side))), dtype=np.float32)}
    if metadata["open_vocab"]:
        feed["text_embeddings"] = np.ascontiguousarray(metadata["class_embeddings"], dtype=np.float32)
    return feed


def probe_means(logits: np.ndarray) -> np.ndarray:
    """Mean logits [K] of probe logits [1, K, h, w]: the fingerprint that ties metadata to a graph."""
    return logits.astype(np.float32).mean(axis=(0, 2, 3))


def encode_probe(means: np.ndarray) -> str:
    """The metadata value of the fingerprint `probe_means` (what `read_metadata` decodes)."""
    return json.dumps([round(float(value), 6) for value in means.tolist()])
