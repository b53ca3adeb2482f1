"""Engine cache: ``Segmenter("model.onnx", backend="tensorrt")`` builds once, then reuses.

An entry is ``<cache>/<graph stem>-<graph sha256[:12]>.<precision>.engine`` with its sidecar,
whose ``cache_key`` records what the engine is valid for: graph sha256, library and version,
GPU name and compute capability, precision, profile. A lookup whose key differs in any field
rebuilds (and logs which fields changed); a stale engine is never loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import cache_folder, read_sidecar, sidecar_path
from mgd_rt.engine.builder import build_engine
from mgd_rt.engine.plan import resolve_profile
from mgd_rt.engine.source import read_graph
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends import register_converter
from mgd_rt.runtime.backends.tensorrt_backend import cuda_index
from mgd_rt.runtime.tensorrt_library import GpuInfo, current_gpu, import_library

log = logging.getLogger("mgd_rt")

CACHE_ENV = "MGD_RT_ENGINE_CACHE"


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache folder, created: ``path``, else $MGD_RT_ENGINE_CACHE, else $XDG_CACHE_HOME/mgd-rt/engines."""
    return cache_folder(path, CACHE_ENV, "engines", "engine cache")


def cache_key(graph_sha256: str, library: str, version: str, gpu: GpuInfo, precision: str,
              profile: tuple[int, int, int]) -> dict[str, str]:
    """Everything an engine is only valid for: an engine runs only on the GPU model and library version
    it was built with, for the graph, precision and profile it was built from."""
    return {
        "graph_sha256": graph_sha256,
        "library": f"{library} {version}",
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": precision,
        "profile": ":".join(map(str, profile)),
    }


def cached_engine(
    onnx_path: str | Path,
    precision: str | None = None,
    batch: str | tuple[int, int, int] | None = None,
    cache: str | Path | None = None,
    library: str = "auto",
    gpu: GpuInfo | None = None,
    **build_options: Any,
) -> Path:
    """The engine for ``onnx_path`` on this GPU from the cache, built (and stored) when missing or stale.

    ``precision`` None: the graph's own. ``gpu`` None: the current CUDA device (needed anyway to run).
    ``build_options`` go to :func:`build_engine` (workspace, opt_level, ...).
    """
    onnx_path = Path(onnx_path)
    graph, _ = read_graph(onnx_path)
    lib = import_library(library)
    gpu = gpu or current_gpu()
    precision = precision or graph.precision
    profile = resolve_profile(graph, batch)
    key = cache_key(graph.sha256, lib.name, lib.version, gpu, precision, profile)
    folder = cache_dir(cache)
    engine = folder / f"{onnx_path.stem}-{graph.sha256[:12]}.{precision}.engine"
    if engine.is_file() and sidecar_path(engine).is_file():
        try:
            stored = read_sidecar(engine).get("cache_key", {})
        except MgdRtError as exc:
            stored, reason = {}, str(exc)
        else:
            changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in key.items() if stored.get(k) != v]
            reason = "; ".join(changed)
        if stored == key:
            log.info("engine cache: reusing %s", engine)
            return engine
        log.warning("engine cache: %s is stale (%s): rebuilding", engine.name, reason)
    else:
        log.info("engine cache: no engine for %s (%s) in %s: building (once)", onnx_path.name, precision, folder)
    if lib.is_rtx:
        # TensorRT-RTX: build for this GPU's SM by name, the same engine its "current" target gives
        build_options.setdefault("targets", [gpu.sm])
    # the key travels in the sidecar, written atomically with the engine
    build_engine(onnx_path, precision=precision, output=engine, batch=profile, library=lib.name, gpu=gpu,
                 sidecar_extra={"cache_key": key}, **build_options)
    return engine


def engine_for_graph(onnx_path: Path, dtype: str | None, device: str | None) -> Path:
    """The runtime's converter for an .onnx on the tensorrt backend: the cached engine for that GPU."""
    return cached_engine(onnx_path, precision=dtype, gpu=current_gpu(cuda_index(device)))


def enable_engine_cache() -> None:
    """Let the runtime open an .onnx on the tensorrt backend: built once through the cache, then reused."""
    register_converter("tensorrt", ".onnx", engine_for_graph)


__all__ = ["CACHE_ENV", "cache_dir", "cache_key", "cached_engine", "enable_engine_cache", "engine_for_graph"]
