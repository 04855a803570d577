"""Parity of any exported-model backend with PyTorch: the same random images through both, logits compared."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bridgeseg.onnx import GraphBackend, ParityReport

__all__ = ["compare_with_pytorch"]


@torch.inference_mode()
def compare_with_pytorch(
    model: nn.Module, backend: GraphBackend, sizes: Sequence[tuple[int, int]], batch: int = 1, seed: int = 0
) -> ParityReport:
    """Run `backend` and `model` on the same random images [batch, 3, H, W] at each size and compare the outputs.

    The graph's own output is compared (coarse logits for a coarse export), with the classes in its metadata.

    Args:
        model: The model that was exported.
        backend: Its export on a runtime (`OpenVinoBackend`, `ExecuTorchBackend`, `OnnxBackend`).
        sizes: (height, width) pairs, multiples of 32 (for ExecuTorch: its input size).
        batch: Images per run.
        seed: Seed of the random images.

    Returns:
        The worst differences over all sizes.
    """
    text_embeddings = backend.text_embeddings(None)
    if text_embeddings is None and model.uses_text:
        text_embeddings = model.text_embeddings(backend.classes)
    coarse = backend.output == "coarse_logits"
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    worst_diff, worst_agreement, num_classes = 0.0, 1.0, 0
    try:
        for height, width in sizes:
            images = torch.rand(batch, 3, height, width, generator=generator)
            run = model.coarse_logits if coarse else model
            expected = run(images, text_embeddings).float()
            actual = backend._run(images, backend.text_embeddings(None))
            worst_diff = max(worst_diff, float((actual - expected).abs().max()))
            worst_agreement = min(worst_agreement, float((actual.argmax(1) == expected.argmax(1)).float().mean()))
            num_classes = expected.shape[1]
    finally:
        model.train(was_training)
    return ParityReport(worst_diff, worst_agreement, [tuple(size) for size in sizes], num_classes)
