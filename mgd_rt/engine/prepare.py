"""Graph preparation: the graph the library parses, as is or derived from the source graph on the fly.

Strongly typed libraries (TensorRT 11, TensorRT-RTX) build ``--fp16`` from an FP16 graph, converted
here with ``mgd_rt.export.fp16.to_fp16``; ``--int8`` from an FP32 graph needs the Q/DQ graph
``mgd_rt.calibration.calibrate`` makes. onnx, export and calibration are imported only when used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgd_rt.engine.plan import CALIBRATE, FP16_CONVERT, TRT_FP16_FLAG, BuildPlan
from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")


@dataclass
class PreparedGraph:
    """The graph to parse: serialized ``data`` when made in memory, else the file ``path``."""

    path: Path
    data: bytes | None = None
    derived: str | None = None  # how it was made from the source graph (the sidecar's source.derived)
    seconds: dict[str, float] = field(default_factory=dict)  # "fp16" or "calibrate" when it took a step


def _fp16_graph(plan: BuildPlan, proto: Any) -> bytes:
    """``proto`` (the FP32 ModelProto) converted to FP16, metadata kept with precision fp16, serialized."""
    from mgd_rt.export.fp16 import to_fp16
    from mgd_rt.export.graph import read_metadata, set_metadata

    log.info("converting %s to FP16 (strongly typed %s builds from the FP16 graph)...",
             plan.onnx_path.name, plan.lib.describe())
    fp16 = to_fp16(proto)
    set_metadata(fp16, {**read_metadata(proto), "precision": "fp16"})
    return fp16.SerializeToString()


def _calibrated_graph(onnx_path: Path, calib_images, workdir: Path, options: dict[str, Any]) -> Path:
    """The Q/DQ graph made by mgd_rt.calibration in ``workdir``; ``options`` are ``calibrate``'s keyword
    arguments besides images and output (num_images, method, exclude, seed, ...)."""
    try:
        # imported here: calibration is an optional stage that FP32 and FP16 builds never load
        from mgd_rt.calibration import calibrate
    except ImportError:
        raise MgdRtError(
            "--calib-images: mgd_rt.calibration (INT8 calibration) is not available in this install; "
            "make the Q/DQ graph with it elsewhere and build that graph with --int8"
        ) from None
    output = workdir / f"{onnx_path.stem}.int8.onnx"
    # TensorRT's placement whatever the graph (calibrate's auto would pick by opset)
    result = calibrate(onnx_path, images=calib_images, output=output, **{**options, "target": "tensorrt"})
    made = Path(getattr(result, "path", None) or result or output)
    if not made.is_file():
        raise MgdRtError(f"calibration did not write a Q/DQ graph (expected {made})")
    return made


def prepare_graph(plan: BuildPlan, proto: Any, workdir: Path) -> PreparedGraph:
    """The graph ``plan`` builds from ``proto`` (the source ModelProto); files derived on the fly go
    to ``workdir``, which must outlive the parse."""
    t0 = time.perf_counter()
    if plan.derive == FP16_CONVERT:
        return PreparedGraph(plan.onnx_path, _fp16_graph(plan, proto),
                             "converted to FP16 on the fly (mgd_rt.export.fp16)",
                             {"fp16": time.perf_counter() - t0})
    if plan.derive == CALIBRATE:
        log.info("calibrating %s for INT8 on %s...", plan.onnx_path.name, plan.calib_images)
        path = _calibrated_graph(plan.onnx_path, plan.calib_images, workdir, plan.calibration_options)
        return PreparedGraph(path, None, f"calibrated to Q/DQ on the fly from {plan.calib_images} (mgd_rt.calibration)",
                             {"calibrate": time.perf_counter() - t0})
    if plan.derive == TRT_FP16_FLAG:
        return PreparedGraph(plan.onnx_path, None, f"FP32 graph with {plan.lib.describe()}'s FP16 builder flag")
    return PreparedGraph(plan.onnx_path)


__all__ = ["PreparedGraph", "prepare_graph"]
