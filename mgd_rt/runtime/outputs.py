"""The output formats of ``mgd-rt infer``, each written atomically at the original size.

- ``matte``: 8-bit grayscale PNG, round(255 * probability).
- ``binary``: PNG in {0, 255}, probability > threshold.
- ``rgba``: PNG cut-out, the estimated foreground colour (:mod:`mgd_rt.runtime.compose`) under
  the matte as alpha.
- ``overlay``: JPEG a person can judge at a glance: background dimmed, the object tinted,
  its outline at the threshold drawn in a bright colour.
- ``background``: JPEG composite of the object onto a colour, a blurred copy or another image.

``Cutout.invert`` keeps the background instead of the object: the logits are negated, so every
format (matte, binary, cut-out, overlay, composite) describes the other side.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from mgd_rt.runtime.compose import Cutout
from mgd_rt.runtime.image_io import save_image
from mgd_rt.runtime.processing import postprocess_binary, postprocess_uint8, resize_logits_strips, sigmoid
from mgd_rt.runtime.segmenter import Result

FORMATS: dict[str, str] = {"matte": ".png", "binary": ".png", "rgba": ".png", "overlay": ".jpg",
                           "background": ".jpg"}
_PIL_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 90})}
_TINT = np.array([40, 220, 90], dtype=np.float32)  # object tint
_OUTLINE = np.array([255, 40, 200], dtype=np.uint8)  # magenta: visible on most photos


def overlay_image(rgb: np.ndarray, logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 overlay of the mask from (h, w) logits, built strip by strip."""
    height, width = rgb.shape[:2]
    out = np.empty_like(rgb)
    for r0, strip in resize_logits_strips(logits, height, width):
        p = sigmoid(strip)[:, :, None]  # (r, W) -> (r, W, 1)
        rows = rgb[r0 : r0 + len(strip)].astype(np.float32)
        # background at 35% brightness, object kept and tinted 25% green
        blended = rows * (0.35 + 0.65 * p) * (1.0 - 0.25 * p) + _TINT * (0.25 * p)
        out[r0 : r0 + len(strip)] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    binary = postprocess_binary(logits, height, width, threshold)
    thickness = max(1, round(max(height, width) / 500))  # visible whatever the resolution
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    edge = cv2.morphologyEx(binary, cv2.MORPH_GRADIENT, kernel) > 0
    out[edge] = _OUTLINE
    return out


def render(result: Result, fmt: str, threshold: float = 0.5, cutout: Cutout | None = None) -> np.ndarray:
    """The output image of ``fmt``: (H, W) uint8 for matte / binary, (H, W, 4) for rgba, else (H, W, 3)."""
    cutout = cutout or Cutout()
    height, width = result.size
    logits = -result.logits if cutout.invert else result.logits  # sigmoid(-x) = 1 - sigmoid(x)
    if fmt == "matte":
        return postprocess_uint8(logits, height, width)
    if fmt == "binary":
        return postprocess_binary(logits, height, width, threshold)
    if fmt == "rgba":
        return cutout.rgba(result.image, postprocess_uint8(logits, height, width))
    if fmt == "overlay":
        return overlay_image(result.image, logits, threshold)
    if fmt == "background":
        return cutout.composite(result.image, postprocess_uint8(logits, height, width))
    raise ValueError(f"unknown format {fmt!r}")


def _pil(array: np.ndarray) -> Image.Image:
    """(H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA."""
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(array), mode)


def write_failure(source: object, target: object, exc: OSError) -> str:
    """The one line for an output that could not be written (a full disk, a file-size limit, a vanished
    folder): the input, the output it was going to, and the system's reason."""
    return f"{source}: cannot write the output {target} ({exc.strerror or exc})"


def write_result(
    result: Result, path: Path, fmt: str, threshold: float = 0.5, cutout: Cutout | None = None
) -> Path:
    """Encode ``result`` in format ``fmt`` and write it to ``path`` via a temporary file."""
    pil_format, params = _PIL_FORMATS[FORMATS[fmt]]
    return save_image(_pil(render(result, fmt, threshold, cutout)), path, pil_format, **params)


def write_result_stream(
    result: Result, stream: BinaryIO, fmt: str, threshold: float = 0.5, cutout: Cutout | None = None
) -> None:
    """Encode ``result`` like :func:`write_result`, to a byte stream (``-o -``): encoded whole in memory
    first, so a failure writes nothing."""
    pil_format, params = _PIL_FORMATS[FORMATS[fmt]]
    buffer = io.BytesIO()
    _pil(render(result, fmt, threshold, cutout)).save(buffer, format=pil_format, **params)
    stream.write(buffer.getbuffer())
    stream.flush()
