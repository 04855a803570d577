"""Classifier heads: the language classifier (cosine to text embeddings), a closed-set 1×1 conv, and LSeg's
spatial regularisation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bridgeseg.models.fusion import Temperature, cosine_logits


class LanguageHead(nn.Module):
    """Logits are `cos(E, W·t_k) / tau`: the classifier weights are (projected) text embeddings.

    Projecting the class embeddings into the pixel-embedding space, rather than every pixel into the text
    space, keeps the cost at stride 4 proportional to the decoder width; both are bilinear forms
    `eᵀ W t`, so the open vocabulary is kept.

    The decoder's output comes out of a ReLU, so every pixel embedding lies in the positive orthant and cannot point
    anywhere else on the sphere; `pixel_projection` adds a linear 1×1 convolution (no activation) before
    the normalisation, as LSeg's head does, so a pixel can point anywhere.

    Args:
        embed_dim: Channels of the pixel embeddings E.
        class_dim: Size of the class embeddings given to `forward`.
        tau: Initial temperature.
        learnable_tau: Learn the temperature.
        pixel_projection: Project the pixel embeddings linearly before the normalisation.
    """

    def __init__(
        self,
        embed_dim: int,
        class_dim: int,
        tau: float = 0.07,
        learnable_tau: bool = True,
        pixel_projection: bool = False,
    ) -> None:
        super().__init__()
        self.pixel_proj = nn.Conv2d(embed_dim, embed_dim, 1) if pixel_projection else None
        self.class_proj = nn.Linear(class_dim, embed_dim)
        self.temperature = Temperature(tau, learnable_tau)

    def forward(self, pixels: Tensor, class_embeddings: Tensor) -> Tensor:
        """`pixels` [B, E, H, W], `class_embeddings` [K, Dc] or [B, K, Dc] → logits [B, K, H, W]."""
        if self.pixel_proj is not None:
            pixels = self.pixel_proj(pixels)
        return cosine_logits(pixels, self.class_proj(class_embeddings), self.temperature())


class ClosedSetHead(nn.Module):
    """A fixed-vocabulary classifier: dropout and a 1×1 conv, as mmseg's decode heads."""

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.classifier(self.dropout(pixels))


class SpatialRegularization(nn.Module):
    """LSeg's spatial regularisation: depthwise blocks on the logits.

    One 3×3 kernel is shared by every class channel, so the block works for any number of classes; a
    residual keeps the logits' scale.

    Args:
        num_blocks: LSeg found two blocks best.
    """

    def __init__(self, num_blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in range(num_blocks))

    def forward(self, logits: Tensor) -> Tensor:
        batch, num_classes, height, width = logits.shape
        x = logits.reshape(batch * num_classes, 1, height, width)
        for block in self.blocks:
            x = x + F.leaky_relu(block(x), 0.1)
        return x.reshape(batch, num_classes, height, width)
