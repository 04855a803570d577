"""SegFormer's all-MLP decode head (Xie et al., NeurIPS 2021) as a closed-set light head on any backbone."""

from __future__ import annotations

from torch import Tensor

from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["SegFormerHeadModel"]

CLASSIFIER_DROPOUT = 0.1  # SegFormer's (transformers' `classifier_dropout_prob`, mmseg's `dropout_ratio`)


@register_method("segformer")
class SegFormerHeadModel(SegmentationModel):
    """SegFormer's decode head on the backbone's levels; a closed-set baseline without text.

    The head is transformers' `SegformerDecodeHead`, unchanged: a linear layer per level to a common width, every
    level upsampled to the finest one, concatenated, fused by a 1×1 conv + BN + ReLU, then dropout and a 1×1
    classifier. It takes the backbone's strides 4 to 32 (its channels from the backbone's `feature_info`), or 8 to
    32 with `decoder_stride: 8`; the logits are at that stride. `decoder_channels` is the common width: ours (96)
    keeps the head at our decoder's cost; SegFormer-B0's is 256.
    """

    uses_text = False

    def _build(self) -> None:
        # transformers is imported here, not at module level: it takes seconds, and only this method needs it.
        from transformers import SegformerConfig
        from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

        stride = self.config.decoder_stride
        if stride not in (4, 8):
            raise ValueError(f"decoder_stride must be 4 or 8, got {stride}")
        self.first_level = self.backbone.reductions.index(stride)
        channels = self.backbone.channels[self.first_level :]
        head_config = SegformerConfig(
            num_encoder_blocks=len(channels),
            hidden_sizes=list(channels),
            decoder_hidden_size=self.config.decoder_channels,
            classifier_dropout_prob=CLASSIFIER_DROPOUT,
            num_labels=self.num_classes,
        )
        self.head = SegformerDecodeHead(head_config)

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        return {"head.classifier.weight": (0, 0), "head.classifier.bias": (0, 0)}

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        features = self.backbone(images)[self.first_level :]
        return {"logits": self.head(features), "aux": None}  # [B, K, H/s, W/s]
