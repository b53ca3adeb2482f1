"""Build stage: ONNX graph -> TensorRT / TensorRT-RTX engine + JSON sidecar; engine cache.

``build_engine`` is the one entry point (``mgd-rt build`` and ``python export/build_trt.py`` are
thin over it); ``cached_engine`` builds on first use for the runtime. TensorRT modules are
imported only when a build or an engine load needs them.
"""

from __future__ import annotations

from mgd_rt.build.builder import (
    DEFAULT_PROFILE,
    PRECISIONS,
    BuildResult,
    build_engine,
    default_engine_path,
    parse_profile,
    read_graph,
)
from mgd_rt.build.cache import CACHE_ENV, cache_dir, cache_key, cached_engine
from mgd_rt.build.library import GpuInfo, Library, current_gpu, import_library
from mgd_rt.build.sidecar import SIDECAR_KEYS, read_sidecar, sidecar_path

__all__ = [
    "BuildResult", "CACHE_ENV", "DEFAULT_PROFILE", "GpuInfo", "Library", "PRECISIONS", "SIDECAR_KEYS",
    "build_engine", "cache_dir", "cache_key", "cached_engine", "current_gpu", "default_engine_path",
    "import_library", "parse_profile", "read_graph", "read_sidecar", "sidecar_path",
]
