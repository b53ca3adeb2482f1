"""DRM (``detail_enhance``): restores full-resolution detail from the image itself."""

from __future__ import annotations

import torch
from torch import nn

from mgd_rt.model.concat_conv import ConcatConv
from mgd_rt.model.pair_conv import DepthPairConv
from mgd_rt.model.views import patches2image, resize, split_views


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class MultiKernelEnhance(nn.Module):
    """The authors' ``ME`` block: 3/5/7 kernels in parallel, projected back, residual ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.linear = nn.Conv2d(channels, half, kernel_size=1)
        self.conv1 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half))
        self.conv2 = nn.Sequential(nn.Conv2d(half, half, 5, padding=2), nn.BatchNorm2d(half))
        self.conv3 = nn.Sequential(nn.Conv2d(half, half, 7, padding=3), nn.BatchNorm2d(half))
        self.projector = nn.Sequential(
            nn.ReLU(), ConcatConv(half * 3, channels), nn.BatchNorm2d(channels)
        )
        self.na = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.linear(x)
        relu, project, norm = self.projector
        # the ReLU of the concatenation is the concatenation of the ReLUs: each branch's ReLU
        # then fuses into its convolution, and the projection can take the branches apart
        y = project.of(relu(self.conv1(y)), relu(self.conv2(y)), relu(self.conv3(y)), norm=norm, residual=x)
        return self.na(y)


class DetailRefinement(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.img_in_conv = nn.Sequential(*_conv_bn_relu(3, channels))
        self.img_er = MultiKernelEnhance(channels)
        self.fusion_conv = nn.Sequential(*_conv_bn_relu(channels, 32), *_conv_bn_relu(32, 16))
        self.fusion_feature = DepthPairConv(channels)
        self.fusion_feature_bn = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())
        self.out_conv = nn.Conv2d(16, 1, kernel_size=1)
        self.feature_upsample1 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        )
        self.feature_upsample2 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_conv_bn_relu(channels, channels),
        )
        self.feature_upsample3 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_conv_bn_relu(channels, channels),
        )

    def forward(self, image: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S), up (5B, 32, S/8, S/8) -> mask logits (B, 1, S, S)."""
        local_up, global_up = split_views(up)
        features = self.fusion_feature.fuse(patches2image(local_up), self.feature_upsample1(global_up))
        features = self.fusion_feature_bn(features)  # (B, 32, S/4, S/4)
        detail = self.img_er(self.img_in_conv(image))  # (B, 32, S, S)
        features = self.feature_upsample2(features + resize(detail, features.shape[-2:]))
        features = self.feature_upsample3(features + resize(detail, features.shape[-2:]))
        return self.out_conv(self.fusion_conv(features))
