"""The multi-view layout every MGD-SAM2 module relies on.

A batch of B images of side S becomes N = 5B views of side S/2: the 4B local patches
first, image-major (img0 TL, TR, BL, BR, img1 TL, ...), then the B global views.

The CPU graph orders the local patches patch-major instead (every image's TL, then every TR, BL,
BR; :func:`patch_major_views`): cut and joined with slices and concatenations, which its runtimes
keep in their channels-last layout, where image-major order takes a reshape and a 6-D transpose
they run in the planar layout, a reorder of the whole map on each side. Every module reaches the
patches through :func:`image2patches` and :func:`patches2image` only, so either order gives the
same logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

# a context variable, not a module flag: an export in one thread leaves other threads' models alone
_patch_major: ContextVar[bool] = ContextVar("patch_major", default=False)


@contextmanager
def patch_major_views(enabled: bool = True) -> Iterator[None]:
    """Inside the context the local patches are patch-major (TL of every image, then TR, BL, BR).

    Only for graphs: the eager model keeps the authors' image-major order. B+ at 1024, OpenVINO fp32
    on Emerald Rapids: the CPU graph's layout reorders 320 -> 44 ms per image (MCEM, HMIM, the DRM and
    the adapters join and cut maps of up to 256 channels and 256 x 256 per image).
    """
    token = _patch_major.set(enabled)
    try:
        yield
    finally:
        _patch_major.reset(token)


def image2patches(x: torch.Tensor) -> torch.Tensor:
    """Cut each image into its 2x2 patches.

    (B, C, 2h, 2w) -> (4B, C, h, w), per image TL, TR, BL, BR (patch-major in :func:`patch_major_views`).
    """
    _, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    if _patch_major.get():
        return torch.cat([x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]], dim=0)
    x = x.reshape(-1, c, 2, h, 2, w)  # (B, C, hg, h, wg, w)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, hg, wg, C, h, w)
    return x.reshape(-1, c, h, w)


def patches2image(x: torch.Tensor) -> torch.Tensor:
    """Put the four patches of each image back in place; inverse of image2patches.

    (4B, C, h, w) -> (B, C, 2h, 2w).
    """
    if _patch_major.get():
        b = x.shape[0] // 4
        # slices, not chunk: chunk of the dynamic batch traces to a Split fixed at the example's size
        top_left, top_right, bottom_left, bottom_right = x[:b], x[b:2 * b], x[2 * b:3 * b], x[3 * b:]
        return torch.cat([torch.cat([top_left, top_right], dim=3), torch.cat([bottom_left, bottom_right], dim=3)],
                         dim=2)
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
