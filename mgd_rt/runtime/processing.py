"""Pre- and post-processing exactly as the authors' test protocol (numpy + Pillow only).

- preprocess: Pillow's antialiased bilinear resize to S x S (what torchvision ``Resize`` does
  on a PIL image), /255, ImageNet normalisation, float32 (3, S, S).
- postprocess: logits -> bilinear resize (align_corners=False, no antialias, i.e.
  ``F.interpolate(mode="bilinear")``) to the original size -> sigmoid. Computed in strips of
  rows so an 8000 x 6000 matte never needs more than one float32 strip at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD

STRIP_ROWS = 512  # rows per post-processing strip: 512 x 8000 float32 = 16 MB


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's antialiased bilinear filter."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def normalise(
    rgb: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, h, w) float32, scaled to [0, 1] then normalised (ImageNet default)."""
    chw = rgb.transpose(2, 0, 1).astype(np.float32)  # (h, w, 3) -> (3, h, w)
    # same order of float32 operations as torchvision's ToTensor + Normalize
    chw /= 255.0
    chw -= np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    chw /= np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return chw


def normalise_batch(
    pixels: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """(B, h, w, 3) uint8 -> (B, 3, h, w) float32, each image as :func:`normalise`."""
    return np.stack([normalise(rgb, mean, std) for rgb in pixels])


def to_pixels(
    batch: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """(B, 3, h, w) normalised float32 -> (B, h, w, 3) uint8: the pixels it was made from.

    The inverse of :func:`normalise`, rounded: exact for input normalised from 8-bit pixels (float32
    error is far below half a level), clipped to 0..255 otherwise.
    """
    x = np.asarray(batch, dtype=np.float32) * np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    x += np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x *= 255.0
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))  # (B, 3, h, w) -> (B, h, w, 3)


def preprocess(
    image: np.ndarray, size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32 network input."""
    return normalise(resize_rgb(image, size, size), mean, std)


def source_coords(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps for align_corners=False, as PyTorch computes them.

    Returns (i0, i1, frac): output pixel k reads in[i0[k]] * (1 - frac[k]) + in[i1[k]] * frac[k].
    """
    scale = in_len / out_len
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative coordinates to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = (src - i0).astype(np.float32)
    return i0, i1, frac


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic, float32 in, float32 out."""
    out = np.multiply(x, 0.5, dtype=np.float32)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def resize_logits_strips(
    logits: np.ndarray, height: int, width: int, rows: int = STRIP_ROWS
) -> Iterator[tuple[int, np.ndarray]]:
    """(h, w) float32 logits -> strips (row0, (r, width) float32) of the bilinear resize.

    Separable: first along x for all h input rows ((h, width), small), then along y one strip
    of output rows at a time. When the size is unchanged the logits pass through untouched.
    """
    logits = np.asarray(logits, dtype=np.float32)
    h, w = logits.shape
    if (h, w) == (height, width):
        for r0 in range(0, height, rows):
            yield r0, logits[r0 : r0 + rows]
        return
    x0, x1, fx = source_coords(width, w)
    along_x = logits[:, x0] * (1.0 - fx) + logits[:, x1] * fx  # (h, w) -> (h, width)
    y0, y1, fy = source_coords(height, h)
    for r0 in range(0, height, rows):
        sl = slice(r0, min(r0 + rows, height))
        a = fy[sl, None]
        yield r0, along_x[y0[sl]] * (1.0 - a) + along_x[y1[sl]] * a  # (r, width)


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 -> (height, width) float32, bilinear, align_corners=False."""
    out = np.empty((height, width), dtype=np.float32)
    for r0, strip in resize_logits_strips(logits, height, width):
        out[r0 : r0 + len(strip)] = strip
    return out


def postprocess(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) logits -> (height, width) float32 probabilities: resize first, then sigmoid."""
    out = np.empty((height, width), dtype=np.float32)
    for r0, strip in resize_logits_strips(logits, height, width):
        out[r0 : r0 + len(strip)] = sigmoid(strip)
    return out


def postprocess_uint8(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) logits -> (height, width) uint8 matte, round(255 * p); only a strip in float32."""
    out = np.empty((height, width), dtype=np.uint8)
    for r0, strip in resize_logits_strips(logits, height, width):
        p = sigmoid(strip)
        p *= 255.0
        p += 0.5  # round half up; p >= 0 so floor(p + 0.5) is round
        out[r0 : r0 + len(strip)] = p.astype(np.uint8)
    return out


def postprocess_binary(logits: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """(h, w) logits -> (height, width) uint8 in {0, 255}: sigmoid(resized logit) > threshold.

    Compared in logit space (logit > log(t / (1 - t))), which is exact and needs no sigmoid.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} must lie strictly between 0 and 1")
    cut = np.float32(np.log(threshold / (1.0 - threshold)))
    out = np.empty((height, width), dtype=np.uint8)
    for r0, strip in resize_logits_strips(logits, height, width):
        out[r0 : r0 + len(strip)] = np.where(strip > cut, 255, 0)
    return out
