"""Calibration and held-out images -> prepared network inputs, through the runtime's pre-processing.

Every image goes through ``mgd_rt.runtime.processing.preprocess`` (the one function the runtime
uses), so INT8 ranges are measured on exactly what the deployed model will see. Files are
sampled with a seed; unreadable ones are reported and skipped. Prepared tensors are cached
by a key of the files' contents, S and the normalisation, so a second run with the same
images and model skips decoding and resizing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import atomic_write, file_sha256, user_cache
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.image_io import IMAGE_SUFFIXES, read_image
from mgd_rt.runtime.processing import preprocess
from mgd_rt.runtime.samples import network_inputs, sample_photos

log = logging.getLogger("mgd_rt")

# bump when preprocessing changes: it is part of the cache key
_PREP_VERSION = "1"


@dataclass
class ImageSet:
    """Prepared inputs (N, 3, S, S) float32, their names, and the sha256 of the list."""

    names: list[str]
    tensors: np.ndarray
    list_sha256: str
    source: str  # "scikit-image" or the folder / file given
    cached: bool = False


def cache_dir() -> Path:
    """$MGD_RT_CACHE/calibration, else $XDG_CACHE_HOME/mgd-rt/calibration (not created here)."""
    root = os.environ.get("MGD_RT_CACHE")
    return Path(root) / "calibration" if root else user_cache("calibration")


def list_images(images: str | Path | list[str | Path]) -> list[Path]:
    """A folder (recursively), one file, or a list of files -> sorted image paths."""
    items = images if isinstance(images, list | tuple) else [images]
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif item.exists():
            paths.append(item)
        else:
            raise MgdRtError(f"{item}: no such file or folder (pass a folder of images with --images DIR)")
    if not paths:
        raise MgdRtError(
            f"{', '.join(str(i) for i in items)}: no images ({', '.join(IMAGE_SUFFIXES)}) found; "
            "pass a folder of photos like the ones the model will segment"
        )
    return paths


def _list_sha256(entries: list[tuple[str, str]]) -> str:
    """sha256 of the ordered (name, content sha256) list: the identity of a calibration set."""
    return hashlib.sha256("\n".join(f"{n}\t{h}" for n, h in entries).encode()).hexdigest()


def _cache_key(list_sha: str, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    text = f"{list_sha}|{size}|{','.join(map(str, mean))}|{','.join(map(str, std))}|{_PREP_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load_cached(key: str, cache: Path | None) -> tuple[np.ndarray, list[str], list[str]] | None:
    """(tensors (N, 3, S, S), names, content hashes) stored under ``key``, or None."""
    if cache is None or not (path := cache / f"{key}.npz").is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return stored["tensors"], [str(n) for n in stored["names"]], [str(h) for h in stored["hashes"]]
    except (OSError, ValueError, KeyError):
        log.warning("calibration cache %s unreadable: preparing the images again", path)
        return None


def _save_cached(key: str, cache: Path | None, tensors: np.ndarray, names: list[str], hashes: list[str]) -> None:
    if cache is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache / f"{key}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, tensors=tensors, names=np.array(names), hashes=np.array(hashes))
    except OSError as exc:  # a read-only home must not stop calibration
        log.warning("could not write the calibration cache in %s (%s)", cache, exc)


def skimage_set(
    names: tuple[str, ...], size: int, mean: tuple[float, ...], std: tuple[float, ...], limit: int | None = None
) -> ImageSet:
    """scikit-image sample photos ``names`` (the first ``limit``) -> (N, 3, S, S) float32."""
    names = names[:limit] if limit else names
    photos = sample_photos(names, hint="pip install scikit-image, or pass --images DIR")
    arrays = [x[0] for _, x in network_inputs(photos, size, mean, std)]  # each (3, S, S)
    entries = [(f"skimage:{n}", "") for n in names]
    return ImageSet([f"skimage:{n}" for n in names], np.stack(arrays), _list_sha256(entries), "scikit-image")


def prepare(
    images: str | Path | list[str | Path],
    num_images: int,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
    exclude: set[str] | None = None,
    cache: Path | None = None,
) -> ImageSet:
    """Sample ``num_images`` readable images (seeded) -> ImageSet with tensors (N, 3, S, S) float32.

    Unreadable files are reported and skipped; the next file in the seeded order takes their
    place. Files whose content sha256 is in ``exclude`` are left out (the held-out set uses
    this to avoid the calibration images). Fewer usable images than ``num_images`` is an error.
    """
    if num_images < 1:
        raise MgdRtError(f"-n {num_images}: use at least 1 calibration image (64 is a good start)")
    paths = list_images(images)
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen: list[tuple[Path, str]] = []
    skipped = 0
    for index in order:
        path = paths[index]
        digest = file_sha256(path)
        if exclude and digest in exclude:
            continue
        chosen.append((path, digest))
        if len(chosen) == num_images:
            break
    # the key is the sampled candidates (before decoding: an unreadable one and its replacement
    # are found again identically), sorted so it does not depend on sampling order
    chosen.sort(key=lambda item: str(item[0]))
    key = _cache_key(_list_sha256([(str(p), h) for p, h in chosen]), size, mean, std)
    source = str(images) if not isinstance(images, list | tuple) else f"{len(images)} paths"
    if len(chosen) == num_images and (hit := _load_cached(key, cache)) is not None:
        tensors_cached, names, hashes = hit
        log.info("calibration: %d prepared images from the cache (%s)", len(names), key)
        return ImageSet(names, tensors_cached, _list_sha256(list(zip(names, hashes, strict=True))), source, True)

    tensors = []
    taken = {p for p, _ in chosen}
    good: list[tuple[Path, str]] = []
    for path, digest in chosen + [(paths[i], None) for i in order if paths[i] not in taken]:
        if len(good) == num_images:
            break
        digest = digest or file_sha256(path)
        if exclude and digest in exclude:
            continue
        try:
            tensors.append(preprocess(read_image(path), size, mean, std))  # (3, S, S) float32
        except MgdRtError as exc:
            skipped += 1
            log.warning("skipped: %s", exc)
            continue
        good.append((path, digest))
    if not good:
        raise MgdRtError(f"{source}: no usable images ({skipped} unreadable): pass a folder of photos")
    if len(good) < num_images:
        left_out = ", calibration images left out" if exclude else ""
        raise MgdRtError(
            f"{source}: {len(good)} usable images ({skipped} unreadable{left_out}) but {num_images} "
            f"requested: add images or pass -n {len(good)}"
        )
    pairs = sorted(zip(good, tensors, strict=True), key=lambda item: str(item[0][0]))
    names = [p.name for (p, _), _ in pairs]
    hashes = [h for (_, h), _ in pairs]
    stacked = np.stack([t for _, t in pairs])  # (N, 3, S, S) float32
    if len(chosen) == num_images:
        _save_cached(key, cache, stacked, names, hashes)
    if skipped:
        log.warning("calibration: %d unreadable file(s) skipped, %d used", skipped, len(good))
    return ImageSet(names, stacked, _list_sha256(list(zip(names, hashes, strict=True))), source)


def content_hashes(images: str | Path | list[str | Path]) -> set[str]:
    """sha256 of every image file under ``images``: to keep calibration images out of a held-out set."""
    return {file_sha256(p) for p in list_images(images)}
