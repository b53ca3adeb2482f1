"""High-resolution window tiling: detail from overlapping S x S windows, guided by the global pass.

The network sees an S x S squeeze of the whole photo. With tiling the photo is also resized
to a working scale (default: native, long side capped at ``TILE_CAP x S``), cut into
overlapping S x S windows, and their logits are blended with smooth weights that sum to one
everywhere. The whole-image logits (resized to the working scale) decide what the object is:
where they are confident, windows are skipped or pulled towards them; where they are unsure
(edges, thin structures) the windows' detail wins.

Memory: the working-scale RGB (uint8), the blended logits and the global logits (float32)
at the working scale, plus one batch of windows; windows are streamed, never all held.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mgd_rt.runtime.processing import normalise, resize_logits, resize_rgb

TILE_CAP = 4  # working-scale long side at most TILE_CAP * S (4096 for B+ at 1024)
OVERLAP = 0.25  # fraction of S shared by neighbouring windows (at least)
# A window is skipped when every global logit over it is beyond +-SKIP_LOGIT (p < 2% or > 98%).
SKIP_LOGIT = 4.0
# How far the global pass's confidence overrides the windows: gate = 1 - |tanh(g / (2 T))|.
GUIDE_TEMPERATURE = 2.0


@dataclass
class TileStats:
    """What tiling did for one image."""

    scale: float
    height: int  # working-scale size
    width: int
    windows_total: int
    windows_run: int


def working_scale(height: int, width: int, size: int, tile_scale: float | None = None) -> float:
    """The factor applied to the photo before cutting windows.

    ``tile_scale`` None: native resolution, capped so the long side is at most TILE_CAP * S.
    The short side is kept at least S, so every window lies inside the image.
    """
    scale = min(1.0, TILE_CAP * size / max(height, width)) if tile_scale is None else float(tile_scale)
    return max(scale, size / min(height, width))


def window_starts(length: int, size: int, overlap: float = OVERLAP) -> list[int]:
    """Start offsets of S-wide windows covering ``length`` (>= S) with at least ``overlap`` shared."""
    if length <= size:
        return [0]
    stride = size * (1.0 - overlap)
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def axis_weights(length: int, starts: list[int], size: int, ramp: int | None = None) -> np.ndarray:
    """(n, S) float64 blending weights along one axis; at every position they sum to one.

    Each window's raw weight rises from ~0 to 1 over ``ramp`` pixels with a raised cosine at
    its inner edges (none at the image border), so the normalised weights are smooth: no seams.
    """
    ramp = ramp or max(1, int(size * OVERLAP))
    t = np.arange(size, dtype=np.float64) + 0.5
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(1.0, t / ramp))  # (S,), from ~0 to 1
    raw = np.empty((len(starts), size))
    for i, s in enumerate(starts):
        left = rise if s > 0 else 1.0
        right = rise[::-1] if s + size < length else 1.0
        raw[i] = np.minimum(left, right)
    total = np.zeros(length)
    for i, s in enumerate(starts):
        total[s : s + size] += raw[i]
    return np.stack([raw[i] / total[s : s + size] for i, s in enumerate(starts)])  # (n, S)


def tiled_logits(
    rgb: np.ndarray,
    global_logits: np.ndarray,
    infer: Callable[[np.ndarray], np.ndarray],
    size: int,
    batch_size: int = 1,
    tile_scale: float | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, TileStats]:
    """Blend window logits into a working-scale logit map guided by the global logits.

    rgb: (H, W, 3) uint8, global_logits: (S, S) float32 of the whole-image pass,
    infer: (b, 3, S, S) float32 -> (b, 1, S, S) float32. Returns (h, w) float32 logits at the
    working scale (post-process them to (H, W) like plain logits) and the statistics.
    """
    height, width = rgb.shape[:2]
    scale = working_scale(height, width, size, tile_scale)
    h, w = max(size, round(height * scale)), max(size, round(width * scale))
    work = resize_rgb(rgb, w, h)  # (h, w, 3) uint8; Pillow antialiased bilinear, as the global view
    guide = resize_logits(global_logits, h, w)  # (h, w) float32
    ys, xs = window_starts(h, size), window_starts(w, size)
    wy, wx = axis_weights(h, ys, size), axis_weights(w, xs, size)
    blended = np.zeros((h, w), dtype=np.float32)
    norm = {} if mean is None else {"mean": mean, "std": std}

    pending: list[tuple[int, int, np.ndarray]] = []  # (row index, col index, weight) per window

    def flush(crops: list[np.ndarray]) -> None:
        logits = infer(np.stack(crops))[:, 0]  # (b, 1, S, S) -> (b, S, S)
        for (i, j, weight), window in zip(pending, logits, strict=True):
            y, x = ys[i], xs[j]
            blended[y : y + size, x : x + size] += weight * window
        pending.clear()
        crops.clear()

    crops: list[np.ndarray] = []
    run = 0
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            weight = np.outer(wy[i], wx[j]).astype(np.float32)  # (S, S), separable so sums to one
            region = guide[y : y + size, x : x + size]
            if np.abs(region).min() > SKIP_LOGIT:
                blended[y : y + size, x : x + size] += weight * region  # confident: the global pass is the window
                continue
            crops.append(normalise(work[y : y + size, x : x + size], **norm))  # (3, S, S)
            pending.append((i, j, weight))
            run += 1
            if len(crops) == batch_size:
                flush(crops)
    if crops:
        flush(crops)
    # guidance: final = g + gate * (windows - g); written so that windows == g gives g exactly
    gate = np.tanh(guide / (2.0 * GUIDE_TEMPERATURE))
    np.abs(gate, out=gate)
    np.subtract(1.0, gate, out=gate)
    blended -= guide
    blended *= gate
    blended += guide
    return blended, TileStats(scale, h, w, len(ys) * len(xs), run)
