"""Reading photos into RGB uint8 arrays and writing outputs atomically (numpy + Pillow only).

Decoding accepts JPEG, PNG, BMP, TIFF and WebP; grayscale, palette, RGBA (alpha ignored, not
composited, as the authors' ``convert("RGB")`` does), CMYK and 16-bit images; EXIF
orientation is honoured. Every problem is an :class:`MgdRtError` naming the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mgd_rt.artifacts import atomic_write
from mgd_rt.errors import MgdRtError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# 150 megapixels (e.g. 15000 x 10000): the RGB array alone is 450 MB; beyond that a file is
# more likely a decompression bomb than a photo. Pillow refuses above 2 x 89.5 MP on its own.
MAX_PIXELS = 150_000_000


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any Pillow mode; 16/32-bit integer images keep their top 8 bits."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255 (a white image); rescale instead
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if values.max() <= 1.0 else 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to an RGB (H, W, 3) uint8 array, EXIF orientation applied."""
    path = Path(path)
    if path.is_dir():
        raise MgdRtError(f"{path}: is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise MgdRtError(f"{path}: empty file (0 bytes)")
    except FileNotFoundError:
        raise MgdRtError(f"{path}: no such file") from None
    except PermissionError:
        raise MgdRtError(f"{path}: permission denied") from None
    return _decode(path, str(path), max_pixels)


def decode_image(data: bytes, name: str = "<stdin>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (a pipe's content) like :func:`read_image`; errors name ``name``."""
    if not data:
        raise MgdRtError(f"{name}: empty input (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


class TooManyPixels(MgdRtError):
    """An image whose header declares more pixels than the limit (a web server answers 413 for it)."""


@contextmanager
def _opened(source: Path | BinaryIO, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """The opened image once its header passed the pixel limit; every decoding problem inside the
    ``with`` block (the header, or the pixels the caller loads) becomes an MgdRtError naming ``name``."""
    try:
        with warnings.catch_warnings():
            # our own limit below is the one that applies; Pillow's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise TooManyPixels(f"{name}: {width}x{height} is {width * height / 1e6:.1f} MP, too large to "
                                        f"decode safely (the limit is {max_pixels / 1e6:.1f} MP)")
                yield img
    except MgdRtError:
        raise
    except Image.DecompressionBombError:
        raise TooManyPixels(f"{name}: too large to decode safely (Pillow's decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise MgdRtError(f"{name}: not an image Pillow can read (JPEG, PNG, BMP, TIFF, WebP)") from None
    except FileNotFoundError:
        raise MgdRtError(f"{name}: no such file") from None
    except PermissionError:
        raise MgdRtError(f"{name}: permission denied") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise MgdRtError(f"{name}: unreadable image, truncated or corrupt ({exc})") from None


def _decode(source: Path | BinaryIO, name: str, max_pixels: int) -> np.ndarray:
    with _opened(source, name, max_pixels) as img:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb_array(img)


def image_size(data: bytes, name: str = "<stdin>", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes from the header alone, no pixels decoded; the same refusals
    as :func:`decode_image` (:class:`TooManyPixels` past ``max_pixels``)."""
    with _opened(io.BytesIO(data), name, max_pixels) as img:
        return img.size


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image: (H, W, 3) uint8 (or (H, W) / (H, W, 4), converted)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise MgdRtError(f"image arrays must be uint8 RGB, got {image.dtype}; convert with .astype(np.uint8)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # alpha ignored, as for files
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise MgdRtError(f"image arrays must be (H, W, 3) uint8 RGB, got shape {image.shape}")
    return np.ascontiguousarray(image)


def save_image(img: Image.Image, path: str | Path, fmt: str, **params: object) -> Path:
    """Save ``img`` through mgd_rt.artifacts.atomic_write: a crash or a full disk leaves the old file or
    none, never half of one; the file gets the umask's permissions."""
    path = Path(path)
    with atomic_write(path) as tmp:
        img.save(tmp, format=fmt, **params)
    return path
