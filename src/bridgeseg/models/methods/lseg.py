"""LSeg (Li et al., ICLR 2022): pixel embeddings matched to the text embeddings by cosine, then spatially
regularised."""

from __future__ import annotations

from torch import Tensor

from bridgeseg.models.decoders import SemanticFPN
from bridgeseg.models.heads import LanguageHead, SpatialRegularization
from bridgeseg.models.methods.base import SegmentationModel, register_method

__all__ = ["LSegModel"]


@register_method("lseg")
class LSegModel(SegmentationModel):
    """LSeg: pixel embeddings matched to the text embeddings by cosine, with spatial regularisation blocks."""

    def _build(self) -> None:
        cfg = self.config
        self.decoder = SemanticFPN(self.backbone.channels, cfg.decoder_channels, cfg.decoder_stride)
        self.head = LanguageHead(
            cfg.decoder_channels, self.text_dim, cfg.tau, cfg.learnable_tau, pixel_projection=cfg.pixel_projection
        )
        self.regularization = SpatialRegularization(num_blocks=2)

    @property
    def open_vocabulary(self) -> bool:
        return True

    def _forward(self, images: Tensor, text_embeddings: Tensor | None) -> dict[str, Tensor | None]:
        embeddings = self.decoder(self.backbone(images))
        return {"logits": self.regularization(self.head(embeddings, text_embeddings)), "aux": None}
