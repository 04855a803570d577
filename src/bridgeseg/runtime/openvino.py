"""OpenVINO: convert an exported ONNX graph to an OpenVINO IR and run it as a prediction backend.

The IR is made from the ONNX graph `bridgeseg.onnx.export_onnx` writes (`ov.convert_model`), float32 or the int8
QDQ graph of `bridgeseg.quantization.quantize_onnx` (OpenVINO runs its QuantizeLinear / DequantizeLinear pairs as
int8 operations), and saved uncompressed (float32 weights: `ov.save_model` would halve them to fp16 by default). The
ONNX metadata is carried over as-is into the IR's runtime info (``<rt_info><bridgeseg>``), so `OpenVinoBackend`
decodes and checks it exactly as `bridgeseg.onnx.OnnxBackend` does (the same `GraphBackend`): the classes, the
vocabulary form, the logits stride and the probe fingerprint. `OpenVinoBackend` also opens a bridgeseg `.onnx` file
directly (OpenVINO reads ONNX), whose metadata OpenVINO puts under ``framework``.

The IR keeps the ONNX graph's dynamic batch, height and width; the backend compiles one static-shape model per
input shape it meets (OpenVINO runs static shapes faster) and keeps the last few.

Precision: the CPU plugin's ``INFERENCE_PRECISION_HINT`` is always set, to ``f32`` unless bf16 is asked for
(``precision="bf16"``). Left unset, OpenVINO picks bf16 by itself on CPUs with native bf16, and bridgeseg runs fp32
unless asked. The precision that ran (`OpenVinoBackend.precision`) is read back from the compiled model: on a CPU
without native bf16 OpenVINO 2026 runs f32 whatever the hint.

Example:
    >>> export_openvino(model, "model.xml")  # doctest: +SKIP
    >>> predictor = bridgeseg.Predictor.from_checkpoint("model.xml")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.io import check_writable, write_atomically
from bridgeseg.onnx import INT8_PROBE_TOLERANCE, GraphBackend, decode_metadata, export_onnx

__all__ = ["PRECISIONS", "OpenVinoBackend", "compile_config", "convert_onnx", "export_openvino", "import_openvino"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
"""The float precisions OpenVINO is asked for (the CPU plugin's inference precision hint)."""
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_RT_INFO = "bridgeseg"
"""The IR's runtime-info section holding the metadata."""
_COMPILED_SHAPES = 4
"""Compiled models kept, one per input shape (the least recently used goes first)."""
_BF16_PROBE_TOLERANCE = INT8_PROBE_TOLERANCE
# bf16 keeps 8 bits of mantissa: a graph's mean logits move by about 1e-2, far above float32's 1e-3 check, far
# below what another model gives.


def import_openvino() -> Any:
    """The `openvino` module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            f"the OpenVINO runtime is not installed ({error}); install it with `pip install 'bridgeseg[openvino]'`"
        ) from error
    return openvino


def compile_config(precision: str = "fp32", threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin's configuration: the inference precision hint always explicit, latency mode, threads.

    Raises:
        ValueError: An unknown precision.
    """
    if precision not in _HINTS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def convert_onnx(onnx_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Convert a bridgeseg ONNX file (float32 or int8 QDQ) to an OpenVINO IR, with its metadata.

    Args:
        onnx_path: A file written by `bridgeseg.onnx.export_onnx` or `bridgeseg.quantization.quantize_onnx`.
        path: The IR's `.xml` file; its weights go next to it, in the `.bin` of the same name.

    Returns:
        The `.xml` path.

    Raises:
        ValueError: `path` does not end in `.xml`.
        CheckpointError: `onnx_path` has no or damaged bridgeseg metadata.
        ImportError: `openvino` (or `onnx`) is not installed.
    """
    import onnx

    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is an .xml file (its weights in the .bin beside it), got {path}")
    ov = import_openvino()
    check_writable(path)
    raw = {prop.key: prop.value for prop in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    decode_metadata(raw, onnx_path)  # refuses a file without valid bridgeseg metadata before the conversion
    model = ov.convert_model(str(onnx_path))
    for key, value in raw.items():
        model.set_rt_info(value, [_RT_INFO, key])
    with tempfile.TemporaryDirectory(prefix="bridgeseg-openvino-", dir=path.parent) as work:
        saved = Path(work) / path.name
        ov.save_model(model, str(saved), compress_to_fp16=False)
        # The weights first: a reader never finds a new .xml beside an old .bin.
        for source in (saved.with_suffix(".bin"), saved):
            data = source.read_bytes()
            write_atomically(path.with_suffix(source.suffix), lambda file, data=data: file.write(data))
    logger.debug("wrote %s (from %s)", path, onnx_path)
    return path


def export_openvino(
    model: nn.Module,
    path: str | os.PathLike[str],
    open_vocab: bool = False,
    classes: list[str] | None = None,
    output: str = "logits",
    calibration: Any = None,
    **quantize_options: Any,
) -> Path:
    """Export a segmentor to an OpenVINO IR: through ONNX (`export_onnx`), int8 through `quantize_onnx`.

    Args:
        model: A model (`bridgeseg.create_model` or `bridgeseg.load_model`).
        path: The IR's `.xml` file.
        open_vocab: Text embeddings as a second input with a dynamic K (see `export_onnx`).
        classes: Class names (see `export_onnx`).
        output: "logits" or "coarse_logits" (see `export_onnx`).
        calibration: A folder of training images (or a list of files): quantise to int8 on them; None: float32.
        **quantize_options: `num_images`, `size`, ... of `quantize_onnx`.

    Returns:
        The `.xml` path.
    """
    ov_path = Path(path)
    if ov_path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is an .xml file (its weights in the .bin beside it), got {ov_path}")
    import_openvino()  # before the export, which takes a while
    check_writable(ov_path)
    with tempfile.TemporaryDirectory(prefix="bridgeseg-export-") as work:
        options = {"open_vocab": open_vocab, "classes": classes, "output": output}
        onnx_path = export_onnx(model, Path(work) / "float32.onnx", **options)
        if calibration is not None:
            from bridgeseg.quantization import quantize_onnx

            onnx_path = quantize_onnx(onnx_path, Path(work) / "int8.onnx", calibration, **quantize_options)
        return convert_onnx(onnx_path, ov_path)


class OpenVinoBackend(GraphBackend):
    """An OpenVINO IR (or a bridgeseg `.onnx` file) on OpenVINO's CPU plugin, as a backend of the shared loop.

    Args:
        path: An `.xml` IR written by `export_openvino` / `convert_onnx`, or an `.onnx` file of `export_onnx`.
        precision: "fp32" (the default) or "bf16": the CPU plugin's inference precision hint. An int8 IR runs its
            quantised operations in int8 either way; the hint sets the precision of the rest.
        threads: Inference threads (OpenVINO's default when None).

    Attributes:
        precision: What ran: "int8" for a quantised graph, else "bf16" or "fp32" as the compiled model reports.

    Raises:
        FileNotFoundError: No such file.
        ValueError: An unknown precision.
        ImportError: `openvino` is not installed.
        CheckpointError: Not a model OpenVINO reads, no or damaged bridgeseg metadata, or a graph that disagrees
            with its metadata (see `GraphBackend`); checked here, at load.
    """

    runtime_name = "OpenVINO"
    runtime = "openvino"
    export_command = "bridgeseg export --format openvino"

    def __init__(self, path: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None) -> None:
        path = Path(path)
        self.config = compile_config(precision, threads)
        self.requested_precision = precision
        if not path.is_file():
            raise FileNotFoundError(
                f"OpenVINO model {path} not found; export one with `bridgeseg export --format openvino --out {path}`"
            )
        ov = import_openvino()
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError with its own text for damage
            raise CheckpointError(
                f"{path}: not a valid OpenVINO model ({first_line(error)[:200]}); the file (or its .bin) is "
                f"truncated or corrupt: re-export it with `{self.export_command}` or re-copy it"
            ) from error
        super().__init__(path, decode_metadata(self._raw_metadata(), path))
        self._compiled: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._check_inputs()
        self._check_probe()

    def _raw_metadata(self) -> dict[str, str]:
        """The metadata strings: ours in an IR, the ONNX file's `metadata_props` (``framework``) in an `.onnx`."""
        for section in (_RT_INFO, "framework"):
            if self.model.has_rt_info([section, "bridgeseg_format"]):
                return {key: value.astype(str) for key, value in self.model.get_rt_info()[section].items()}
        return {}

    def _check_inputs(self) -> None:
        inputs = {port.get_any_name() for port in self.model.inputs}
        outputs = {name for port in self.model.outputs for name in port.get_names()}
        expected = {"images", "text_embeddings"} if self.open_vocabulary else {"images"}
        if inputs != expected or self.output not in outputs:
            raise CheckpointError(
                f"{self.path}: the graph's inputs ({', '.join(sorted(inputs))}) do not match its metadata (open_vocab "
                f"{self.open_vocabulary}); it was not written by `bridgeseg export`: re-export it"
            )

    def _probe_tolerance(self) -> float:
        tolerance = super()._probe_tolerance()
        return max(tolerance, _BF16_PROBE_TOLERANCE) if self.requested_precision == "bf16" else tolerance

    def _compiled_model(self, feed: dict[str, np.ndarray]) -> Any:
        """The model compiled for these input shapes (reshaped to them: static shapes run faster)."""
        shapes = {name: list(array.shape) for name, array in feed.items()}
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
        compiled = self._compiled.get(key)
        if compiled is None:
            model = self.model.clone()
            model.reshape(shapes)
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._note_precision(compiled)
            if len(self._compiled) >= _COMPILED_SHAPES:
                self._compiled.popitem(last=False)
            self._compiled[key] = compiled
        self._compiled.move_to_end(key)
        return compiled

    def _note_precision(self, compiled: Any) -> None:
        ran = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        float_precision = "bf16" if "bf16" in ran else "fp32"
        if float_precision != self.requested_precision:
            logger.warning(
                "OpenVINO runs %s, not the %s asked for, on this CPU (%s)",
                float_precision,
                self.requested_precision,
                "no native bf16" if self.requested_precision == "bf16" else ran,
            )
        self.precision = "int8" if self.metadata.get("precision") == "int8" else float_precision

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        compiled = self._compiled_model(feed)
        result = compiled(feed)[compiled.output(0)]
        return np.array(result, dtype=np.float32)  # a copy: the request's buffer is reused by the next call
