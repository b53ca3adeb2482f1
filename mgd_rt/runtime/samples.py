"""Sample photos: the one source of the images demo, verification, benchmarks and calibration use
when the user gives none, and the one loader that turns photos into network input.

scikit-image ships these photos (no download). Every list is a tuple of ``skimage.data`` names;
every loader returns RGB (H, W, 3) uint8, and :func:`network_inputs` runs them through the
runtime's own preprocessing, so a check on samples sees exactly what ``mgd-rt infer`` feeds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.image_io import IMAGE_SUFFIXES, as_rgb, read_image
from mgd_rt.runtime.processing import preprocess

# mgd-rt demo and the benchmark's end-to-end pass: a portrait, a still life, an animal, an object
DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# export verification: a portrait, an animal, objects
VERIFY_PHOTOS = ("astronaut", "chelsea", "coffee")
# INT8 calibration and its held-out accuracy check: two disjoint lists, so the report never sees a
# calibration image. Colour photos, grayscale scenes and textures, to spread the activation ranges.
CALIBRATION_PHOTOS = (
    "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
    "moon", "brick", "grass", "gravel", "text", "page",
)
HOLDOUT_PHOTOS = ("chelsea", "coins", "colorwheel", "retina", "clock", "logo")


def _skimage_data(hint: str):
    try:
        from skimage import data
    except ImportError:
        raise MgdRtError(f"scikit-image is not installed: it ships the sample photos; {hint}") from None
    return data


def sample_photo(name: str, hint: str = "pip install scikit-image") -> np.ndarray:
    """The scikit-image photo ``name`` as RGB (H, W, 3) uint8 (grayscale and boolean ones expanded)."""
    image = getattr(_skimage_data(hint), name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255  # binary pictures (e.g. "horse") as black and white
    return as_rgb(image)


def sample_photos(names: tuple[str, ...], hint: str = "pip install scikit-image") -> list[tuple[str, np.ndarray]]:
    """[(name, RGB (H, W, 3) uint8)] for ``names``; ``hint`` says what to do without scikit-image."""
    _skimage_data(hint)  # one clear error before any work
    return [(name, sample_photo(name, hint)) for name in names]


def image_files(images: str | Path) -> list[Path]:
    """``images`` itself (a file) or the image files directly in it (a folder), sorted."""
    root = Path(images)
    if root.is_file():
        return [root]
    paths = sorted(p for p in root.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not paths:
        raise MgdRtError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths


def network_inputs(
    photos: list[tuple[str, np.ndarray]] | str | Path,
    size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> list[tuple[str, np.ndarray]]:
    """[(name, (1, 3, S, S) float32)] through the runtime's preprocessing, from [(name, RGB)] or a
    file or folder of images (named by file name; an unreadable one is an error naming it)."""
    if isinstance(photos, (str, Path)):
        photos = [(path.name, read_image(path)) for path in image_files(photos)]
    return [(name, preprocess(rgb, size, mean, std)[None]) for name, rgb in photos]


__all__ = ["CALIBRATION_PHOTOS", "DEMO_PHOTOS", "HOLDOUT_PHOTOS", "VERIFY_PHOTOS", "image_files", "network_inputs",
           "sample_photo", "sample_photos"]
