"""The engine's sidecar: everything the runtime must know before touching the engine, as one dict.

Assembled here, written beside the engine by ``mgd_rt.artifacts.write_engine``, read back with
``mgd_rt.artifacts.read_sidecar``.
"""

from __future__ import annotations

import platform
import time
from typing import Any

from mgd_rt.artifacts import SIDECAR_FORMAT, SIDECAR_VERSION
from mgd_rt.contract import INPUT_NAME
from mgd_rt.engine.plan import BuildPlan
from mgd_rt.version import __version__

# TensorRT DataType names -> the numpy spelling the sidecar uses
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}


def network_io(network) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of a parsed TensorRT network as {"name", "shape" (-1: dynamic), "dtype"} dicts."""

    def io(tensors) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": _TRT_DTYPES.get(t.dtype.name, t.dtype.name)}
                for t in tensors]

    return (io(network.get_input(i) for i in range(network.num_inputs)),
            io(network.get_output(i) for i in range(network.num_outputs)))


def _timing_cache_note(plan: BuildPlan) -> str | None:
    if plan.timing_cache is None:
        return None
    if plan.lib.is_rtx:
        return f"{plan.timing_cache} (not used: no timing cache in TensorRT-RTX)"
    return str(plan.timing_cache)


def build_sidecar(plan: BuildPlan, network, engine_bytes: int, derived: str | None, seconds: float,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of the engine ``plan`` built from ``network``: ``engine_bytes`` long, its graph
    ``derived`` from the source as described (None: the source as is), ``seconds`` since the build
    started; ``extra`` adds keys (the engine cache's key)."""
    inputs, outputs = network_io(network)
    s = plan.graph.image_size
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "engine": {"file": plan.output.name, "bytes": engine_bytes},
        "library": {"name": plan.lib.name, "version": plan.lib.version},
        "precision": plan.precision,
        "strongly_typed": bool(plan.strongly_typed),
        "profile": {"input": INPUT_NAME,
                    **{k: list(plan.graph.input_shape(b))
                       for k, b in zip(("min", "opt", "max"), plan.profile, strict=True)}},
        "inputs": inputs,
        "outputs": outputs,
        "image_size": s,
        "variant": plan.graph.metadata.get("variant", "unknown"),
        "source": {
            "onnx": str(plan.onnx_path.resolve()),
            "sha256": plan.graph.sha256,
            "precision": plan.graph.precision,
            "derived": derived,
            "metadata": plan.graph.metadata,
        },
        "build": {
            "flags": {
                "batch": ":".join(map(str, plan.profile)),
                "workspace_gib": plan.workspace,
                "timing_cache": _timing_cache_note(plan),
                "opt_level": plan.opt_level,
                "version_compatible": plan.version_compatible,
                "hardware_compatibility": plan.hardware_compatibility or "none",
                "targets": plan.targets or None,
            },
            "seconds": round(seconds, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "mgd_rt_version": __version__,
        },
        "targets": ({"compute_capabilities": plan.targets} if plan.targets
                    else {"gpu": plan.gpu.as_dict()}),  # type: ignore[union-attr]
        **(extra or {}),
    }


__all__ = ["build_sidecar", "network_io"]
