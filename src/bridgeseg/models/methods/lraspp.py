"""LR-ASPP (Howard et al., "Searching for MobileNetV3", ICCV 2019) as a closed-set light head on any backbone."""

from __future__ import annotations

from torch import Tensor
from torchvision.models.segmentation.lraspp import LRASPPHead

from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["LRASPPModel"]


@register_method("lraspp")
class LRASPPModel(SegmentationModel):
    """LR-ASPP's head on the backbone's stride-8 and stride-32 levels; a closed-set baseline without text.

    The head is torchvision's `LRASPPHead`, unchanged: a 1×1 conv + BN + ReLU on the high-level feature, scaled by
    a sigmoid of its global average pool (1×1 conv), upsampled to the low level and classified there, plus a 1×1
    classifier on the low-level feature. torchvision feeds it MobileNetV3's stride-8 and (dilated) stride-16
    features; our backbones are not dilated, so the high level is the stride-32 one. The logits are at stride 8
    whatever `decoder_stride` says; `decoder_channels` is the high branch's width (torchvision's is 128).
    """

    uses_text = False

    def _build(self) -> None:
        self.low_level = self.backbone.reductions.index(8)
        self.head = LRASPPHead(
            low_channels=self.backbone.channels[self.low_level],
            high_channels=self.backbone.channels[-1],
            num_classes=self.num_classes,
            inter_channels=self.config.decoder_channels,
        )

    @property
    def logits_stride(self) -> int:
        return self.backbone.reductions[self.low_level]

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        names = ("low_classifier.weight", "low_classifier.bias", "high_classifier.weight", "high_classifier.bias")
        return {f"head.{name}": (0, 0) for name in names}

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        features = self.backbone(images)
        logits = self.head({"low": features[self.low_level], "high": features[-1]})  # [B, K, H/8, W/8]
        return {"logits": logits, "aux": None}
