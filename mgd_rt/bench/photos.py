"""The real photos bench times and checks accuracy on: the end-to-end images when given, else the
sample photos, else (no scikit-image) synthetic scenes. Every photo is RGB (H, W, 3) uint8."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mgd_rt.errors import MgdRtError


def synthetic_photo(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 scene (gradients, an object, texture) when no photo is at hand."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = ((y - height * 0.55) ** 2 / (height * 0.3) ** 2 + (x - width * 0.5) ** 2 / (width * 0.22) ** 2) < 1
    img = np.stack([x / width * 200, y / height * 180, blob * 170.0 + 40], axis=2)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_photos(end_to_end: Sequence[str | Path] | None = None, count: int = 4) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` [(name, (H, W, 3) uint8)]: the readable end-to-end images (named by path), else
    the sample photos (named ``skimage.data.<name>``), else synthetic scenes without scikit-image."""
    from mgd_rt.runtime.image_io import read_image
    from mgd_rt.runtime.samples import DEMO_PHOTOS, sample_photos

    if end_to_end:
        from mgd_rt.runtime.infer import collect_inputs

        jobs, _ = collect_inputs(list(end_to_end))
        photos = []
        for job in jobs[:count]:
            try:
                photos.append((str(job.source), read_image(job.source)))
            except MgdRtError:
                continue
        if photos:
            return photos
    try:
        return [(f"skimage.data.{n}", rgb) for n, rgb in sample_photos(DEMO_PHOTOS[:count])]
    except MgdRtError:  # scikit-image is not installed
        return [(f"synthetic seed {i}", synthetic_photo(seed=i)) for i in range(count)]


__all__ = ["load_photos", "synthetic_photo"]
