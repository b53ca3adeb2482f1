"""The output formats of ``mgd-rt infer``, each written atomically at the original size.

- ``matte``: 8-bit grayscale PNG, round(255 * probability).
- ``binary``: PNG in {0, 255}, probability > threshold.
- ``rgba``: PNG cut-out, the photo with the matte as alpha.
- ``overlay``: JPEG a person can judge at a glance: background dimmed, the object tinted,
  its outline at the threshold drawn in a bright colour.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mgd_rt.runtime.image_io import save_image
from mgd_rt.runtime.processing import postprocess_binary, resize_logits_strips, sigmoid
from mgd_rt.runtime.segmenter import Result

FORMATS: dict[str, str] = {"matte": ".png", "binary": ".png", "rgba": ".png", "overlay": ".jpg"}
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


def write_result(result: Result, path: Path, fmt: str, threshold: float = 0.5) -> Path:
    """Encode ``result`` in format ``fmt`` and write it to ``path`` via a temporary file."""
    height, width = result.size
    if fmt == "matte":
        return save_image(Image.fromarray(result.matte(), "L"), path, "PNG")
    if fmt == "binary":
        return save_image(Image.fromarray(postprocess_binary(result.logits, height, width, threshold), "L"),
                            path, "PNG")
    if fmt == "rgba":
        rgba = np.dstack([result.image, result.matte()])  # (H, W, 3) + (H, W) -> (H, W, 4)
        return save_image(Image.fromarray(rgba, "RGBA"), path, "PNG")
    if fmt == "overlay":
        return save_image(Image.fromarray(overlay_image(result.image, result.logits, threshold)), path, "JPEG",
                            quality=90)
    raise ValueError(f"unknown format {fmt!r}")
