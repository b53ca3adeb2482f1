"""mgd-rt: MGD-SAM2 in production (export, engines, a light runtime).

``import mgd_rt`` stays light: torch is only imported by the parts that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mgd_rt.version import __version__

if TYPE_CHECKING:
    from mgd_rt.checkpoint import load_model
    from mgd_rt.evaluate import evaluate
    from mgd_rt.runtime import Segmenter

__all__ = ["Segmenter", "__version__", "evaluate", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from mgd_rt.checkpoint import load_model

        return load_model
    if name == "Segmenter":  # the light runtime: no torch unless a checkpoint is given
        from mgd_rt.engine import enable_engine_cache
        from mgd_rt.runtime import Segmenter

        enable_engine_cache()  # Segmenter("model.onnx", backend="tensorrt") builds once, then reuses

        return Segmenter
    if name == "evaluate":  # DIS metrics (the eval extra); light like Segmenter
        from mgd_rt.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'mgd_rt' has no attribute {name!r}")
