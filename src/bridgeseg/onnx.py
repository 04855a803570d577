"""ONNX: export a model, check it against PyTorch, and run it with ONNX Runtime as a prediction backend.

Two ONNX forms:

- **fixed vocabulary**: one input ``images`` [B, 3, H, W] (float, scaled to [0, 1]); the text embeddings of the
  class list are baked in as constants, so the text encoder is not needed at run time;
- **open vocabulary** (``bridge`` and ``lseg`` models): a second input ``text_embeddings`` [K, Dt] with a dynamic K.

Either way the output is ``logits`` [B, K, H, W], or with ``output="coarse_logits"`` the logits before the final
bilinear upsampling, [B, K, H/s, W/s] (s, the decoder's stride, is in the metadata as ``logits_stride``): ONNX
Runtime computes every output of a graph whatever is asked for, so a graph has one of the two. From the coarse
form `OnnxBackend` upsamples the logits itself (bilinear, as the PyTorch model) and takes labels by the exact fast
path (`bridgeseg.models.prediction.upsampled_argmax`), which never builds the [B, K, H, W] map. Batch, height and
width are dynamic (multiples of 32), and the model carries its metadata (class names, method, text encoder, ...)
in ``metadata_props``, so :class:`OnnxBackend` needs nothing but the ``.onnx`` file. It answers the one question
of the shared prediction loop (`bridgeseg.models.prediction`), "logits for these images and these class
embeddings"; padding, slide, flip and the arg-max are the loop's, the same as with PyTorch.

Example:
    >>> export_onnx(model, "model.onnx")  # fixed vocabulary, the model's own classes  # doctest: +SKIP
    >>> predictor = bridgeseg.Predictor.from_checkpoint("model.onnx")  # doctest: +SKIP
    >>> prediction = predictor.predict("street.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.io import check_writable, write_atomically
from bridgeseg.models.text import create_text_encoder
from bridgeseg.vocabulary import check_vocabulary, describe_classes, validate_class_names

__all__ = [
    "EXPORTERS",
    "OPSET_RANGE",
    "OUTPUTS",
    "SIZE_MULTIPLE",
    "ExportModule",
    "GraphBackend",
    "OnnxBackend",
    "ParityReport",
    "check_parity",
    "decode_metadata",
    "export_metadata",
    "export_onnx",
    "probe_feed",
    "read_metadata",
    "resolve_vocabulary",
]

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 32
"""ONNX inputs must have heights and widths divisible by this (the backbones' output stride)."""

EXPORTERS = ("torchscript", "dynamo")
OUTPUTS = ("logits", "coarse_logits")
"""The graph's output: full-size logits, or the logits at the decoder's stride (see the module docstring)."""
# The lowest opsets every method exports at: `bridge`'s scaled-dot-product attention exports from opset 14 on
# (`lseg`'s einsum from 12, the backbones' ceil-mode pooling from 10); `torch.export`'s translation targets
# opset 18 and later.
_MIN_OPSETS = {"torchscript": 14, "dynamo": 18}
# Traced at this size: not square and with a C5 grid (2 x 3) that no positional grid equals, so size-dependent
# branches (DenseCLIP's positional-embedding interpolation) take their general path in the trace.
_TRACE_SIZE = (64, 96)
_TRACE_BATCH = 2
_PARITY_SIZES = ((64, 96), (128, 64))
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


# ----------------------------------------------------------------------------------------------------- export


class ExportModule(nn.Module):
    """`images (, text_embeddings) → logits or coarse logits`: what an exported graph computes (ONNX, ExecuTorch).

    With a fixed vocabulary the text embeddings are held as a buffer (constants in the graph) and are the only
    input; with an open vocabulary they are the second input.
    """

    def __init__(self, model: nn.Module, text_embeddings: Tensor | None, open_vocab: bool, output: str) -> None:
        super().__init__()
        self.model, self.open_vocab = model, open_vocab
        self.run = model.coarse_logits if output == "coarse_logits" else model.forward
        self.register_buffer("fixed_embeddings", None if open_vocab else text_embeddings)

    def forward(self, images: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        return self.run(images, text_embeddings if self.open_vocab else self.fixed_embeddings)


class _TraceableMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s arithmetic with every length read at run time.

    The TorchScript tracer records the key length of `F.multi_head_attention_forward` as a constant, so an ONNX
    graph traced at one image size fails at another (DenseCLIP's context decoder attends to the h·w pixels).
    This stand-in shares the wrapped module's weights; only the unmasked, same-width case used here is covered.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("only nn.MultiheadAttention without kdim/vdim, bias_kv or add_zero_attn can be exported")
        self.attention = attention
        self.batch_first = attention.batch_first

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("attention masks are not supported by the ONNX export")
        attention = self.attention
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        weights = attention.in_proj_weight.chunk(3)
        biases = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
        heads, head_dim = attention.num_heads, attention.head_dim

        def split(x: Tensor) -> Tensor:  # [B, N, E] -> [B, heads, N, E / heads]
            return x.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)

        q, k, v = (split(F.linear(x, w, b)) for x, w, b in zip((query, key, value), weights, biases, strict=True))
        attended = F.scaled_dot_product_attention(q, k, v)
        output = attention.out_proj(attended.transpose(1, 2).reshape(query.shape[0], -1, attention.embed_dim))
        return (output if self.batch_first else output.transpose(0, 1)), None


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Swap every `nn.MultiheadAttention` for its traceable twin while the block runs."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, _TraceableMultiheadAttention(child))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def resolve_vocabulary(model: nn.Module, classes: Sequence[str] | None) -> tuple[list[str], Tensor | None]:
    """Class names and their text embeddings [K, Dt] (None for text-free models); embeds new names if needed."""
    hint = "drop --classes, or export a 'bridge' or 'lseg' model for another class list"
    names = check_vocabulary(classes, model.classes, model.open_vocabulary, f"'{model.method}'", hint)
    with torch.no_grad():
        embeddings = model.text_embeddings(names)
    return names, None if embeddings is None else embeddings.detach().float().clone()


def export_metadata(
    model: nn.Module, classes: list[str], embeddings: Tensor | None, open_vocab: bool, output: str, stride: int
) -> dict[str, str]:
    """The metadata of an exported graph as strings (the table in docs/export.md), without the probe fingerprint."""
    config = model.config
    metadata = {
        "bridgeseg_format": "1",
        "method": config.method,
        "backbone": config.backbone,
        "classes": json.dumps(classes),
        "text_encoder": config.text_encoder if model.uses_text else "",
        "text_dim": str(getattr(model, "text_dim", 0) if model.uses_text else 0),
        "templates": json.dumps(config.templates),
        "prompt_context": str(config.prompt_context),
        "open_vocab": json.dumps(open_vocab),
        "size_multiple": str(SIZE_MULTIPLE),
        "output": output,
        # The output's pixels are this many input pixels apart (1 for full-size logits).
        "logits_stride": str(stride),
        # The padding colour of the shared prediction loop: 0 after normalisation, as the model pads.
        "pixel_mean": json.dumps([float(v) for v in model.pixel_mean.flatten().tolist()]),
        "config": json.dumps(config.to_dict()),
    }
    if open_vocab and embeddings is not None:
        # The default vocabulary's embeddings, so predicting with the training classes needs no text encoder.
        metadata["class_embeddings"] = base64.b64encode(embeddings.cpu().numpy().astype("<f4").tobytes()).decode()
    return metadata


def _max_opset() -> int:
    """The newest opset the installed PyTorch exports to."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a private module: a PyTorch without it still exports up to opset 20
        return 20
    return int(ONNX_MAX_OPSET)


OPSET_RANGE = {name: range(minimum, _max_opset() + 1) for name, minimum in _MIN_OPSETS.items()}
"""The opsets each exporter gives a bridgeseg model at, with the installed PyTorch."""


def check_opset(opset: int, exporter: str = "torchscript") -> None:
    """Refuse an opset the exporter cannot give every bridgeseg model at, before anything is loaded or traced.

    Raises:
        ValueError: `opset` is outside `OPSET_RANGE[exporter]`; the message gives the range.
    """
    supported = OPSET_RANGE.get(exporter)
    if supported is not None and opset not in supported:
        raise ValueError(
            f"--opset {opset} is not supported by the {exporter} exporter with this PyTorch: use "
            f"{supported.start} to {supported.stop - 1}; the default is 18"
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    open_vocab: bool = False,
    classes: Sequence[str] | None = None,
    opset: int = 18,
    exporter: str = "torchscript",
    output: str = "logits",
) -> Path:
    """Export a segmentor to ONNX, with its metadata, checked by `onnx.checker`, written atomically.

    Args:
        model: A model (`bridgeseg.create_model` or `bridgeseg.load_model`).
        path: Destination `.onnx` file.
        open_vocab: Make the text embeddings [K, Dt] a second input with a dynamic K (open-vocabulary models
            only); otherwise they are baked in as constants.
        classes: Class names for the exported model (default: the model's). New names need an open-vocabulary
            model and its text encoder; in the open form they are the default vocabulary stored in the metadata.
        opset: ONNX opset version.
        exporter: "torchscript" (`torch.onnx.export(dynamo=False)`, the default: fast and without extra
            dependencies) or "dynamo" (`torch.export`, needs the `onnxscript` package).
        output: "logits" (full size, the default: what any consumer expects) or "coarse_logits" (before the final
            upsampling, at the decoder's stride: faster labels with `OnnxBackend`; other consumers upsample them
            bilinearly, align_corners=False, themselves).

    Returns:
        The written path.

    Raises:
        ValueError: `open_vocab` or new `classes` for a closed-set model, an unknown exporter or output, an opset
            outside `OPSET_RANGE`.
        OSError: `path` cannot be written (checked before the export).
        ImportError: The `onnx` package (or `onnxscript` for the dynamo exporter) is missing.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")
    check_opset(opset, exporter)
    if open_vocab and not model.open_vocabulary:
        raise ValueError(
            f"'{model.method}' is closed-set and cannot be exported with open-vocabulary inputs; drop --open-vocab "
            "(its classes are baked in), or use a 'bridge' or 'lseg' model"
        )
    classes, embeddings = resolve_vocabulary(model, classes)
    check_writable(path)  # before the export, which takes a while
    device = next(model.parameters()).device
    images = torch.rand(_TRACE_BATCH, 3, *_TRACE_SIZE, device=device)
    dims = {0: "batch", 2: "height", 3: "width"}
    output_dims = dims if output == "logits" else {0: "batch", 2: "coarse_height", 3: "coarse_width"}
    module = ExportModule(model, embeddings, open_vocab, output).eval()
    if open_vocab:
        inputs: tuple[Tensor, ...] = (images, embeddings)
        input_names = ["images", "text_embeddings"]
        classes_dim = {0: "num_classes"}
        dynamic_axes = {"images": dims, "text_embeddings": classes_dim, output: {**output_dims, 1: "num_classes"}}
    else:
        inputs = (images,)
        input_names = ["images"]
        dynamic_axes = {"images": dims, output: output_dims}

    was_training = model.training
    model.eval()
    try:
        if exporter == "torchscript":
            proto = _export_torchscript(module, inputs, input_names, output, dynamic_axes, opset)
        else:
            proto = _export_dynamo(module, inputs, input_names, output, open_vocab, opset)
        probe = torch.zeros(1, 3, SIZE_MULTIPLE, SIZE_MULTIPLE, device=device)
        with torch.no_grad():
            blank_means = module(probe, *inputs[1:]).float().mean(dim=(0, 2, 3))  # [K]
            stride = images.shape[-2] // module(images, *inputs[1:]).shape[-2]
    finally:
        model.train(was_training)

    if not open_vocab:
        # The tracer leaves the class count symbolic although the embeddings are constants.
        class_dim = proto.graph.output[0].type.tensor_type.shape.dim[1]
        class_dim.Clear()
        class_dim.dim_value = len(classes)
    existing = {prop.key: prop.value for prop in proto.metadata_props}
    # The logits of a blank image tie the metadata to this graph: `OnnxBackend` compares them when it loads it.
    fingerprint = {PROBE_KEY: encode_probe(blank_means.cpu().numpy())}
    metadata = export_metadata(model, classes, embeddings, open_vocab, output, stride)
    onnx.helper.set_model_props(proto, existing | metadata | fingerprint)
    shape = "[B, K, H, W]" if output == "logits" else f"[B, K, H/{stride}, W/{stride}]"
    proto.doc_string = (
        f"bridgeseg {model.method} / {model.config.backbone}: images [B, 3, H, W] in [0, 1] → {output} {shape}"
    )
    onnx.checker.check_model(proto)
    serialized = proto.SerializeToString()
    path = write_atomically(path, lambda file: file.write(serialized))
    logger.debug("wrote %s (%s vocabulary, %d classes)", path, "open" if open_vocab else "fixed", len(classes))
    return path


def _export_names(input_names: list[str], output: str, opset: int) -> dict[str, Any]:
    """The inputs' and the output's names and the opset: the same for both exporters."""
    return {"input_names": input_names, "output_names": [output], "opset_version": opset}


def _export_torchscript(
    module: nn.Module, inputs: tuple[Tensor, ...], input_names: list[str], output: str, dynamic_axes: dict, opset: int
) -> Any:
    import onnx

    buffer = io.BytesIO()
    with _traceable(module), warnings.catch_warnings():
        # Tracer warnings about shape checks that hold for every input whose sides are multiples of 32. PyTorch's
        # DeprecationWarning for this exporter is left alone: docs/export.md says what replaces it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            inputs,
            buffer,
            dynamo=False,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            **_export_names(input_names, output, opset),
        )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(
    module: nn.Module, inputs: tuple[Tensor, ...], input_names: list[str], output: str, open_vocab: bool, opset: int
) -> Any:
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("the dynamo exporter needs onnxscript: pip install onnxscript") from error
    from torch.export import Dim

    height, width = Dim("height_32", min=1, max=512), Dim("width_32", min=1, max=512)
    image_dims = {0: Dim("batch", min=1, max=1024), 2: SIZE_MULTIPLE * height, 3: SIZE_MULTIPLE * width}
    dynamic_shapes: tuple[dict, ...] = (image_dims,)
    if open_vocab:
        dynamic_shapes = (image_dims, {0: Dim("num_classes", min=1, max=65536)})
    program = torch.onnx.export(
        module,
        inputs,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
        **_export_names(input_names, output, opset),
    )
    return program.model_proto


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


# ----------------------------------------------------------------------------------------------------- parity


@dataclasses.dataclass
class ParityReport:
    """How closely an ONNX model reproduces PyTorch.

    Attributes:
        max_abs_diff: Largest absolute logit difference over all sizes.
        argmax_agreement: Fraction of pixels whose arg-max class agrees (worst size).
        sizes: The (height, width) sizes checked.
        num_classes: K of the check.
    """

    max_abs_diff: float
    argmax_agreement: float
    sizes: list[tuple[int, int]]
    num_classes: int

    def __str__(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        return (
            f"max |logit diff| {self.max_abs_diff:.2e}, argmax agreement {100 * self.argmax_agreement:.3f} % "
            f"({self.num_classes} classes; {sizes})"
        )


@torch.inference_mode()
def check_parity(
    model: nn.Module,
    path: str | os.PathLike[str],
    text_embeddings: Tensor | None = None,
    sizes: Sequence[tuple[int, int]] = _PARITY_SIZES,
    batch: int = 1,
    seed: int = 0,
) -> ParityReport:
    """Run the ONNX model with onnxruntime and the model with PyTorch on the same random images.

    Args:
        model: The model that was exported.
        path: The `.onnx` file.
        text_embeddings: [K, Dt] for both (fed to the ONNX model when it has a `text_embeddings` input); default:
            the embeddings of the classes stored in the file's metadata.
        sizes: (height, width) pairs, multiples of 32.
        batch: Images per run.
        seed: Seed of the random images.

    Returns:
        The worst differences over all sizes.
    """
    session = ort_session(path)
    metadata = decode_metadata(session.get_modelmeta().custom_metadata_map, path)
    if text_embeddings is None and model.uses_text:
        text_embeddings = model.text_embeddings(metadata["classes"])
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    worst_diff, worst_agreement, num_classes = 0.0, 1.0, 0
    try:
        for height, width in sizes:
            images = torch.rand(batch, 3, height, width, generator=generator)
            embeddings = None if text_embeddings is None else text_embeddings.to(device)
            run = model.coarse_logits if metadata["output"] == "coarse_logits" else model
            expected = run(images.to(device), embeddings).float().cpu().numpy()
            feed = {"images": images.numpy()}
            if metadata["open_vocab"]:
                feed["text_embeddings"] = text_embeddings.float().cpu().numpy()
            actual = session.run([metadata["output"]], feed)[0]
            worst_diff = max(worst_diff, float(np.abs(actual - expected).max()))
            worst_agreement = min(worst_agreement, float((actual.argmax(1) == expected.argmax(1)).mean()))
            num_classes = expected.shape[1]
    finally:
        model.train(was_training)
    return ParityReport(worst_diff, worst_agreement, [tuple(s) for s in sizes], num_classes)


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
