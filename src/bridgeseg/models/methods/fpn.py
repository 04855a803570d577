"""The language-free baseline: backbone, Semantic FPN and a 1×1 conv classifier."""

from __future__ import annotations

from torch import Tensor

from bridgeseg.models.decoders import SemanticFPN
from bridgeseg.models.heads import ClosedSetHead
from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["FPNModel"]


@register_method("fpn")
class FPNModel(SegmentationModel):
    """The language-free baseline: backbone, Semantic FPN and a 1×1 conv classifier."""

    uses_text = False

    def _build(self) -> None:
        self.decoder = SemanticFPN(self.backbone.channels, self.config.decoder_channels, self.config.decoder_stride)
        self.head = ClosedSetHead(self.config.decoder_channels, self.num_classes)

    def class_indexed_weights(self) -> dict[str, tuple[int, int]]:
        return {"head.classifier.weight": (0, 0), "head.classifier.bias": (0, 0)}

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        return {"logits": self.head(self.decoder(self.backbone(images))), "aux": None}
