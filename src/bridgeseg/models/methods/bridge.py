"""The paper's method: backbone → BridgeFusion(C5, text) → Semantic FPN → cosine to the fused text tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from bridgeseg.models.decoders import SemanticFPN
from bridgeseg.models.fusion import BridgeFusion, Temperature, cosine_logits
from bridgeseg.models.heads import LanguageHead
from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["BridgeModel"]


@register_method("bridge")
class BridgeModel(SegmentationModel):
    """The paper's method: backbone → BridgeFusion(C5, text) → Semantic FPN → cosine to the fused text tokens."""

    def _build(self) -> None:
        cfg = self.config
        if cfg.fusion_levels not in (1, 2):
            raise ValueError(f"fusion_levels must be 1 (C5) or 2 (C4 and C5), got {cfg.fusion_levels}")
        channels = list(self.backbone.channels)

        def fusion(in_channels: int, text_dim: int | None) -> BridgeFusion:
            return BridgeFusion(
                in_channels,
                text_dim,
                dim=cfg.fusion_dim,
                num_heads=cfg.fusion_heads,
                num_blocks=cfg.fusion_blocks,
                bridge=cfg.bridge,
                v2t_kv_proj=cfg.v2t_kv_proj,
                cnn_branch=cfg.cnn_branch,
                identity_start=cfg.identity_start,
                full_projection=cfg.full_projection,
            )

        # With two levels, C4's module projects the text and hands its tokens on to C5's.
        self.fusion_c4 = fusion(channels[-2], self.text_dim) if cfg.fusion_levels == 2 else None
        self.fusion = fusion(channels[-1], None if self.fusion_c4 is not None else self.text_dim)
        kept = channels if cfg.keep_c5 else [0] * len(channels)
        decoder_channels = channels[:-2]
        decoder_channels.append(kept[-2] + cfg.fusion_dim if self.fusion_c4 is not None else channels[-2])
        decoder_channels.append(kept[-1] + cfg.fusion_dim + (self.num_classes if cfg.concat_score_map else 0))
        self.decoder = SemanticFPN(decoder_channels, cfg.decoder_channels, cfg.decoder_stride)
        self.head = LanguageHead(
            cfg.decoder_channels, cfg.fusion_dim, cfg.tau, cfg.learnable_tau, pixel_projection=cfg.pixel_projection
        )
        self.score_temperature = Temperature(cfg.tau, cfg.learnable_tau)

    @property
    def open_vocabulary(self) -> bool:
        return not self.config.concat_score_map

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        if not self.config.concat_score_map:
            return {}
        # The score map (one channel per class) is concatenated last onto the top lateral conv's input.
        lateral = self.decoder.laterals[-1][0]
        return {
            f"decoder.laterals.{len(self.decoder.laterals) - 1}.0.weight": (1, lateral.in_channels - self.num_classes)
        }

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        cfg = self.config
        features = list(self.backbone(images))
        if self.fusion_c4 is None:
            pixels, tokens = self.fusion(features[-1], text_embeddings)  # [B, D, h, w], [B, K, D]
        else:
            pixels_c4, tokens = self.fusion_c4(features[-2], text_embeddings)
            features[-2] = torch.cat([features[-2], pixels_c4], dim=1) if cfg.keep_c5 else pixels_c4
            pixels, tokens = self.fusion(features[-1], tokens=tokens)
        scores = None
        if cfg.concat_score_map or (self.training and cfg.aux_weight > 0):
            scores = cosine_logits(pixels, tokens, self.score_temperature())  # [B, K, h, w]
        # keep_c5: the untouched C5 goes on beside the fused map, so the fusion can only add to it.
        top = [features[-1], pixels] if cfg.keep_c5 else [pixels]
        if cfg.concat_score_map:
            top.append(scores)
        embeddings = self.decoder([*features[:-1], torch.cat(top, dim=1)])
        return {"logits": self.head(embeddings, tokens), "aux": scores}
