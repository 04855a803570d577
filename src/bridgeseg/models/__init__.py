"""Models: the methods (one file each), text encoders, backbones, the bridge fusion module, decoders and heads.

One factory builds every method by name::

    model = create_model("bridge", backbone="efficientnet_lite0", text_encoder="minilm", classes=["sky", "cat"])
"""

from __future__ import annotations

from bridgeseg.models.methods import ModelConfig, SegmentationModel, create_model, list_methods

__all__ = ["ModelConfig", "SegmentationModel", "create_model", "list_methods"]
