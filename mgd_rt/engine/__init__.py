"""Engine build stage: ONNX graph -> TensorRT / TensorRT-RTX engine + JSON sidecar; the engine cache.

``build_engine`` is the one entry point (``mgd-rt build`` and ``python export/build_trt.py`` are
thin over it); its steps live in ``source`` (read the graph), ``plan`` (check every flag),
``prepare`` (the graph to parse), ``configure`` (network and BuilderConfig) and ``sidecar``.
``cached_engine`` builds on first use; ``enable_engine_cache`` lets the runtime's TensorRT backend
open an .onnx through it (the runtime itself never builds). TensorRT modules are
imported only when a build or an engine load needs them.
"""

from __future__ import annotations

from mgd_rt.engine.builder import PRECISIONS, BuildResult, build_engine
from mgd_rt.engine.cache import CACHE_ENV, cache_dir, cache_key, cached_engine, enable_engine_cache
from mgd_rt.engine.plan import DEFAULT_PROFILE, parse_profile, resolve_profile
from mgd_rt.engine.source import read_graph

__all__ = [
    "BuildResult", "CACHE_ENV", "DEFAULT_PROFILE", "PRECISIONS", "build_engine", "cache_dir", "cache_key",
    "cached_engine", "enable_engine_cache", "parse_profile", "read_graph", "resolve_profile",
]
