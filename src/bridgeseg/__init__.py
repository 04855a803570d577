"""bridgeseg: language-guided lightweight semantic segmentation.

A small CNN backbone sees the image, a frozen text encoder turns class names into the classifier, and a
bridge fusion module (a CNN branch and a transformer branch with a two-way bridge) aligns the two.

Example:
    >>> import bridgeseg
    >>> model = bridgeseg.create_model("bridge", backbone="efficientnet_lite0", classes=["sky", "grass", "cat"])
"""

from bridgeseg.models import create_model, list_methods

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_methods"]
