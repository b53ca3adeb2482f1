"""The multi-view layout every MGD-SAM2 module relies on.

A batch of B images of side S becomes N = 5B views of side S/2: the 4B local patches
first, image-major (img0 TL, TR, BL, BR, img1 TL, ...), then the B global views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def image2patches(x: torch.Tensor) -> torch.Tensor:
    """Cut each image into its 2x2 patches.

    (B, C, 2h, 2w) -> (4B, C, h, w), per image TL, TR, BL, BR.
    """
    _, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    x = x.reshape(-1, c, 2, h, 2, w)  # (B, C, hg, h, wg, w)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, hg, wg, C, h, w)
    return x.reshape(-1, c, h, w)


def patches2image(x: torch.Tensor) -> torch.Tensor:
    """Put the four patches of each image back in place; inverse of image2patches.

    (4B, C, h, w) -> (B, C, 2h, 2w).
    """
    _, c, h, w = x.shape
    x = x.reshape(-1, 2, 2, c, h, w)  # (B, hg, wg, C, h, w)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, hg, h, wg, w)
    return x.reshape(-1, c, 2 * h, 2 * w)


def split_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(5B, ...) -> locals (4B, ...), globals (B, ...)."""
    b = x.shape[0] // 5
    return x[: 4 * b], x[4 * b :]


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize, align_corners=False, no antialias: the authors' resize everywhere."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def make_views(image: torch.Tensor) -> torch.Tensor:
    """The network's first layer: (B, 3, S, S) -> (5B, 3, S/2, S/2), locals then globals."""
    side = image.shape[-1] // 2
    global_view = resize(image, (side, side))
    return torch.cat([image2patches(image), global_view], dim=0)
