"""ONNX graph -> TensorRT / TensorRT-RTX engine + JSON sidecar: :func:`build_engine`.

Precision is decided in the graph: strongly typed TensorRT (11.x, RTX) builds ``--fp16`` from
the FP16 graph (made on the fly from an FP32 graph with ``mgd_rt.export.fp16.to_fp16``) and
``--int8`` from a Q/DQ graph (made on the fly by ``mgd_rt.calibration.calibrate`` when
calibration images are given). TensorRT 10 builds an FP32 graph with its FP16 flag, and typed
graphs (FP16, Q/DQ) strongly typed like the others. Every user mistake is refused before the
(long) build starts, and nothing is half-written.

The steps, one module each: ``source`` (read the graph), ``plan`` (check every flag),
``prepare`` (the graph to parse), ``configure`` (network and BuilderConfig), ``sidecar``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import PRECISIONS, sidecar_path, write_atomic, write_engine
from mgd_rt.engine.configure import BuilderSetup, ParsedNetwork, configure_builder, parse_network
from mgd_rt.engine.plan import DEFAULT_PROFILE, BuildPlan, parse_profile, plan_build
from mgd_rt.engine.prepare import prepare_graph
from mgd_rt.engine.sidecar import build_sidecar
from mgd_rt.engine.source import GraphInfo, read_graph
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.tensorrt_library import GpuInfo, import_library

log = logging.getLogger("mgd_rt")


@dataclass
class BuildResult:
    """What build_engine wrote: the engine, its sidecar (also as a dict) and measurements."""

    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    engine_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        s = self.sidecar
        prof = s["profile"]
        where = (", ".join(s["targets"]["compute_capabilities"]) if s["targets"].get("compute_capabilities")
                 else f"{s['targets']['gpu']['name']} ({s['targets']['gpu']['compute_capability']})")
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        derived = f", {s['source']['derived']}" if s["source"]["derived"] else ""
        return [
            f"wrote {self.path} ({self.engine_bytes / 1e6:.1f} MB) + {self.sidecar_path.name}",
            f"  {s['library']['name']} {s['library']['version']}, {s['precision']} "
            f"(from a {s['source']['precision']} graph{derived}), "
            f"S={s['image_size']}, batch {prof['min'][0]}:{prof['opt'][0]}:{prof['max'][0]}, for {where}",
            f"time: {steps}",
            f"done: engine built in {sum(self.seconds.values()):.1f} s",
        ]


def _serialize(plan: BuildPlan, parsed: ParsedNetwork, setup: BuilderSetup, attention_nodes: int = 0):
    """The library's build (the long step): the serialized engine, or MgdRtError with its last errors.

    ``attention_nodes``: the graph's ONNX Attention nodes (an ``--opset 23`` CPU graph); a failed build
    of such a graph says so and how to get a graph TensorRT builds.
    """
    log.info("building %s engine with %s, batch %d:%d:%d, S=%d, for %s...", plan.precision, plan.lib.describe(),
             *plan.profile, plan.graph.image_size, plan.target_text())
    engine = parsed.builder.build_serialized_network(parsed.network, setup.config)
    if engine is None:
        # TensorRT-RTX 1.7 built ONNX Attention in FP16, but in FP32 (also the FP32 part of a Q/DQ graph)
        # only for a fixed batch; with a batch range Myelin stops with "Attention operation was not
        # supported by a dedicated kernel", which names neither the graph's opset nor the way out
        attention = (f" (the graph has {attention_nodes} ONNX Attention nodes: an --opset 23 export, the CPU "
                     "graph, which TensorRT builds only in some precisions and batch profiles; TensorRT-RTX 1.7: "
                     "FP16, or a fixed --batch N:N:N; export with --opset 20 for TensorRT)"
                     if attention_nodes else "")
        raise MgdRtError(f"{plan.onnx_path}: {plan.lib.describe()} could not build the engine{attention}: "
                         f"{'; '.join(parsed.logger.errors[-3:]) or 'no reason given'}")
    return engine


def build_engine(
    onnx_path: str | Path,
    precision: str | None = None,
    output: str | Path | None = None,
    batch: str | tuple[int, int, int] | None = None,
    calib_images: str | Path | None = None,
    workspace: float | None = None,
    timing_cache: str | Path | None = None,
    opt_level: int | None = None,
    library: str = "auto",
    targets: str | list[str] | None = None,
    version_compatible: bool = False,
    hardware_compatibility: str | None = None,
    progress: bool = True,
    calibration_options: dict[str, Any] | None = None,
    gpu: GpuInfo | None = None,
    sidecar_extra: dict[str, Any] | None = None,
) -> BuildResult:
    """Build ``onnx_path`` into ``output`` (default model.<precision>.engine) and its sidecar.

    The engine takes ``image`` float32 (B, 3, S, S) (a pixel-input graph's: uint8 (B, S, S, 3)), B in the
    profile ``batch`` (MIN:OPT:MAX),
    and returns ``mask_logits`` float32 (B, 1, S, S). ``precision`` None: the graph's own.
    ``library``: "auto" (tensorrt if installed, else tensorrt_rtx), "tensorrt" or "tensorrt_rtx".
    ``targets`` (TensorRT-RTX only): compute capabilities such as "sm86,sm89" to build for ahead of
    time, no GPU needed; otherwise the engine is for this machine's GPU (``gpu`` overrides the
    detected one, for the engine cache). ``workspace`` in GiB; ``opt_level`` 0-5.
    ``calibration_options``: keyword arguments of ``mgd_rt.calibration.calibrate`` (num_images,
    method, exclude, seed, ...) when ``calib_images`` calibrates the graph on the fly.
    ``sidecar_extra``: more keys for the sidecar (the engine cache's key).
    """
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    graph, proto = read_graph(onnx_path)
    attention_nodes = sum(node.op_type == "Attention" for node in proto.graph.node)  # for _serialize's error
    plan = plan_build(
        graph, import_library(library), precision=precision, output=output, batch=batch,
        calib_images=calib_images, workspace=workspace, timing_cache=timing_cache, opt_level=opt_level,
        targets=targets, version_compatible=version_compatible, hardware_compatibility=hardware_compatibility,
        progress=progress, calibration_options=calibration_options, gpu=gpu,
    )
    with tempfile.TemporaryDirectory(prefix="mgd-rt-build-") as workdir:
        prepared = prepare_graph(plan, proto, Path(workdir))
        seconds.update(prepared.seconds)
        del proto  # B+ graphs are hundreds of MB

        t0 = time.perf_counter()
        parsed = parse_network(plan, prepared)
        seconds["parse"] = time.perf_counter() - t0
        setup = configure_builder(plan, parsed)
        t0 = time.perf_counter()
        engine = _serialize(plan, parsed, setup, attention_nodes)
        seconds["build"] = time.perf_counter() - t0

        sidecar = build_sidecar(plan, parsed.network, engine.nbytes, prepared.derived,
                                time.perf_counter() - t_start, sidecar_extra)
        t0 = time.perf_counter()
        write_engine(plan.output, memoryview(engine), sidecar)
        if setup.timing_cache is not None:
            write_atomic(plan.timing_cache, memoryview(setup.timing_cache.serialize()))
        seconds["save"] = time.perf_counter() - t0
    result = BuildResult(plan.output, sidecar_path(plan.output), sidecar, engine.nbytes, seconds)
    log.info("wrote %s (%.1f MB) in %.1f s", plan.output, engine.nbytes / 1e6, time.perf_counter() - t_start)
    return result


__all__ = ["BuildResult", "DEFAULT_PROFILE", "GraphInfo", "PRECISIONS", "build_engine",
           "parse_profile", "read_graph"]
