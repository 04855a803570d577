"""DenseCLIP (Rao et al., CVPR 2022) for a given backbone: dense attention pooling, post-model context prompting,
and the score map on C5."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bridgeseg.models.decoders import SemanticFPN
from bridgeseg.models.fusion import Temperature, cosine_logits
from bridgeseg.models.heads import ClosedSetHead
from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["ContextDecoder", "DenseAttentionPool", "DenseCLIPModel"]

logger = logging.getLogger(__name__)


@register_method("denseclip")
class DenseCLIPModel(SegmentationModel):
    """DenseCLIP for a given backbone: dense attention pool, context-aware prompting, score map on C5.

    With an open_clip ResNet backbone and a text encoder of the same embedding size, CLIP's own attention pool
    is used, as DenseCLIP does; otherwise the pool is randomly initialised, as DenseCLIP does for ImageNet
    backbones.
    """

    def _build(self) -> None:
        cfg = self.config
        channels = self.backbone.channels
        clip_pool = self.backbone.attention_pool
        if clip_pool is not None and clip_pool.c_proj.out_features == self.text_dim:
            spacial_dim = math.isqrt(clip_pool.positional_embedding.shape[0] - 1)
            pool = DenseAttentionPool(spacial_dim, channels[-1], clip_pool.num_heads, self.text_dim)
            pool.load_state_dict(clip_pool.state_dict())
        else:
            if clip_pool is not None:
                logger.warning(
                    "CLIP's attention pool outputs %d dims but the text encoder gives %d; using a random pool",
                    clip_pool.c_proj.out_features,
                    self.text_dim,
                )
            # 16 = 512 / 32: DenseCLIP's positional grid for 512-px crops.
            pool = DenseAttentionPool(16, channels[-1], None, self.text_dim)
        # The backbone's own copy would be an unused parameter set.
        self.backbone.attention_pool = None
        self.fusion = nn.ModuleDict({"attention_pool": pool, "context_decoder": ContextDecoder(self.text_dim)})
        self.decoder = SemanticFPN(
            [*channels[:-1], channels[-1] + self.num_classes], cfg.decoder_channels, cfg.decoder_stride
        )
        self.head = ClosedSetHead(cfg.decoder_channels, self.num_classes)
        self.score_temperature = Temperature(cfg.tau, cfg.learnable_tau)

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        # The classifier, and the top lateral conv, whose input is C5 with the score map (one channel per class)
        # concatenated after it.
        top = len(self.decoder.laterals) - 1
        return {
            "head.classifier.weight": (0, 0),
            "head.classifier.bias": (0, 0),
            f"decoder.laterals.{top}.0.weight": (1, self.backbone.channels[-1]),
        }

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        features = self.backbone(images)
        global_embedding, dense = self.fusion["attention_pool"](features[-1])  # [B, Dt], [B, Dt, h, w]
        context = torch.cat([global_embedding.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)
        text = self.fusion["context_decoder"](text_embeddings, context)  # [B, K, Dt]
        scores = cosine_logits(dense, text, self.score_temperature())  # [B, K, h, w]
        embeddings = self.decoder([*features[:-1], torch.cat([features[-1], scores], dim=1)])
        return {"logits": self.head(embeddings), "aux": scores}


def _num_heads(channels: int, head_dim: int = 64) -> int:
    """The largest head count with heads of about `head_dim` channels that divides `channels`."""
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


class DenseAttentionPool(nn.Module):
    """CLIP's attention pool applied at every location, as DenseCLIP does.

    Parameter names match open_clip's `AttentionPool2d`, so a CLIP ResNet's pretrained pool loads directly
    (`load_state_dict(visual.attnpool.state_dict())`); for ImageNet backbones it is randomly initialised, as
    DenseCLIP does for ResNet-18 and Swin. Every token (the mean token and each pixel) attends to all tokens.

    Args:
        spacial_dim: Side of the positional-embedding grid (interpolated to the input's size).
        embed_dim: Channels of the input feature map.
        num_heads: Attention heads; None picks heads of 64 channels.
        output_dim: Size of the output embeddings (the text embedding size).
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int | None, output_dim: int) -> None:
        super().__init__()
        self.spacial_dim = spacial_dim
        self.num_heads = num_heads or _num_heads(embed_dim)
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Pool `features` [B, C, h, w] into a global embedding [B, Do] and dense embeddings [B, Do, h, w]."""
        batch, channels, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # [B, h*w, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # [B, 1 + h*w, C]
        cls_pos, grid_pos = self.positional_embedding[:1], self.positional_embedding[1:]
        if (height, width) != (self.spacial_dim, self.spacial_dim):
            grid = grid_pos.reshape(1, self.spacial_dim, self.spacial_dim, channels).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
            grid_pos = grid.permute(0, 2, 3, 1).reshape(height * width, channels)
        tokens = tokens + torch.cat([cls_pos, grid_pos], dim=0)
        head_dim = channels // self.num_heads

        def split(x: Tensor) -> Tensor:  # [B, N, C] -> [B, heads, N, C / heads]
            return x.reshape(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        pooled = F.scaled_dot_product_attention(
            split(self.q_proj(tokens)), split(self.k_proj(tokens)), split(self.v_proj(tokens))
        )
        pooled = self.c_proj(pooled.transpose(1, 2).reshape(batch, -1, channels))  # [B, 1 + h*w, Do]
        dense = pooled[:, 1:].transpose(1, 2).reshape(batch, -1, height, width)
        return pooled[:, 0], dense


class ContextDecoder(nn.Module):
    """DenseCLIP's post-model (vision-to-language) prompting: `t ← t + γ · Decoder(t, visual context)`.

    A transformer decoder (self-attention over the class embeddings, cross-attention to the global and dense
    visual embeddings, MLP ×4) of 3 layers, width 256 and 4 heads, with γ a per-channel scale initialised to
    1e-4 so training starts from the plain text embeddings.

    Args:
        text_dim: Size of the text (and visual) embeddings.
        width: Decoder width.
        num_heads: Decoder heads.
        num_layers: Decoder layers.
        dropout: Dropout inside the decoder.
        gamma_init: Initial value of γ.
    """

    def __init__(
        self,
        text_dim: int,
        width: int = 256,
        num_heads: int = 4,
        num_layers: int = 3,
        dropout: float = 0.1,
        gamma_init: float = 1e-4,
    ) -> None:
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        layer = nn.TransformerDecoderLayer(
            width, num_heads, dim_feedforward=4 * width, dropout=dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, text_dim))
        self.gamma = nn.Parameter(torch.full((text_dim,), gamma_init))

    def forward(self, text_embeddings: Tensor, visual_context: Tensor) -> Tensor:
        """Refine `text_embeddings` [K, Dt] with `visual_context` [B, N, Dt]; returns [B, K, Dt]."""
        batch = visual_context.shape[0]
        text = text_embeddings.unsqueeze(0).expand(batch, -1, -1)
        refined = self.decoder(self.text_proj(text), self.memory_proj(visual_context))
        return text + self.gamma * self.out_proj(refined)
