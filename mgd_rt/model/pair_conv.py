"""Depthwise Conv3d over a depth-2 stack, the fusion step MGD-SAM2 uses in its adapters and DRM.

The authors stack two (B, C, H, W) maps on a depth axis and run a depthwise
Conv3d(kernel (2, 3, 3), stride (2, 1, 1), padding (0, 1, 1)). That is exactly two depthwise
Conv2d, one per depth slice, summed: the form ONNX exporters and TensorRT handle well
(no 5-D tensors). Both forms read the same Conv3d weights, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgd_rt.model.switch import switch_modules


class DepthPairConv(nn.Conv3d):
    """Depthwise Conv3d fusing two maps; ``as_conv2d`` selects the export form."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            channels,
            channels,
            kernel_size=(2, 3, 3),
            stride=(2, 1, 1),
            padding=(0, 1, 1),
            groups=channels,
        )
        self.as_conv2d = False

    def fuse(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, C, H, W) -> (B, C, H, W)."""
        if not self.as_conv2d:
            return super().forward(torch.stack([first, second], dim=2)).squeeze(2)
        # weight (C, 1, 2, 3, 3): depth slice k applies to the k-th stacked map
        w_first, w_second = self.weight[:, :, 0], self.weight[:, :, 1]
        out = F.conv2d(first, w_first, None, padding=1, groups=self.groups)
        return out + F.conv2d(second, w_second, self.bias, padding=1, groups=self.groups)


def use_conv2d_pairs(model: nn.Module, enabled: bool = True) -> int:
    """Switch every DepthPairConv in ``model`` to (or from) the two-Conv2d form; returns how many."""
    return switch_modules(model, DepthPairConv, "as_conv2d", enabled)
