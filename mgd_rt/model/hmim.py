"""HMIM: hierarchical multi-view interaction at one high-resolution level (stride 8 or 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_utils import LayerNorm2d
from torch import nn

from mgd_rt.model.concat_conv import ConcatConv
from mgd_rt.model.views import image2patches, patches2image, split_views


class HMIM(nn.Module):
    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.locpre2glb = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.fuse1 = ConcatConv(dim * 2, dim)
        self.glb2loc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.fuse2 = ConcatConv(dim * 2, dim)
        self.fuse3 = nn.Sequential(LayerNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, kernel_size=1))

    def forward(self, views: torch.Tensor, coarser_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """views (5B, C, H, W), coarser_image (B, C, H, W) -> views (5B, C, H, W), image (B, C, 2H, 2W)."""
        local_views, global_views = split_views(views)
        image = patches2image(local_views)  # (B, C, 2H, 2W)
        new_global = self.fuse1.of(global_views, self.locpre2glb(coarser_image), residual=global_views)
        global_up = F.interpolate(new_global, scale_factor=2.0, mode="bilinear", align_corners=False)
        new_image = self.fuse2.of(self.glb2loc(global_up), image, residual=image)
        out = self.fuse3(torch.cat([image2patches(new_image), new_global], dim=0))
        return out, patches2image(split_views(out)[0])
