"""A 1x1 convolution over a channel concatenation, the fusion step of HMIM and the DRM's ME block.

A 1x1 Conv2d of ``cat([a, b, ...], dim=1)`` is the sum of 1x1 Conv2d of each part, each with its
slice of the input channels. The summed form writes no concatenated map: the export form for
CPUs, where the concatenation is a full copy of the maps (B+ at 1024: HMIM's stride-4 fusion
concatenates two 256-channel maps of 256 x 256) that the runtimes copy with a reference kernel.
Both forms read the same Conv2d weights, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgd_rt.model.switch import switch_modules


class ConcatConv(nn.Conv2d):
    """1x1 Conv2d over the channel concatenation of its inputs; ``as_sum`` selects the summed form."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
        self.as_sum = False

    def of(self, *parts: torch.Tensor, norm: nn.BatchNorm2d | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
        """``norm(conv(cat(parts))) + residual``: parts (B, C_i, H, W), their C_i summing to ``in_channels``,
        ``norm`` an eval-mode BatchNorm2d and ``residual`` (B, out_channels, H, W), both optional ->
        (B, out_channels, H, W)."""
        if not self.as_sum:
            out = self(torch.cat(parts, dim=1))
            out = out if norm is None else norm(out)
            return out if residual is None else out + residual
        weight, bias = self.weight, self.bias
        if norm is not None:  # folded: every Add below is then a convolution's sum, which runtimes fuse
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = (bias - norm.running_mean) * scale + norm.bias
        out, start = residual, 0
        for i, part in enumerate(parts):
            stop = start + part.shape[1]
            # the running sum enters each product as its sum operand; the bias rides on the last one
            term = F.conv2d(part, weight[:, start:stop], bias if i == len(parts) - 1 else None)
            out, start = (term if out is None else out + term), stop
        assert out is not None and start == self.in_channels, "parts do not cover the input channels"
        return out


def use_summed_concat_convs(model: nn.Module, enabled: bool = True) -> int:
    """Switch every ConcatConv in ``model`` to (or from) the summed form; returns how many."""
    return switch_modules(model, ConcatConv, "as_sum", enabled)
