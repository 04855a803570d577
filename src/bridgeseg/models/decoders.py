"""Decoders shared by every method: a Semantic FPN slimmed to a lightweight budget."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution, BatchNorm and ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SemanticFPN(nn.Module):
    """Semantic FPN (Kirillov et al., 2019), the decoder DenseCLIP uses, at a lightweight width.

    Lateral 1×1 convs and a top-down sum build a pyramid; a 3×3 conv refines each level, every level is
    upsampled to stride 4 and summed, and a 1×1 conv mixes the sum into the pixel embeddings. Two changes keep
    it cheap: the width defaults to 96 instead of 256, and the 3×3 conv at stride 4 — which alone would cost
    more than the whole backbone at 256 channels — is depthwise-separable. mmseg's per-level scale heads (one
    3×3 conv per factor of 2 of upsampling) are folded into the single refinement conv per level.

    `output_stride=8` drops the stride-4 level: the pyramid merges at stride 8, the finest input is ignored, and the
    decoder and the classifier work on a quarter of the pixels (for CPUs, where the stride-4 stage's memory traffic
    costs more than its FLOPs suggest); the logits are upsampled 8× instead of 4×.

    Args:
        in_channels: Channels of the inputs, finest first (strides 4, 8, 16, 32).
        channels: Width of the pyramid and of the output embeddings.
        output_stride: 4 (merge at the finest level) or 8 (skip it).

    Example:
        >>> decoder = SemanticFPN([24, 40, 112, 256], channels=96)
        >>> feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([24, 40, 112, 256])]
        >>> decoder(feats).shape
        torch.Size([1, 96, 64, 64])
    """

    def __init__(self, in_channels: list[int], channels: int = 96, output_stride: int = 4) -> None:
        super().__init__()
        if output_stride not in (4, 8):
            raise ValueError(f"decoder output_stride must be 4 or 8, got {output_stride}")
        self.channels = channels
        self.skipped_levels = 0 if output_stride == 4 else 1
        in_channels = list(in_channels)[self.skipped_levels :]
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels)
        refine = [nn.Sequential(conv_bn_relu(channels, channels, 3, groups=channels), conv_bn_relu(channels, channels))]
        refine += [conv_bn_relu(channels, channels, 3) for _ in in_channels[1:]]
        self.refine = nn.ModuleList(refine)
        self.fuse = conv_bn_relu(channels, channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Decode `features` (finest first, strides 4 to 32) into embeddings [B, channels, H/s, W/s] (s: 4 or 8)."""
        features = features[self.skipped_levels :]
        pyramid = [lateral(x) for lateral, x in zip(self.laterals, features, strict=True)]
        for level in range(len(pyramid) - 1, 0, -1):
            # size= rather than scale_factor=2: inputs not divisible by 32 give odd-sized levels.
            pyramid[level - 1] = pyramid[level - 1] + F.interpolate(
                pyramid[level], size=pyramid[level - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        size = pyramid[0].shape[-2:]
        merged = self.refine[0](pyramid[0])
        for refine, level in zip(self.refine[1:], pyramid[1:], strict=True):
            merged = merged + F.interpolate(refine(level), size=size, mode="bilinear", align_corners=False)
        return self.fuse(merged)
