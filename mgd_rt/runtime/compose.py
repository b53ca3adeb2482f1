"""Cut-outs that look right: foreground colour estimation and compositing onto a new background.

At a soft edge (0 < alpha < 1) a pixel is ``I = alpha F + (1 - alpha) B``: its colour mixes the
object's and the old background's. Putting the raw ``I`` under the alpha carries the old
background into the cut-out as a halo; estimating ``F`` removes it. Estimators (``ESTIMATORS``):

- ``blur-fusion`` (default): the two-pass blur-fusion estimator (Forte and Pitie, 2021): local
  alpha-weighted means of foreground and background from box blurs, then the residual of the
  compositing equation added back. Box filters cost the same at any radius, so 4000x3000 takes
  about a second on a CPU (``benchmarks/foreground_estimation.py`` measures it).
- ``multilevel``: pymatting's multi-level estimator (the ``matting`` extra; numba-compiled).
- ``raw``: the photo's colour as is.

Everything here is numpy + OpenCV + Pillow; pymatting is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import ImageColor

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.image_io import read_image


def _blur_fusion_pass(
    image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: (H, W, 3) float32 image, F, B estimates and (H, W, 1) alpha -> new F, local mean B."""
    size = (radius, radius)
    a_blur = cv2.blur(alpha, size)[:, :, None]  # cv2 drops the singleton channel axis
    f_mean = cv2.blur(fg * alpha, size) / (a_blur + 1e-5)
    b_mean = cv2.blur(bg * (1.0 - alpha), size) / ((1.0 - a_blur) + 1e-5)
    # F = local F mean + alpha * (what the compositing equation leaves unexplained)
    fg_new = f_mean + alpha * (image - alpha * f_mean - (1.0 - alpha) * b_mean)
    return np.clip(fg_new, 0.0, 1.0, out=fg_new), b_mean


def blur_fusion(image: np.ndarray, alpha: np.ndarray, radius: int = 90, refine_radius: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 RGB and (H, W) alpha (uint8 0..255 or float in [0, 1]) -> (H, W, 3) uint8 foreground.

    Two passes as published: a wide one (``radius``) for smooth F and B means, a narrow one
    (``refine_radius``) started from them. Only the bounding box of the soft region is
    computed (plus the wide radius as margin); outside it the photo's colour is the answer
    (alpha 0 is invisible, alpha 1 is the object's own colour).
    """
    a = _unit_alpha(alpha)
    soft = (a > 0.0) & (a < 1.0)
    out = image.copy()
    if not soft.any():
        return out
    rows, cols = np.nonzero(soft.any(axis=1))[0], np.nonzero(soft.any(axis=0))[0]
    margin = radius
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, a.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, a.shape[1])
    img = image[r0:r1, c0:c1].astype(np.float32) / 255.0
    al = np.ascontiguousarray(a[r0:r1, c0:c1, None])  # (h, w, 1)
    fg, bg = _blur_fusion_pass(img, img, img, al, radius)
    fg, _ = _blur_fusion_pass(img, fg, bg, al, refine_radius)
    box = soft[r0:r1, c0:c1]
    out[r0:r1, c0:c1][box] = (fg[box] * 255.0 + 0.5).astype(np.uint8)
    return out


def multilevel(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) alpha -> (H, W, 3) uint8 with pymatting's multi-level estimator."""
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        raise MgdRtError("--foreground multilevel needs pymatting: pip install 'mgd-rt[matting]'") from None
    a = _unit_alpha(alpha)
    fg = estimate_foreground_ml(image.astype(np.float64) / 255.0, a.astype(np.float64))
    # its smoothness term also nudges opaque pixels; there the photo's colour is the object's, exactly
    soft = (a > 0.0) & (a < 1.0)
    out = image.copy()
    out[soft] = (np.clip(fg[soft], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def raw(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The photo's own colour, unchanged (the halo stays)."""
    return image


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "blur-fusion": blur_fusion, "multilevel": multilevel, "raw": raw,
}
DEFAULT_ESTIMATOR = "blur-fusion"
BACKGROUND_KINDS = ("COLOR", "blur", "IMAGE")  # what --background takes, for the help text


def _unit_alpha(alpha: np.ndarray) -> np.ndarray:
    """(H, W) uint8 or float alpha -> float32 in [0, 1]."""
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / 255.0
    return np.clip(alpha.astype(np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class Cutout:
    """How cut-outs and composites are made: the colour estimator, the new background, inversion.

    ``background``: None (no composite), a colour (name or #hex), ``blur`` or an image path.
    ``invert``: keep the background instead of the object (alpha -> 1 - alpha, for every format).
    """

    estimator: str = DEFAULT_ESTIMATOR
    background: str | None = None
    invert: bool = False

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise MgdRtError(f"--foreground {self.estimator}: choose from {', '.join(ESTIMATORS)}")
        if self.background not in (None, "blur") and not Path(self.background).is_file():
            try:
                ImageColor.getrgb(self.background)
            except ValueError:
                raise MgdRtError(f"--background {self.background}: not a colour (name or #rrggbb), 'blur', "
                                 "or an existing image file") from None

    def foreground(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB, (H, W) uint8 alpha -> (H, W, 3) uint8 estimated foreground colour."""
        return ESTIMATORS[self.estimator](image, alpha)

    def backdrop(self, image: np.ndarray) -> np.ndarray:
        """The (H, W, 3) uint8 background to composite onto, for a photo of ``image``'s size."""
        height, width = image.shape[:2]
        spec = self.background or "white"
        if spec == "blur":
            # strong enough to read as out of focus at any resolution: sigma 2% of the long side
            sigma = max(height, width) * 0.02
            return cv2.GaussianBlur(image, (0, 0), sigma)
        if Path(spec).is_file():
            return _covered_file(spec, width, height)
        colour = np.array(ImageColor.getrgb(spec)[:3], dtype=np.uint8)
        return np.broadcast_to(colour, (height, width, 3))

    def composite(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 photo and (H, W) uint8 alpha -> (H, W, 3) uint8 F a + B (1 - a)."""
        fg = self.foreground(image, alpha).astype(np.float32)
        a = _unit_alpha(alpha)[:, :, None]
        out = fg * a + self.backdrop(image).astype(np.float32) * (1.0 - a)
        return (out + 0.5).astype(np.uint8)

    def rgba(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(H, W, 4) uint8 cut-out: the estimated foreground colour under the alpha."""
        return np.dstack([self.foreground(image, alpha), alpha])


@lru_cache(maxsize=4)
def _covered_file(path: str, width: int, height: int) -> np.ndarray:
    """A background image read and fitted once per size: a video's frames all reuse it (read-only)."""
    image = cover(read_image(path), width, height)
    image.flags.writeable = False
    return image


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, 3) uint8 resized to cover width x height (aspect kept), centre-cropped -> (height, width, 3)."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])
