"""The build plan: every user mistake refused before the (long) build starts, as one :class:`BuildPlan`.

Precision plan, batch profile, compute-capability targets, hardware and version compatibility,
output and timing-cache paths, and the GPU the engine is for. Nothing here imports TensorRT
itself: ``Library.module`` is only inspected for the features the flags need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import PRECISIONS, check_output_path, engine_path
from mgd_rt.engine.source import GraphInfo
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.tensorrt_library import HARDWARE_COMPATIBILITY, RTX_TARGETS, GpuInfo, Library, current_gpu

# the optimisation profile when --batch is left out of a dynamic-batch graph: batch 1 tuned,
# up to 4 (the runtime's --batch-size); a fixed-batch graph's profile is its batch
DEFAULT_PROFILE = (1, 1, 4)

# how the graph the library parses is made from the source graph (BuildPlan.derive; None: as is)
FP16_CONVERT = "fp16-convert"  # strongly typed library: an FP16 graph converted on the fly
CALIBRATE = "calibrate"  # a Q/DQ graph calibrated on the fly
TRT_FP16_FLAG = "trt-fp16-flag"  # TensorRT 10: the FP32 graph with the builder's FP16 flag


def parse_profile(text: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or 'N' = N:N:N) -> (min, opt, max) batch sizes; MgdRtError unless 1 <= MIN <= OPT <= MAX."""
    parts = text.split(":")
    if len(parts) == 1:
        parts = parts * 3
    try:
        if len(parts) != 3:
            raise ValueError
        lo, opt, hi = (int(p) for p in parts)
    except ValueError:
        raise MgdRtError(f"--batch {text}: use MIN:OPT:MAX (e.g. 1:4:8) or one batch size N") from None
    if not 1 <= lo <= opt <= hi:
        raise MgdRtError(f"--batch {text}: a profile needs 1 <= MIN <= OPT <= MAX (got {lo}:{opt}:{hi})")
    return lo, opt, hi


def resolve_profile(graph: GraphInfo, batch: str | tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The (min, opt, max) batch profile to build ``graph`` with.

    ``batch`` None: a fixed-batch graph's batch, else DEFAULT_PROFILE. A given profile must hold
    only a fixed-batch graph's batch (its input dims cannot take another one).
    """
    if batch is None:
        return (graph.fixed_batch,) * 3 if graph.fixed_batch else DEFAULT_PROFILE
    profile = parse_profile(batch) if isinstance(batch, str) else parse_profile(":".join(map(str, batch)))
    if graph.fixed_batch and profile != (graph.fixed_batch,) * 3:
        n = graph.fixed_batch
        raise MgdRtError(f"--batch {':'.join(map(str, profile))}: {graph.path.name} has a fixed batch of {n}, "
                         f"so the profile can only be {n}:{n}:{n}; re-export with --batch dynamic for a range")
    return profile


def parse_targets(targets: str | list[str] | None) -> list[str]:
    """"sm86,sm89" (or a list) -> ["sm86", "sm89"], lower-cased, duplicates dropped; [] for None."""
    if targets is None:
        return []
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    out = [t.strip().lower() for t in items if t.strip()]
    bad = [t for t in out if t not in RTX_TARGETS]
    if bad or not out:
        raise MgdRtError(f"--target {','.join(items)}: choose from {', '.join(RTX_TARGETS)} (comma-separated)")
    return list(dict.fromkeys(out))


def plan_precision(graph: GraphInfo, precision: str | None, lib: Library, calib_images) -> tuple[str, str | None]:
    """(precision, how the graph to build is derived: None, FP16_CONVERT, CALIBRATE or TRT_FP16_FLAG)."""
    precision = precision or graph.precision
    if precision not in PRECISIONS:
        raise MgdRtError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    have = graph.precision
    if calib_images is not None and precision != "int8":
        raise MgdRtError("--calib-images only applies to --int8")
    if have == precision:
        if calib_images is not None:
            raise MgdRtError(f"{graph.path.name} is already a Q/DQ (int8) graph: leave --calib-images out")
        return precision, None
    if have != "fp32":
        # a typed graph cannot be re-typed: its precision was fixed when it was made, so derive from FP32
        raise MgdRtError(
            f"--{precision}: {graph.path.name} is a {have} graph; build {precision} from the FP32 graph "
            f"(model.onnx), or leave the precision flag out to build it as {have}"
        )
    if precision == "fp16":
        return precision, TRT_FP16_FLAG if not lib.strongly_typed else FP16_CONVERT
    # fp32 -> int8: only through a calibrated Q/DQ graph (TensorRT 10's implicit INT8 calibration is deprecated)
    if calib_images is None:
        raise MgdRtError(
            f"--int8: {graph.path.name} is an FP32 graph; pass --calib-images DIR to calibrate it on the fly, "
            "or give the Q/DQ graph mgd-rt calibrate writes"
        )
    return precision, CALIBRATE


@dataclass
class BuildPlan:
    """A build whose every flag was checked: what the later steps (prepare, configure, sidecar) read."""

    graph: GraphInfo
    lib: Library
    precision: str
    derive: str | None  # None, FP16_CONVERT, CALIBRATE or TRT_FP16_FLAG
    profile: tuple[int, int, int]  # batch min, opt, max
    output: Path
    workspace: float | None  # GiB
    timing_cache: Path | None
    opt_level: int | None
    targets: list[str]  # compute capabilities ("sm89"); [] builds for ``gpu``
    version_compatible: bool
    hardware_compatibility: str | None  # as given, for the sidecar
    hardware_level: Any  # the library's HardwareCompatibilityLevel member, or None
    gpu: GpuInfo | None  # None only with targets
    calib_images: str | Path | None
    calibration_options: dict[str, Any]
    progress: bool

    @property
    def onnx_path(self) -> Path:
        return self.graph.path

    @property
    def strongly_typed(self) -> bool:
        """The network is created strongly typed: always on TensorRT 11 / RTX; on TensorRT 10 for
        FP16 and Q/DQ graphs, so the graph decides there too (its FP16 flag is for FP32 graphs)."""
        return self.lib.strongly_typed or (self.derive != TRT_FP16_FLAG and self.precision != "fp32")

    def target_text(self) -> str:
        """What the engine is for, as the log says it: "sm89,sm120" or "GPU name (8.9)"."""
        if self.targets:
            return ",".join(self.targets)
        return f"{self.gpu.name} ({self.gpu.compute_capability})"  # type: ignore[union-attr]


def _check_tuning(workspace: float | None, opt_level: int | None) -> None:
    if workspace is not None and workspace <= 0:
        raise MgdRtError(f"--workspace {workspace}: give a positive size in GiB")
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise MgdRtError(f"--opt-level {opt_level}: use 0..5 (TensorRT's builder optimization level; default 3)")


def _check_portability(lib: Library, target_list: list[str], hardware_compatibility: str | None,
                       version_compatible: bool) -> Any:
    """Refuse portability flags ``lib`` cannot honour; returns the HardwareCompatibilityLevel member or None."""
    trt = lib.module
    if target_list and not lib.is_rtx:
        raise MgdRtError(f"--target: ahead-of-time compute-capability targets need TensorRT-RTX (--rtx); "
                         f"{lib.describe()} builds for the GPU it runs on")
    hw_level = None
    if hardware_compatibility not in (None, "none"):
        if hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise MgdRtError(f"--hardware-compatibility {hardware_compatibility}: choose from none, "
                             f"{', '.join(HARDWARE_COMPATIBILITY)}")
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise MgdRtError(f"--hardware-compatibility: {lib.describe()} has no hardware-compatible builds")
        hw_level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[hardware_compatibility])
    if version_compatible and not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
        raise MgdRtError(f"--version-compatible: {lib.describe()} has no version-compatible builds")
    return hw_level


def _check_timing_cache(timing_cache: str | Path | None) -> Path | None:
    if timing_cache is None:
        return None
    timing_cache = Path(timing_cache)
    if not timing_cache.parent.is_dir() or not os.access(timing_cache.parent, os.W_OK):
        raise MgdRtError(f"--timing-cache {timing_cache}: folder {timing_cache.parent} missing or not writable")
    return timing_cache


def _engine_gpu(lib: Library, gpu: GpuInfo | None) -> GpuInfo:
    """The GPU an engine without --target is for: ``gpu``, else this machine's."""
    if gpu is not None:
        return gpu
    try:
        return current_gpu()
    except MgdRtError as exc:
        # TensorRT-RTX can build without a GPU given --target: say so
        hint = " or pass --target sm86,sm89,... for an ahead-of-time build" if lib.is_rtx else ""
        raise MgdRtError(f"{exc}{hint}") from None


def plan_build(
    graph: GraphInfo,
    lib: Library,
    *,
    precision: str | None,
    output: str | Path | None,
    batch: str | tuple[int, int, int] | None,
    calib_images: str | Path | None,
    workspace: float | None,
    timing_cache: str | Path | None,
    opt_level: int | None,
    targets: str | list[str] | None,
    version_compatible: bool,
    hardware_compatibility: str | None,
    progress: bool,
    calibration_options: dict[str, Any] | None,
    gpu: GpuInfo | None,
) -> BuildPlan:
    """Check :func:`build_engine`'s arguments against ``graph`` and ``lib`` (same meanings); MgdRtError
    for the first mistake, before anything is written or built."""
    precision, derive = plan_precision(graph, precision, lib, calib_images)
    profile = resolve_profile(graph, batch)
    _check_tuning(workspace, opt_level)
    target_list = parse_targets(targets)
    hw_level = _check_portability(lib, target_list, hardware_compatibility, version_compatible)
    output = Path(output) if output is not None else engine_path(graph.path, precision)
    check_output_path(output, ".engine", graph.path, what="engine")
    cache_path = _check_timing_cache(timing_cache)
    if not target_list:
        gpu = _engine_gpu(lib, gpu)
    return BuildPlan(graph, lib, precision, derive, profile, output, workspace, cache_path, opt_level,
                     target_list, version_compatible, hardware_compatibility, hw_level, gpu, calib_images,
                     calibration_options or {}, progress)


__all__ = ["CALIBRATE", "DEFAULT_PROFILE", "FP16_CONVERT", "TRT_FP16_FLAG", "BuildPlan", "parse_profile",
           "parse_targets", "plan_build", "plan_precision", "resolve_profile"]
