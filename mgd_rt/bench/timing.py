"""Timing one backend: a clock around each ``infer`` call (CUDA events beside it on a GPU), warm-up
until the timings settle, then the timed calls whose raw values every latency figure comes from."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mgd_rt.bench.report import BenchResult
from mgd_rt.bench.settings import MAX_WARMUP_ITERS, MAX_WARMUP_SECONDS, STABLE_SPREAD, STABLE_WINDOW, BenchSettings


class Clock:
    """Times one ``infer`` call: perf_counter around a synchronised call, CUDA events on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.torch = None
        if self.cuda:
            try:
                import torch

                self.torch = torch if torch.cuda.is_available() else None
            except ImportError:
                self.torch = None

    def __call__(self, fn: Callable[[], np.ndarray]) -> tuple[float, float | None, np.ndarray]:
        t = self.torch
        if t is not None:
            t.cuda.synchronize()  # nothing queued before the call may leak into it
            start, end = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            out = fn()  # returns host numpy: the device work is finished (ORT binds, torch copies back)
            end.record()
            end.synchronize()
            wall = time.perf_counter() - t0
            return wall, start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, None, out


def warm_up(clock: Clock, fn: Callable[[], np.ndarray], minimum: int, until_stable: bool
            ) -> tuple[list[float], bool | None]:
    """``minimum`` calls, then (``until_stable``) more until STABLE_WINDOW agree within STABLE_SPREAD."""
    timings: list[float] = []
    t0 = time.perf_counter()
    for _ in range(minimum):
        timings.append(clock(fn)[0])
    if not until_stable:
        return timings, None
    while True:
        last = timings[-STABLE_WINDOW:]
        if len(last) == STABLE_WINDOW and (max(last) - min(last)) <= STABLE_SPREAD * float(np.median(last)):
            return timings, True
        if len(timings) >= MAX_WARMUP_ITERS or time.perf_counter() - t0 > MAX_WARMUP_SECONDS:
            return timings, False
        timings.append(clock(fn)[0])


def compile_call(result: BenchResult, backend: Any, batch: np.ndarray, clock: Clock) -> None:
    """A compiled torch backend's first call at ``batch``'s shape, (B, 3, S, S) float32: the compilation (or
    the inductor cache load) plus one forward. Made before the warm-up, so no warm-up count or timed call
    includes it; fills ``result.compile_s`` with the backend's own measure of that call (synchronised on
    CUDA) and ``result.compile_cache`` with where its kernels came from (miss, hit, reused)."""
    wall, _, _ = clock(lambda: backend.infer(batch))
    key = (int(batch.shape[0]), int(batch.shape[-1]))
    result.compile_s = backend.compile_seconds.get(key, wall)
    result.compile_cache = backend.compile_cache.get(key)


def time_result(result: BenchResult, backend: Any, batch: np.ndarray, settings: BenchSettings, clock: Clock,
                torch_cuda: Any) -> np.ndarray:
    """Warm up, then time ``settings.iters`` calls of ``backend.infer(batch)`` (or calls for
    ``settings.seconds``); fills ``result``'s timings, latency and GPU memory.

    ``batch`` is (B, 3, S, S) float32 or, for a pixel-input model, (B, S, S, 3) uint8; ``torch_cuda`` is
    ``torch.cuda`` for the torch backend on a GPU
    (its allocator's peaks are recorded), else None. Returns the last timed output (B, 1, S, S), which
    the accuracy check compares.
    """
    # uint8 (B, S, S, 3) pixels for a pixel-input model: what its clients send, no host float work timed
    run = backend.infer_pixels if batch.dtype == np.uint8 else backend.infer

    def call() -> np.ndarray:
        return run(batch)

    if torch_cuda is not None:
        torch_cuda.synchronize()
        torch_cuda.reset_peak_memory_stats()
        resident = torch_cuda.memory_allocated() / 2**20
    result.warmup_timings_s, result.warmup_stable = warm_up(clock, call, settings.warmup, settings.until_stable)
    events: list[float] = []
    out = None
    iters, seconds = settings.iters, settings.seconds
    t_end = time.perf_counter() + seconds if seconds is not None else None
    while True:
        wall, event, out = clock(call)
        result.timings_s.append(wall)
        if event is not None:
            events.append(event)
        if iters is not None and len(result.timings_s) >= iters:
            break
        if t_end is not None and time.perf_counter() >= t_end:
            break
    result.cuda_event_timings_s = events or None
    result.summarise()
    if torch_cuda is not None:
        result.memory.update(gpu_resident_after_load_mb=resident,
                             gpu_peak_allocated_mb=torch_cuda.max_memory_allocated() / 2**20,
                             gpu_peak_reserved_mb=torch_cuda.max_memory_reserved() / 2**20)
    elif result.device.startswith("cuda") or "CUDA" in result.device:
        result.memory["gpu_peak_allocated_mb"] = None
        result.memory["gpu_note"] = "only the torch backend's allocator is measured"
    return out


__all__ = ["Clock", "compile_call", "time_result", "warm_up"]
