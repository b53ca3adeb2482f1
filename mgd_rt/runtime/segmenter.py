"""``Segmenter``: photos in, masks out, on any backend.

``seg(image)`` takes a path or an (H, W, 3) uint8 RGB array and returns the (H, W) float32
mask at the original size. ``seg.stream(images)`` is the pipelined form the CLI uses:
decoding and resizing run in background threads, ahead of the model, with a bounded
look-ahead; results come back in input order, failures as results with an ``error``.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends import Backend, load_backend
from mgd_rt.runtime.image_io import as_rgb, read_image
from mgd_rt.runtime.processing import postprocess, postprocess_uint8, preprocess, resize_rgb
from mgd_rt.runtime.tiling import TileStats, tiled_logits

ImageSource = str | Path | np.ndarray


@dataclass
class Result:
    """One image's outcome. ``logits`` (h, w) float32 are at the network or working scale."""

    source: Any
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB as decoded
    logits: np.ndarray | None = None
    error: str | None = None
    tile: TileStats | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # decode, resize, model, tile

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return self.image.shape[:2]  # type: ignore[union-attr]

    def mask(self) -> np.ndarray:
        """(H, W) float32 probabilities: logits resized bilinearly to the original size, then sigmoid."""
        return postprocess(self.logits, *self.size)

    def matte(self) -> np.ndarray:
        """(H, W) uint8 round(255 * mask), computed in strips (bounded memory for huge photos)."""
        return postprocess_uint8(self.logits, *self.size)


@dataclass
class _Prepared:
    source: Any
    image: np.ndarray | None
    tensor: np.ndarray | None  # (3, S, S) float32, or (S, S, 3) uint8 pixels for a pixel-input model
    error: str | None
    seconds: dict[str, float]


class Segmenter:
    """Segment photos with MGD-SAM2 on the backend the model file picks.

    model: checkpoint (.pth/.pt/.safetensors -> torch), .onnx graph (-> onnxruntime), a loaded
    ``Backend``, or an MGDSAM2 module. device None: the best available, printed by
    ``describe()``; an explicit device that is not usable is an error. dtype None: fp32 for
    checkpoints, the graph's own precision for .onnx. ``tile``: add the high-resolution
    window pass (see :mod:`mgd_rt.runtime.tiling`). ``tta``: none, flip or paper (see
    :mod:`mgd_rt.runtime.tta`; paper on a graph or engine loads its per-scale siblings).
    ``compile`` (a torch.compile mode) and ``tf32`` (CUDA): PyTorch options, see
    :class:`mgd_rt.runtime.backends.torch_backend.TorchBackend`; refused for other backends.
    """

    def __init__(
        self,
        model: str | Path | Backend | Any,
        *,
        device: str | None = None,
        backend: str = "auto",
        dtype: str | None = None,
        batch_size: int = 1,
        tile: bool = False,
        tile_scale: float | None = None,
        check_inputs: bool = True,
        workers: int = 2,
        tta: str = "none",
        compile: str | None = None,
        tf32: bool = False,
    ) -> None:
        if batch_size < 1:
            raise MgdRtError(f"--batch-size {batch_size}: must be at least 1")
        if tile_scale is not None and tile_scale <= 0:
            raise MgdRtError(f"--tile-scale {tile_scale}: must be positive")
        if isinstance(model, Backend):
            if compile is not None or tf32:
                raise MgdRtError("compile and tf32 apply when the Segmenter loads the model; pass them to the "
                                 "backend you load (TorchBackend(..., compile=..., tf32=...))")
            self.backend = model
        elif isinstance(model, (str, Path)):
            self.backend = load_backend(model, backend, device, dtype, check_inputs, compile=compile, tf32=tf32)
        else:  # an in-memory PyTorch module
            from mgd_rt.runtime.backends.torch_backend import TorchBackend

            self.backend = TorchBackend(model, device=device, dtype=dtype, check_inputs=check_inputs,
                                        compile=compile, tf32=tf32)
        self.image_size = self.backend.image_size
        if tta != "none" and tile:
            raise MgdRtError(f"--tta {tta} with --tile: not supported; use one or the other")
        from mgd_rt.runtime.tta import TTA

        # every model call goes through it; mode "none" is the backend's own infer
        self.tta = TTA(tta, self.backend, model if isinstance(model, (str, Path)) else None, device, dtype)
        # a model exported with --uint8-input gets the resized pixels: no float work on the host
        self.sends_pixels = self.backend.takes_pixels and tta == "none"
        self.batch_size = batch_size
        self.tile = tile
        self.tile_scale = tile_scale
        self.workers = max(1, workers)

    def describe(self) -> str:
        """Backend, device or execution provider actually used, precision, model."""
        trained = {True: "trained", False: "UNTRAINED", None: "weights of unknown origin"}[self.backend.trained]
        tiling = ", tiled" if self.tile else ""
        tiling += f", {self.tta.describe()}" if self.tta.mode != "none" else ""
        return (f"{self.backend.describe()}; MGD-SAM2 {self.backend.variant} at {self.image_size} "
                f"({trained}){tiling}")

    # one image ---------------------------------------------------------------------------
    def __call__(self, image: ImageSource) -> np.ndarray:
        """Path or (H, W, 3) uint8 RGB -> (H, W) float32 mask in [0, 1] at the original size."""
        (result,) = self.stream([image])
        if not result.ok:
            raise MgdRtError(result.error)
        return result.mask()

    def batch(self, images: Iterable[ImageSource]) -> list[np.ndarray]:
        """Masks for many images, in order; the first failure raises MgdRtError."""
        masks = []
        for result in self.stream(images):
            if not result.ok:
                raise MgdRtError(result.error)
            masks.append(result.mask())
        return masks

    # the pipeline --------------------------------------------------------------------------
    def _prepare(self, source: ImageSource) -> _Prepared:
        seconds: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            image = as_rgb(source) if isinstance(source, np.ndarray) else read_image(source)
            t1 = time.perf_counter()
            if self.sends_pixels:
                tensor = resize_rgb(image, self.image_size, self.image_size)
            else:
                tensor = preprocess(image, self.image_size, self.backend.mean, self.backend.std)
            seconds.update(decode=t1 - t0, resize=time.perf_counter() - t1)
            return _Prepared(source, image, tensor, None, seconds)
        except MgdRtError as exc:
            return _Prepared(source, None, None, str(exc), seconds)
        except MemoryError:
            return _Prepared(source, None, None, f"{source}: out of memory while decoding", seconds)

    def stream(self, images: Iterable[ImageSource]) -> Iterator[Result]:
        """Results in input order; decoding runs ``workers`` threads ahead, bounded look-ahead."""
        lookahead = 2 * self.batch_size + self.workers
        with ThreadPoolExecutor(self.workers, thread_name_prefix="mgd-rt-decode") as pool:
            queue: deque[Future[_Prepared]] = deque()
            pending = iter(images)

            def decode_ahead() -> None:
                for source in itertools.islice(pending, max(lookahead - len(queue), 0)):
                    queue.append(pool.submit(self._prepare, source))

            decode_ahead()
            while queue:
                # take items until batch_size decoded images (failures ride along in order)
                group: list[_Prepared] = []
                while queue and sum(p.error is None for p in group) < self.batch_size:
                    group.append(queue.popleft().result())
                    decode_ahead()
                yield from self._run_group(group)
                decode_ahead()

    def _run_group(self, group: list[_Prepared]) -> Iterator[Result]:
        good = [p for p in group if p.error is None]
        logits = None
        model_seconds = 0.0
        if good:
            t0 = time.perf_counter()
            batch = np.stack([p.tensor for p in good])
            # (B, 1, S, S); pixels go straight to a pixel-input model (augmentations work on normalised input)
            logits = self.backend.infer_pixels(batch) if self.sends_pixels else self.tta(batch)
            model_seconds = (time.perf_counter() - t0) / len(good)
        k = 0
        for p in group:
            if p.error is not None:
                yield Result(p.source, error=p.error, seconds=p.seconds)
                continue
            result = Result(p.source, p.image, logits[k, 0], seconds={**p.seconds, "model": model_seconds})
            k += 1
            if self.tile:
                t0 = time.perf_counter()
                result.logits, result.tile = tiled_logits(
                    p.image, result.logits, self.backend.infer, self.image_size, self.batch_size,
                    self.tile_scale, self.backend.mean, self.backend.std,
                )
                result.seconds["tile"] = time.perf_counter() - t0
            yield result

    def close(self) -> None:
        self.tta.close()
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
