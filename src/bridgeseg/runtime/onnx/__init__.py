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

from bridgeseg.runtime.onnx.backend import GraphBackend, OnnxBackend
from bridgeseg.runtime.onnx.export import (
    EXPORTERS,
    OPSET_RANGE,
    OUTPUTS,
    ExportModule,
    check_opset,
    export_metadata,
    export_onnx,
    resolve_vocabulary,
)
from bridgeseg.runtime.onnx.metadata import (
    INT8_PROBE_TOLERANCE,
    PROBE_KEY,
    SIZE_MULTIPLE,
    decode_metadata,
    encode_probe,
    ort_session,
    probe_feed,
    probe_logits,
    probe_means,
    probe_tolerance,
    read_metadata,
)
from bridgeseg.runtime.onnx.parity import ParityReport, check_parity

__all__ = [
    "EXPORTERS",
    "INT8_PROBE_TOLERANCE",
    "OPSET_RANGE",
    "OUTPUTS",
    "PROBE_KEY",
    "SIZE_MULTIPLE",
    "ExportModule",
    "GraphBackend",
    "OnnxBackend",
    "ParityReport",
    "check_opset",
    "check_parity",
    "decode_metadata",
    "encode_probe",
    "export_metadata",
    "export_onnx",
    "ort_session",
    "probe_feed",
    "probe_logits",
    "probe_means",
    "probe_tolerance",
    "read_metadata",
    "resolve_vocabulary",
]
