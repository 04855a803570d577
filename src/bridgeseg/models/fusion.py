"""The bridge fusion module: a CNN branch and a transformer branch in parallel with a two-way bridge.

Reconstructed from the abstract of "CLIP for Lightweight Semantic Segmentation" (Jin & Yang, 2023) after
Mobile-Former (Chen et al., 2022): the transformer branch holds one token per class (the text embeddings)
instead of Mobile-Former's few learned global tokens, the CNN branch refines the backbone's stride-32 map,
and cross-attention carries features across the bridge in both directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRIDGE_MODES = ("both", "v2t", "t2v", "none")
# Initial layer scale of an identity-start fusion module: DenseCLIP's γ for its context decoder.
IDENTITY_START_SCALE = 1e-4


class BridgeAttention(nn.Module):
    """Multi-head cross-attention whose projections can each be switched off.

    Mobile-Former keeps the local (pixel) side unprojected to stay cheap: on the vision→text side only the
    token queries are projected, on the text→vision side the raw feature map is the query. Unprojected inputs
    are split into heads as they are, so they must already have `dim` channels.

    Args:
        dim: Channels of queries, keys and values.
        num_heads: Attention heads; must divide `dim`.
        project_query: Apply a linear map to the queries.
        project_kv: Apply linear maps to keys and values.
    """

    def __init__(self, dim: int, num_heads: int, project_query: bool = True, project_kv: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion width {dim} is not divisible by {num_heads} heads; choose heads dividing it")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim) if project_query else nn.Identity()
        self.key = nn.Linear(dim, dim) if project_kv else nn.Identity()
        self.value = nn.Linear(dim, dim) if project_kv else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        """Attend from `queries` [B, Nq, D] to `context` [B, Nk, D]; returns [B, Nq, D]."""
        batch, num_queries, dim = queries.shape
        head_dim = dim // self.num_heads

        def split(x: Tensor) -> Tensor:  # [B, N, D] -> [B, heads, N, D / heads]
            return x.reshape(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(queries)), split(self.key(context)), split(self.value(context))
        )
        return self.out(attended.transpose(1, 2).reshape(batch, num_queries, dim))


class InvertedResidual(nn.Module):
    """MobileNetV2 block body (1×1 expand, 3×3 depthwise, 1×1 project); the caller adds the residual.

    Args:
        dim: Input and output channels.
        expansion: Hidden width relative to `dim`.
        zero_init: Start the last BatchNorm's γ at 0, so the block adds nothing until it has learned something
            (Goyal et al.'s zero-γ trick, as timm's `zero_init_last`).
    """

    def __init__(self, dim: int, expansion: int = 2, zero_init: bool = False) -> None:
        super().__init__()
        hidden = dim * expansion
        self.body = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
        )
        if zero_init:
            nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class LayerScale(nn.Module):
    """A learnable per-channel factor on a residual update, channels last (CaiT's LayerScale).

    Args:
        dim: Channels.
        init: Initial value of every factor; a small one makes the residual branch start as (almost) nothing.
    """

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class BridgeBlock(nn.Module):
    """One block, in Mobile-Former's order: vision→text bridge, transformer, CNN, text→vision bridge.

    Args:
        dim: Width of both branches.
        num_heads: Attention heads of the bridges and the token self-attention.
        vision_to_text: Enable the bridge that lets class tokens read the feature map.
        text_to_vision: Enable the bridge that writes class tokens into the feature map.
        v2t_kv_proj: Project keys/values on the vision→text side (Mobile-Former does not).
        t2v_q_proj: Project the pixel queries on the text→vision side (Mobile-Former does not).
        cnn_branch: Enable the inverted-residual CNN branch.
        ffn_expansion: Hidden width of the token FFN relative to `dim` (Mobile-Former: 2).
        layer_scale: Initial value of a learnable layer scale on every residual update (the three token updates
            and the text→vision write), and zero-initialised CNN residual; None for plain, unscaled residuals.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        vision_to_text: bool = True,
        text_to_vision: bool = True,
        v2t_kv_proj: bool = False,
        t2v_q_proj: bool = False,
        cnn_branch: bool = True,
        ffn_expansion: int = 2,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()

        def scale() -> nn.Module:
            return nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)

        self.v2t = (
            BridgeAttention(dim, num_heads, project_query=True, project_kv=v2t_kv_proj) if vision_to_text else None
        )
        self.v2t_norm = nn.LayerNorm(dim) if vision_to_text else None
        self.v2t_scale = scale() if vision_to_text else None
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn_scale = scale()
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_expansion), nn.GELU(), nn.Linear(dim * ffn_expansion, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_scale = scale()
        self.cnn = InvertedResidual(dim, zero_init=layer_scale is not None) if cnn_branch else None
        self.t2v = (
            BridgeAttention(dim, num_heads, project_query=t2v_q_proj, project_kv=True) if text_to_vision else None
        )
        self.t2v_scale = scale() if text_to_vision else None

    def forward(self, pixels: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Update both branches.

        Args:
            pixels: Vision branch [B, D, h, w].
            tokens: Text branch [B, K, D].

        Returns:
            The updated (pixels, tokens).
        """
        batch, dim, height, width = pixels.shape
        if self.v2t is not None:
            flat = pixels.flatten(2).transpose(1, 2)  # [B, h*w, D]
            tokens = self.v2t_norm(tokens + self.v2t_scale(self.v2t(tokens, flat)))
        attended = self.self_attn(tokens, tokens, tokens, need_weights=False)[0]
        tokens = self.attn_norm(tokens + self.attn_scale(attended))
        tokens = self.ffn_norm(tokens + self.ffn_scale(self.ffn(tokens)))
        if self.cnn is not None:
            pixels = pixels + self.cnn(pixels)
        if self.t2v is not None:
            flat = pixels.flatten(2).transpose(1, 2)
            written = self.t2v_scale(self.t2v(flat, tokens))  # [B, h*w, D]
            pixels = pixels + written.transpose(1, 2).reshape(batch, dim, height, width)
        return pixels, tokens


class BridgeFusion(nn.Module):
    """Align a lightweight backbone's stride-32 features with class text embeddings.

    Works for any number of classes K, so the vocabulary can change at inference.

    With `identity_start` the module begins as (almost) the identity on both branches: every residual update is
    multiplied by a learnable layer scale that starts at 1e-4 and every CNN residual's last BatchNorm γ starts at
    0, so at step 0 the fused pixels are the projected C5 and the fused tokens the projected text embeddings (a
    post-LayerNorm of an already normalised token changes it by less than its epsilon). A freshly initialised
    module then cannot scramble a pretrained backbone's features; it can only add to them as it learns, as
    DenseCLIP's context decoder does with its γ = 1e-4.

    Args:
        in_channels: Channels of the backbone feature map it fuses (C5, or C4 for the second level).
        text_dim: Size of the text embeddings; None for a level that is given already projected tokens.
        dim: Width D of both branches.
        num_heads: Attention heads.
        num_blocks: Number of bridge blocks N.
        bridge: Which bridge directions are on: "both", "v2t" (vision→text only), "t2v" or "none".
        v2t_kv_proj: Project keys/values on the vision→text side.
        cnn_branch: Enable the CNN branch in every block.
        identity_start: Start as the identity (layer scales at 1e-4, zero-γ CNN residuals).
        full_projection: Project queries, keys and values on both bridge sides (Mobile-Former leaves the pixel
            side unprojected); implies `v2t_kv_proj`.

    Example:
        >>> fusion = BridgeFusion(in_channels=320, text_dim=384)
        >>> pixels, tokens = fusion(torch.randn(2, 320, 8, 8), torch.randn(5, 384))
        >>> pixels.shape, tokens.shape
        (torch.Size([2, 256, 8, 8]), torch.Size([2, 5, 256]))
    """

    def __init__(
        self,
        in_channels: int,
        text_dim: int | None,
        dim: int = 256,
        num_heads: int = 4,
        num_blocks: int = 2,
        bridge: str = "both",
        v2t_kv_proj: bool = False,
        cnn_branch: bool = True,
        identity_start: bool = False,
        full_projection: bool = False,
    ) -> None:
        super().__init__()
        if bridge not in BRIDGE_MODES:
            raise ValueError(f"unknown bridge mode {bridge!r}; use one of {', '.join(BRIDGE_MODES)}")
        if num_blocks < 0:
            raise ValueError(f"fusion_blocks must be >= 0, got {num_blocks}")
        self.dim = dim
        self.pixel_proj = nn.Sequential(
            nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.token_proj = None if text_dim is None else nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.blocks = nn.ModuleList(
            BridgeBlock(
                dim,
                num_heads,
                vision_to_text=bridge in ("both", "v2t"),
                text_to_vision=bridge in ("both", "t2v"),
                v2t_kv_proj=v2t_kv_proj or full_projection,
                t2v_q_proj=full_projection,
                cnn_branch=cnn_branch,
                layer_scale=IDENTITY_START_SCALE if identity_start else None,
            )
            for _ in range(num_blocks)
        )

    def forward(
        self, features: Tensor, text_embeddings: Tensor | None = None, tokens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fuse.

        Args:
            features: C5 (or C4) [B, C, h, w].
            text_embeddings: [K, Dt], shared by the batch, or [B, K, Dt]; for a module with a text projection.
            tokens: Class tokens [B, K, D] carried over from another fusion level; for a module built with
                `text_dim=None`.

        Returns:
            Fused pixels X' [B, D, h, w] and class tokens Z' [B, K, D].
        """
        pixels = self.pixel_proj(features)
        if self.token_proj is None:
            if tokens is None:
                raise ValueError("this fusion level has no text projection: give it the tokens of the previous level")
        else:
            if text_embeddings is None:
                raise ValueError("give the text embeddings [K, Dt] to fuse")
            if text_embeddings.dim() == 2:
                text_embeddings = text_embeddings.unsqueeze(0).expand(features.shape[0], -1, -1)
            tokens = self.token_proj(text_embeddings)
        for block in self.blocks:
            pixels, tokens = block(pixels, tokens)
        return pixels, tokens


class Temperature(nn.Module):
    """Cosine-logit temperature tau, learnable as CLIP's logit scale or fixed.

    Args:
        tau: Initial (or fixed) temperature.
        learnable: Learn log(1/tau); clamped so 1/tau stays <= 100 as in CLIP.
    """

    def __init__(self, tau: float = 0.07, learnable: bool = True) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        scale = torch.tensor(math.log(1.0 / tau))
        if learnable:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self) -> Tensor:
        """Returns 1 / tau."""
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def cosine_logits(pixels: Tensor, classes: Tensor, scale: Tensor) -> Tensor:
    """Scaled cosine similarity between pixel embeddings and class embeddings.

    Args:
        pixels: [B, D, H, W].
        classes: [K, D] shared by the batch, or [B, K, D].
        scale: 1 / tau.

    Returns:
        Logits [B, K, H, W].
    """
    pixels = F.normalize(pixels, dim=1)
    classes = F.normalize(classes, dim=-1)
    if classes.dim() == 2:
        return torch.einsum("bdhw,kd->bkhw", pixels, classes) * scale
    return torch.einsum("bdhw,bkd->bkhw", pixels, classes) * scale
