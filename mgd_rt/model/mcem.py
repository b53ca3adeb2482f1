"""MCEM: multi-view context enhancement between the stride-16 local and global views."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from sam2.modeling.sam.transformer import Attention
from sam2.modeling.sam2_utils import MLP
from torch import nn

from mgd_rt.model.views import image2patches, patches2image


def sine_position_code(
    height: int, width: int, num_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """Normalised sine code (DETR style, as the authors compute it), float32 on the CPU.

    Returns (1, 2*num_feats, height, width): the y block, then the x block, each
    interleaving sin (even) and cos (odd) features.
    """
    ones = torch.ones(1, height, width)
    y_embed = ones.cumsum(dim=1)  # (1, H, W): 1..H down the rows
    x_embed = ones.cumsum(dim=2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[..., None] / dim_t  # (1, H, W, F)
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def quadrants(x: torch.Tensor) -> torch.Tensor:
    """(B, 2h, 2w, C) -> (4, B, h*w, C): TL, TR, BL, BR token sets."""
    b, hh, ww, c = x.shape
    x = x.reshape(b, 2, hh // 2, 2, ww // 2, c)  # (B, qh, h, qw, w, C)
    x = x.permute(1, 3, 0, 2, 4, 5)  # (qh, qw, B, h, w, C)
    return x.reshape(4, b, (hh // 2) * (ww // 2), c)


def from_quadrants(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(4, B, h*w, C) -> (B, 2h*2w, C) tokens of the whole image, row-major."""
    _, b, _, c = x.shape
    x = x.reshape(2, 2, b, h, w, c)  # (qh, qw, B, h, w, C)
    x = x.permute(2, 0, 3, 1, 4, 5)  # (B, qh, h, qw, w, C)
    return x.reshape(b, 4 * h * w, c)


class MCEM(nn.Module):
    """Local -> global attention over the whole image, then global -> local per quadrant."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, mlp_dim: int = 512) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.mlp1 = MLP(d_model, mlp_dim, d_model, num_layers=2)
        self.mlp2 = MLP(d_model, mlp_dim, d_model, num_layers=2)
        self.attention = nn.ModuleList(
            [Attention(d_model, num_heads, downsample_rate=2) for _ in range(5)]
        )
        # The authors compute the code once, at the first call's size, and bicubic-resize it
        # for later sizes. None means "at the size of each call" (a plain run at one size).
        self.code_grid: tuple[int, int] | None = None
        self._codes: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def position_codes(self, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes for the (2h, 2w) image grid and the (h, w) global grid, each (1, C, ., .).

        Computed in float32 on the CPU (as the authors do, whatever the model's dtype), then
        kept per size, device and dtype of ``like``.
        """
        grid = self.code_grid or (2 * h, 2 * w)
        key = (*grid, h, w, like.device, like.dtype)
        if key not in self._codes:
            code = sine_position_code(*grid, num_feats=self.norm1.normalized_shape[0] // 2)
            code_image = F.interpolate(code, size=(2 * h, 2 * w), mode="bicubic")
            code_global = F.interpolate(code_image, size=(h, w), mode="bicubic")
            self._codes[key] = (code_image.to(like), code_global.to(like))
        return self._codes[key]

    def forward(self, local_views: torch.Tensor, global_views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """local_views (4B, C, h, w), global_views (B, C, h, w) -> views (5B, C, h, w), image (B, C, 2h, 2w)."""
        b, c, h, w = global_views.shape
        image = patches2image(local_views)  # (B, C, 2h, 2w)
        code_image, code_global = self.position_codes(h, w, image)

        # local -> global, tokens flattened row-major: (B, HW, C)
        g = global_views.flatten(2).transpose(1, 2)
        img = image.flatten(2).transpose(1, 2)
        pe_g = code_global.flatten(2).transpose(1, 2)
        pe_img = code_image.flatten(2).transpose(1, 2)
        g = g + self.attention[0](g + pe_g, img + pe_img, img)
        g = self.norm1(g)
        g = self.norm2(g + self.mlp1(g))

        # global -> local, one quadrant at a time
        img_q = quadrants(image.permute(0, 2, 3, 1))  # (4, B, h*w, C)
        pe_img_q = quadrants(code_image.permute(0, 2, 3, 1))
        g_q = quadrants(g.reshape(b, h, w, c))  # (4, B, h*w/4, C)
        pe_g_q = quadrants(code_global.permute(0, 2, 3, 1))
        attended = torch.stack(
            [
                self.attention[q + 1](img_q[q] + pe_img_q[q], g_q[q] + pe_g_q[q], g_q[q])
                for q in range(4)
            ]
        )
        img = self.norm3(img + from_quadrants(attended, h, w))
        img = self.norm4(img + self.mlp2(img))

        image = img.transpose(1, 2).reshape(b, c, 2 * h, 2 * w)
        g_map = g.transpose(1, 2).reshape(b, c, h, w)
        return torch.cat([image2patches(image), g_map], dim=0), image


@contextmanager
def mcem_code_grid(model: nn.Module, size: int | None) -> Iterator[nn.Module]:
    """Every MCEM of ``model`` derives its sine code from the grid of input size ``size``; restored on exit.

    The authors' TTA quirk: their MCEM keeps the code of its first call, at
    0.75S in their TTA run, and bicubic-resizes it for every size. MCEM's image grid is
    (size/16, size/16): each S/2 view has a stride-16 embedding of S/32, and MCEM joins 2 x 2 of
    them. ``size`` None keeps the default (the code at each call's own size).
    """
    modules = [m for m in model.modules() if isinstance(m, MCEM)]
    saved = [m.code_grid for m in modules]
    for m in modules:
        m.code_grid = None if size is None else (size // 16, size // 16)
    try:
        yield model
    finally:
        for m, grid in zip(modules, saved, strict=True):
            m.code_grid = grid
