"""An exported ONNX graph checked against PyTorch (`check_parity`: logits and labels on random images)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bridgeseg.runtime.onnx.metadata import decode_metadata, ort_session

_PARITY_SIZES = ((64, 96), (128, 64))

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
