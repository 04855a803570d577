"""The backbone interface: images in, four feature maps at strides 4, 8, 16 and 32 out, with their shapes."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

__all__ = ["REDUCTIONS", "Backbone", "PathLike", "pretrained_file"]

REDUCTIONS = (4, 8, 16, 32)

PathLike = str | os.PathLike


class Backbone(nn.Module):
    """Base class of all backbones: images in, four feature maps at strides 4, 8, 16, 32 out.

    Attributes:
        name: The name the backbone was created from, enough to create it again.
        channels: Channels of each returned level.
        reductions: Stride of each returned level w.r.t. the input, always ``[4, 8, 16, 32]``.
        mean: Per-channel mean used to normalise images scaled to [0, 1] before they enter the backbone.
        std: Per-channel standard deviation, same convention.
        attention_pool: CLIP's attention pooling head for open_clip ResNets (DenseCLIP applies it densely to the
            stride-32 map), else ``None``. It is not used by :meth:`forward`; a model that does not use it can set
            it to ``None`` so that it holds no unused parameters.
    """

    def __init__(
        self,
        name: str,
        channels: list[int],
        reductions: list[int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        attention_pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.channels = list(channels)
        self.reductions = list(reductions)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # Set per instance, not as a class default: nn.Module resolves submodules only after class attributes.
        self.attention_pool = attention_pool

    def forward(self, images: Tensor) -> list[Tensor]:
        """Computes the feature pyramid.

        Args:
            images: Normalised images, ``[B, 3, H, W]`` (normalise with :attr:`mean` and :attr:`std`).

        Returns:
            Four NCHW maps ``[B, channels[i], ~H / reductions[i], ~W / reductions[i]]``.
        """
        raise NotImplementedError

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{self.name} expects normalised images of shape [B, 3, H, W], got {tuple(images.shape)}; "
                "add a batch dimension or convert grayscale/RGBA images to RGB."
            )


def pretrained_file(pretrained: bool | PathLike) -> Path | None:
    """The local weights file a `pretrained` argument names, or None for True and False.

    Raises:
        TypeError: `pretrained` is neither a bool nor a path.
        FileNotFoundError: There is no such file.
    """
    if isinstance(pretrained, bool):
        return None
    if not isinstance(pretrained, str | os.PathLike):
        raise TypeError(f"pretrained must be a bool or a path, got {type(pretrained).__name__}.")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights file {str(path)!r} does not exist.")
    return path
