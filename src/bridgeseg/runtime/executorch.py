"""ExecuTorch with XNNPACK: export a model to a `.pte` program and run it as a prediction backend (the phone path).

`export_executorch` traces the model with `torch.export` at one static input size (XNNPACK delegates bilinear
upsampling only with static output sizes), lowers it with `to_edge_transform_and_lower(..., partitioner=
[XnnpackPartitioner()])` and writes the program. int8: PT2E post-training quantisation with the XNNPACK quantiser
(symmetric, weights per output channel, activations per tensor), calibrated on training images. Operators XNNPACK
does not take (LayerNorm and the L2 normalisation of the text-conditioned heads, among others) run on ExecuTorch's
portable kernels, between delegated parts.

The program is one file: the bridgeseg metadata (the same keys as an ONNX file's, plus ``input_size``, and the
probe fingerprint recorded at that size) is a constant method, ``bridgeseg_metadata``, holding the UTF-8 JSON as
uint8, so `ExecuTorchBackend` decodes and checks it as the other runtimes do (`bridgeseg.onnx.GraphBackend`).

Only the fixed-vocabulary form: the class list is baked in. Only one input size: `ExecuTorchBackend` pads smaller
images (after the loop's padding to a multiple of 32) with the mean colour up to it and crops the logits back,
which is close to, but not the same as, PyTorch at the image's own size; larger images need ``mode="slide"`` with
``crop_size`` at most the exported size, or a resize, or another export.

Example:
    >>> export_executorch(model, "model.pte", size=(512, 512))  # doctest: +SKIP
    >>> predictor = bridgeseg.Predictor.from_checkpoint("model.pte")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bridgeseg.errors import CheckpointError, first_line
from bridgeseg.io import check_writable, write_atomically
from bridgeseg.onnx import (
    OUTPUTS,
    PROBE_KEY,
    SIZE_MULTIPLE,
    ExportModule,
    GraphBackend,
    decode_metadata,
    encode_probe,
    export_metadata,
    probe_means,
    resolve_vocabulary,
)

__all__ = ["METADATA_METHOD", "ExecuTorchBackend", "export_executorch", "import_executorch"]

logger = logging.getLogger(__name__)

METADATA_METHOD = "bridgeseg_metadata"
"""The program's constant method holding the metadata (UTF-8 JSON as a uint8 tensor)."""


def import_executorch() -> Any:
    """The `executorch.runtime` module, or an ImportError that says how to install ExecuTorch."""
    try:
        import executorch.runtime
    except ImportError as error:
        raise ImportError(
            f"ExecuTorch is not installed ({error}); install it with `pip install 'bridgeseg[executorch]'`"
        ) from error
    return executorch.runtime


def _calibration_batches(calibration: Any, num_images: int, size: tuple[int, int]) -> list[Tensor]:
    """Calibration images [1, 3, H, W]: the short side resized to cover (H, W), the centre cropped."""
    from bridgeseg.quantization import calibration_images, load_calibration_image

    height, width = size
    batches = []
    for file in calibration_images(calibration, num_images):
        square = torch.from_numpy(load_calibration_image(file, max(height, width)))
        top, left = (square.shape[-2] - height) // 2, (square.shape[-1] - width) // 2
        batches.append(square[..., top : top + height, left : left + width].contiguous())
    return batches


def _quantize(program: Any, batches: Sequence[Tensor]) -> nn.Module:
    """PT2E int8 with the XNNPACK quantiser: the exported graph annotated, calibrated on `batches`, converted."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    for batch in batches:
        prepared(batch)
    return convert_pt2e(prepared)


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike[str],
    size: tuple[int, int] = (512, 512),
    classes: Sequence[str] | None = None,
    output: str = "logits",
    calibration: Any = None,
    num_images: int = 32,
) -> Path:
    """Export a segmentor to an ExecuTorch program lowered to XNNPACK, with its metadata, written atomically.

    Args:
        model: A model (`bridgeseg.create_model` or `bridgeseg.load_model`).
        path: Destination `.pte` file.
        size: The static input size (height, width), multiples of 32.
        classes: Class names baked in (default: the model's); new names need an open-vocabulary model.
        output: "logits" (full size) or "coarse_logits" (at the decoder's stride; faster labels), as for ONNX.
        calibration: A folder of training images (or a list of files): quantise to int8 on `num_images` of them,
            resized and centre-cropped to `size`; None: float32.
        num_images: Calibration images, spread over the folder.

    Returns:
        The written path.

    Raises:
        ValueError: A bad size, output or suffix, or new classes for a closed-set model.
        ImportError: ExecuTorch is not installed.
        OSError: `path` cannot be written (checked before the export, which takes minutes).
    """
    path = Path(path)
    height, width = size
    if path.suffix != ".pte":
        raise ValueError(f"an ExecuTorch program is a .pte file, got {path}")
    if height < SIZE_MULTIPLE or width < SIZE_MULTIPLE or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"the input size must be positive multiples of {SIZE_MULTIPLE}, got {height}x{width}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")
    import_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    classes, embeddings = resolve_vocabulary(model, classes)
    batches = None if calibration is None else _calibration_batches(calibration, num_images, (height, width))
    check_writable(path)
    images = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    module = ExportModule(model, embeddings, False, output).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(module, (images,))
            network: nn.Module = module
            if batches is not None:
                network = _quantize(program, batches)
                program = torch.export.export(network, (images,))
            # The blank probe at the static size (`probe_feed` reads `input_size`); int8: the quantised graph's.
            probe = network(images).float().cpu().numpy()
    finally:
        model.train(was_training)
    stride = height // probe.shape[-2]
    metadata = export_metadata(model, classes, embeddings, False, output, stride)
    metadata |= {"input_size": json.dumps([height, width]), PROBE_KEY: encode_probe(probe_means(probe))}
    if batches is not None:
        metadata |= {"precision": "int8", "calibration_images": str(len(batches)), "calibration_size": str(height)}
    encoded = torch.frombuffer(bytearray(json.dumps(metadata).encode()), dtype=torch.uint8)
    lowered = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()], constant_methods={METADATA_METHOD: encoded}
    )
    buffer = lowered.to_executorch().buffer
    path = write_atomically(path, lambda file: file.write(buffer))
    logger.debug("wrote %s (%dx%d, %d classes%s)", path, height, width, len(classes), ", int8" * bool(batches))
    return path


class ExecuTorchBackend(GraphBackend):
    """An ExecuTorch program (`.pte`) on the ExecuTorch runtime (XNNPACK), as a backend of the shared loop.

    Args:
        path: A `.pte` file written by `export_executorch`.
        threads: XNNPACK's thread pool size; it is process-wide, so the last backend created sets it. None:
            ExecuTorch's default.

    Attributes:
        input_size: The static (height, width) the program takes.

    Raises:
        FileNotFoundError: No such file.
        ImportError: ExecuTorch is not installed.
        CheckpointError: Not a program ExecuTorch loads, no or damaged bridgeseg metadata, or a graph that
            disagrees with its metadata (see `GraphBackend`); checked here, at load.
    """

    runtime_name = "ExecuTorch"
    runtime = "executorch"
    export_command = "bridgeseg export --format executorch"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ExecuTorch program {path} not found; export one with `bridgeseg export --format executorch "
                f"--out {path}`"
            )
        runtime = import_executorch()
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            program = runtime.Runtime.get().load_program(path)
            names = set(program.method_names)
            raw = {}
            if METADATA_METHOD in names:
                encoded = program.load_method(METADATA_METHOD).execute([])[0]
                raw = json.loads(bytes(encoded.numpy().tobytes()).decode())
            self._forward = program.load_method("forward")
        except Exception as error:  # the runtime raises RuntimeError / ValueError with its own text for damage
            raise CheckpointError(
                f"{path}: not a valid ExecuTorch program ({first_line(error)[:200]}); the file is truncated or "
                f"corrupt: re-export it with `{self.export_command}` or re-copy it"
            ) from error
        metadata = decode_metadata(raw, path)
        if "input_size" not in metadata or metadata["open_vocab"]:
            raise CheckpointError(
                f"{path}: its metadata is not an ExecuTorch program's; re-export it with `{self.export_command}`"
            )
        super().__init__(path, metadata)
        self.input_size: tuple[int, int] = metadata["input_size"]
        self._check_probe()

    def __repr__(self) -> str:
        height, width = self.input_size
        return f"{super().__repr__()[:-1]}, {height}x{width})"

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        images = torch.from_numpy(feed["images"])
        # The program's batch is 1.
        outputs = [self._forward.execute([images[i : i + 1].contiguous()])[0] for i in range(images.shape[0])]
        return torch.cat(outputs).float().numpy()

    def _run(self, images: Tensor, text_embeddings: Tensor | None) -> Tensor:
        """The program's output for images up to its input size: padded with the mean colour, cropped back."""
        height, width = images.shape[-2:]
        size_height, size_width = self.input_size
        if height > size_height or width > size_width:
            raise ValueError(
                f"{self.path.name} takes images up to {size_height}x{size_width} (its static input size), got "
                f"{height}x{width} after padding; predict with mode='slide' (--mode slide) and a crop size of at most "
                f"{min(size_height, size_width)}, resize the image, or export again with `--size {height}x{width}`"
            )
        if (height, width) == self.input_size:
            return super()._run(images, text_embeddings)
        padded = images.new_empty((*images.shape[:-2], size_height, size_width))
        padded[...] = self.pixel_mean.to(images)
        padded[..., :height, :width] = images
        logits = super()._run(padded, text_embeddings)
        stride = size_height // logits.shape[-2]
        return logits[..., : -(-height // stride), : -(-width // stride)]
