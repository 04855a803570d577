"""Deprecated paths of the inference API (they go in the next release).

`Segmenter` is `bridgeseg.Predictor`, `load_segmentor` is `bridgeseg.load_model`, the checkpoint functions live
in `bridgeseg.checkpoints` and `image_to_tensor` is `bridgeseg.images.to_tensor`.
"""

from bridgeseg._deprecated import warn_moved
from bridgeseg.checkpoints import (  # noqa: F401
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    convert_checkpoint,
    save_checkpoint,
)
from bridgeseg.checkpoints import load_model as load_segmentor  # noqa: F401
from bridgeseg.images import to_tensor as image_to_tensor  # noqa: F401
from bridgeseg.predictor import Prediction  # noqa: F401
from bridgeseg.predictor import Predictor as Segmenter  # noqa: F401

warn_moved("bridgeseg.inference", "bridgeseg.predictor (Predictor), bridgeseg.checkpoints and bridgeseg.images")
