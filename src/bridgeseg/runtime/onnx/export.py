"""Export a `SegmentationModel` to ONNX: the traced module, the opsets each exporter can give, the metadata."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bridgeseg.io import check_writable, write_atomically
from bridgeseg.runtime.onnx.metadata import OUTPUTS, PROBE_KEY, SIZE_MULTIPLE, encode_probe
from bridgeseg.vocabulary import check_vocabulary

logger = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
# The lowest opsets every method exports at: `bridge`'s scaled-dot-product attention exports from opset 14 on
# (`lseg`'s einsum from 12, the backbones' ceil-mode pooling from 10); `torch.export`'s translation targets
# opset 18 and later.
_MIN_OPSETS = {"torchscript": 14, "dynamo": 18}
# Traced at this size: not square and with a C5 grid (2 x 3) that no positional grid equals, so size-dependent
# branches (DenseCLIP's positional-embedding interpolation) take their general path in the trace.
_TRACE_SIZE = (64, 96)
_TRACE_BATCH = 2

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
