"""int8 static quantisation of an exported ONNX model, with ONNX Runtime's own tools.

`quantize_onnx` turns a float32 file written by `bridgeseg.runtime.onnx.export_onnx` into an int8 one: ONNX Runtime's
pre-processing (`quant_pre_process`: ONNX shape inference, basic graph optimisation), then `quantize_static` in
the QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantised operator), weights int8 per output
channel, activations uint8 with ranges calibrated (min / max) on training images. Shape arithmetic, the logits and
the high-resolution stem stay float (see `quantize_onnx`). The result is a bridgeseg ONNX model like any other:
the same inputs, outputs and metadata, with ``precision`` int8, so `bridgeseg.runtime.onnx.OnnxBackend` and
`bridgeseg.Predictor.from_checkpoint` load it.

Calibration runs the float model on a few training images and records the range of every activation; those
ranges fix the int8 scales. Images the model will see later should look like them.

Example:
    >>> export_onnx(model, "model.onnx")  # doctest: +SKIP
    >>> quantize_onnx("model.onnx", "model_int8.onnx", "data/mosaic/images/train")  # doctest: +SKIP
    >>> predictor = bridgeseg.Predictor.from_checkpoint("model_int8.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from bridgeseg.errors import DatasetError, DatasetNotFoundError
from bridgeseg.images import IMAGE_EXTENSIONS, load_image
from bridgeseg.io import check_writable, write_atomically
from bridgeseg.options import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_SIZE
from bridgeseg.runtime.onnx import (
    PROBE_KEY,
    SIZE_MULTIPLE,
    encode_probe,
    ort_session,
    probe_logits,
    probe_means,
    read_metadata,
)

__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_CALIBRATION_SIZE",
    "DEFAULT_FLOAT_STRIDE",
    "QUANTIZED_OPS",
    "calibration_images",
    "calibration_reader",
    "load_calibration_image",
    "quantize_graph",
    "quantize_onnx",
]

logger = logging.getLogger(__name__)


QUANTIZED_OPS = ("Conv", "MatMul", "Add", "Mul", "Clip", "Relu")
"""Operators quantised. Clip and Relu (ReLU6 and ReLU) are there so that a convolution's output is quantised
over the activation's range ([0, 6]), not over the raw convolution output, whose channels can span ±100 after the
BatchNorm fold (one scale for all of them erases the small ones); Add and Mul keep residual sums and scalings in
int8 between convolutions. Resize, LayerNormalization, Softmax and the L2 normalisation stay float."""

DEFAULT_FLOAT_STRIDE = 4
"""The layers before the network first goes coarser than stride 4 stay float by default. They run on the most
pixels with the fewest channels, on nearly raw image statistics, and were where the int8 error of the demo model
came from (see docs/export.md, "int8"); keeping them float costs little of the speed-up."""

CalibrationSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def calibration_images(source: CalibrationSource, count: int) -> list[Path]:
    """Up to `count` image files, spread evenly over a folder's sorted images (or over the given list).

    Args:
        source: A folder of images (its files with an image extension, not its sub-folders) or a list of files.
        count: How many to take.

    Returns:
        The files, in sorted order.

    Raises:
        ValueError: `count` is not positive.
        DatasetNotFoundError: The folder does not exist.
        DatasetError: It holds no image.
    """
    if count < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {count}")
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise DatasetNotFoundError(f"calibration folder {folder} not found; give a folder of training images")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(
                f"calibration folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}); give a folder of "
                "training images"
            )
    else:
        files = sorted(Path(p) for p in source)
        if not files:
            raise DatasetError("no calibration images given; give at least one training image")
    if len(files) <= count:
        return files
    # Evenly spaced over the sorted list: the whole set is represented, and the choice is reproducible.
    return [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]


def load_calibration_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An image as the model takes it for calibration: float32 [1, 3, size, size] in [0, 1].

    The short side is resized to `size` (bilinear, antialiased), then the centre square is cropped.
    """
    image = load_image(path)  # [3, H, W] in [0, 1]
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    resized_height, resized_width = max(size, round(height * scale)), max(size, round(width * scale))
    if (resized_height, resized_width) != (height, width):
        image = F.interpolate(
            image[None], size=(resized_height, resized_width), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
    top, left = (resized_height - size) // 2, (resized_width - size) // 2
    crop = image[:, top : top + size, left : left + size]
    return np.ascontiguousarray(crop[None].numpy(), dtype=np.float32)


def calibration_reader(files: Sequence[Path], size: int, text_embeddings: np.ndarray | None = None) -> Any:
    """An `onnxruntime.quantization.CalibrationDataReader` over `files`, one image per batch, decoded lazily.

    Args:
        files: The calibration images.
        size: Side of the square each image is resized and cropped to.
        text_embeddings: [K, Dt] fed with every image to an open-vocabulary model (None for a fixed one).
    """
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.position = 0

        def __len__(self) -> int:
            return len(files)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(files):
                return None
            feed = {"images": load_calibration_image(files[self.position], size)}
            if text_embeddings is not None:
                feed["text_embeddings"] = text_embeddings
            self.position += 1
            return feed

        def rewind(self) -> None:
            self.position = 0

    return ImageCalibrationReader()


class _BiasScaleNotes(logging.Filter):
    """Counts onnxruntime's note, one per output channel, that it widened a weight scale for the channel's bias.

    The QDQ quantiser stores each bias in int32 with the scale input scale × weight scale; where a channel's
    weights are tiny next to its bias (channels the BatchNorm fold nearly zeroed), it widens that weight scale and
    logs one INFO line per channel, dozens for EfficientNet-Lite0. They are counted and summed up in one line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and record.getMessage().startswith("Increased scale"):
            self.count += 1
            return False
        return True


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: CalibrationSource,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    size: int = DEFAULT_CALIBRATION_SIZE,
    float_stride: int = DEFAULT_FLOAT_STRIDE,
    reduce_range: bool = True,
) -> Path:
    """Quantise a float32 bridgeseg ONNX model to int8 (static, QDQ, per-channel weights), written atomically.

    Args:
        fp32_path: A file written by `bridgeseg.runtime.onnx.export_onnx` (either form).
        out_path: Destination `.onnx` file; it must not be `fp32_path`.
        calibration: A folder of training images, or a list of image files.
        num_images: Calibration images (spread evenly over the folder's sorted images).
        size: Side of the square each calibration image is resized and cropped to; a multiple of 32. An open
            model gets the default classes' embeddings stored in the metadata with every image.
        float_stride: The layers computed before the network first goes coarser than this stride (the stem and
            the first stage at stride 4 by default) stay float; 0 quantises them too.
        reduce_range: Quantise weights on 7 bits (see the comment in the code); False for full 8-bit weights.

    Returns:
        The written path.

    Raises:
        ValueError: `size` is not a positive multiple of 32, `num_images` is not positive, `out_path` is the
            input, or an open-vocabulary model has no stored class embeddings.
        CheckpointError: `fp32_path` has no or damaged bridgeseg metadata.
        DatasetError: The calibration folder is missing or holds no image, or an image cannot be read.
        OSError: `out_path` cannot be written (checked before the work).
    """
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        raise ValueError(f"the calibration size must be a positive multiple of {SIZE_MULTIPLE}, got {size}")
    if out_path.resolve() == fp32_path.resolve():
        raise ValueError(f"{out_path}: the int8 model must go to another file than the float32 model it is made from")
    metadata = read_metadata(fp32_path)
    if metadata.get("precision", "float32") != "float32":
        raise ValueError(f"{fp32_path} is already quantised ({metadata['precision']}); quantise the float32 export")
    text_embeddings = None
    if metadata["open_vocab"]:
        if "class_embeddings" not in metadata:
            raise ValueError(f"{fp32_path}: an open-vocabulary model without stored class embeddings to calibrate with")
        text_embeddings = np.ascontiguousarray(metadata["class_embeddings"], dtype=np.float32)
    files = calibration_images(calibration, num_images)
    check_writable(out_path)  # before the calibration, which takes a while

    proto = quantize_graph(
        fp32_path,
        calibration_reader(files, size, text_embeddings),
        float_stride=float_stride,
        reduce_range=reduce_range,
    )
    properties = {prop.key: prop.value for prop in proto.metadata_props}
    properties |= {prop.key: prop.value for prop in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    properties |= {
        "precision": "int8",
        "calibration_images": str(len(files)),
        "calibration_size": str(size),
    }
    # The fp32 file's probe logits are PyTorch's; the int8 graph gives others. Recorded from the int8 graph itself,
    # they keep `OnnxBackend`'s load-time check (metadata belongs to this graph) meaningful.
    properties[PROBE_KEY] = encode_probe(probe_means(probe_logits(ort_session(proto.SerializeToString()), metadata)))
    onnx.helper.set_model_props(proto, properties)
    proto.doc_string = f"{proto.doc_string} (int8, calibrated on {len(files)} images of {size}×{size})".strip()
    onnx.checker.check_model(proto)
    serialized = proto.SerializeToString()
    written = write_atomically(out_path, lambda file: file.write(serialized))
    logger.debug("wrote %s (int8, calibrated on %d images of %dx%d)", written, len(files), size, size)
    return written


def quantize_graph(
    fp32_path: str | os.PathLike[str],
    reader: Any,
    float_stride: int = DEFAULT_FLOAT_STRIDE,
    reduce_range: bool = True,
) -> Any:
    """The int8 graph of any float32 ONNX segmentation graph (input ``images``), with bridgeseg's settings.

    `quantize_onnx` is this plus the bridgeseg metadata; this part also quantises a peer's graph the same way
    (benchmarks/latency.py).

    Args:
        fp32_path: The float32 graph.
        reader: An `onnxruntime.quantization.CalibrationDataReader` giving its feeds.
        float_stride: See `quantize_onnx`.
        reduce_range: See `quantize_onnx`.

    Returns:
        The quantised `onnx.ModelProto` (nothing is written but ONNX Runtime's temporary files, removed).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="bridgeseg-int8-") as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        # ONNX shape inference and ORT's basic optimisations (constant folding, Conv + BatchNorm fusion...).
        # Symbolic shape inference, meant for transformers' dynamic sequence lengths, is skipped: it cannot
        # follow these graphs' dynamic heights and widths through Resize and Reshape ("Incomplete symbolic shape
        # inference"), and every tensor the quantiser needs (Conv, MatMul inputs) gets its rank from ONNX's.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        float_nodes = _shape_arithmetic(graph) + _logit_nodes(graph) + _high_resolution_stem(graph, float_stride)
        notes = _BiasScaleNotes()
        logging.getLogger().addFilter(notes)  # onnxruntime.quantization logs on the root logger
        try:
            quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=float_nodes,
                per_channel=True,
                weight_type=QuantType.QInt8,
                # U8S8 (uint8 activations, int8 weights). ORT's guide names S8S8 in the QDQ format as the generic first
                # choice, but x86's int8 dot products (AVX2 VPMADDUBSW, AVX512-VNNI VPDPBUSD) multiply unsigned by
                # signed bytes and ORT's x86 kernels are U8S8: with int8 activations onnxruntime 1.32 left the 1×1
                # convolutions unfused here (DequantizeLinear → float Conv → QuantizeLinear), with uint8 every
                # convolution became a QLinearConv.
                activation_type=QuantType.QUInt8,
                # Weights on 7 bits: on AVX2 and AVX512 CPUs without VNNI, U8S8 products are summed in pairs into int16
                # (VPMADDUBSW), which saturates with full-range weights; ORT's guide recommends reduce_range there. Its
                # cost on VNNI CPUs, which do not saturate, is half a bit of weight precision.
                reduce_range=reduce_range,
                # Min / max calibration keeps only each tensor's min and max per image (ReduceMin / ReduceMax outputs),
                # so memory does not grow with the images. "CalibMaxIntermediateOutputs" is left unset on purpose: in
                # onnxruntime 1.32 it drops the collected ranges instead of merging them.
            )
        finally:
            logging.getLogger().removeFilter(notes)
        if notes.count:
            logger.info(
                "onnxruntime widened the int8 weight scale of %d output channels so that their int32 biases fit "
                "(channels whose weights are tiny next to their bias)",
                notes.count,
            )
        proto = onnx.load(str(quantized))

    return proto


def _shape_arithmetic(model: Any) -> list[str]:
    """Names of the nodes that compute sizes from tensor shapes (timm's dynamic "same" padding, for one).

    A tensor is shape arithmetic when it comes from a `Shape` node, or from a node whose inputs are all shape
    arithmetic or constants. Those values are pad widths and sizes, not activations: quantised, they are rounded
    to the calibrated grid and the graph pads wrongly (or fails) at sizes other than the calibration size.
    """
    constants = {initializer.name for initializer in model.graph.initializer}
    derived: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant":
            constants.update(node.output)
        elif node.op_type == "Shape" or (
            any(name in derived for name in inputs) and all(name in derived or name in constants for name in inputs)
        ):
            derived.update(node.output)
            names.append(node.name)
    return names


def _logit_nodes(model: Any) -> list[str]:
    """The quantisable nodes that compute the graph outputs, reached back through the final upsampling.

    Their outputs are the logits: quantised to 256 levels, neighbouring classes would tie and the arg-max take the
    first of them. They stay float (one small per-pixel operation each).
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    names = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type not in QUANTIZED_OPS and node.input:
            node = producers.get(node.input[0])
        if node is not None:
            names.append(node.name)
    return names


def _high_resolution_stem(model: Any, max_stride: int) -> list[str]:
    """The quantisable nodes computed before the network first goes below 1/`max_stride` of the input resolution.

    The cumulative stride of each tensor is followed from the inputs through the strided operators (Conv and
    pooling); the walk stops at the first one whose output is coarser than `max_stride`.
    """
    if max_stride < 1:
        return []
    strides: dict[str, int] = {}
    names = []
    for node in model.graph.node:  # topologically sorted
        stride = max((strides.get(name, 1) for name in node.input if name), default=1)
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            attributes = {attribute.name: attribute for attribute in node.attribute}
            stride *= max(attributes["strides"].ints, default=1) if "strides" in attributes else 1
        if stride > max_stride:
            break
        strides.update(dict.fromkeys(node.output, stride))
        if node.op_type in QUANTIZED_OPS:
            names.append(node.name)
    return names
