"""ONNX graph -> TensorRT / TensorRT-RTX engine + JSON sidecar: :func:`build_engine`.

Precision is decided in the graph (design.md): strongly typed TensorRT (11.x, RTX) builds
``--fp16`` from the FP16 graph (made on the fly from an FP32 graph with
``mgd_rt.export.fp16.to_fp16``) and ``--int8`` from a Q/DQ graph (made on the fly by
``mgd_rt.calibration.calibrate`` when calibration images are given). TensorRT 10 builds an FP32
graph with its FP16 flag, and typed graphs (FP16, Q/DQ) strongly typed like the others.
Every user mistake is refused before the (long) build starts, and nothing is half-written.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import (
    PRECISIONS,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    check_output_path,
    engine_path,
    file_sha256,
    sidecar_path,
    write_atomic,
    write_engine,
)
from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.tensorrt_library import (
    HARDWARE_COMPATIBILITY,
    RTX_TARGETS,
    GpuInfo,
    Library,
    current_gpu,
    import_library,
)

log = logging.getLogger("mgd_rt")

# the optimisation profile when --batch is left out of a dynamic-batch graph: batch 1 tuned,
# up to 4 (the runtime's --batch-size); a fixed-batch graph's profile is its batch
DEFAULT_PROFILE = (1, 1, 4)
# ONNX TensorProto element types / TensorRT DataType names -> the numpy spelling the sidecar uses
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}


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


@dataclass
class GraphInfo:
    """What build_engine reads from an ONNX graph before building."""

    path: Path
    sha256: str
    metadata: dict[str, str]
    precision: str  # the graph's own compute precision: fp32, fp16 or int8 (Q/DQ)
    image_size: int
    fixed_batch: int | None  # None: dynamic batch
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def _dims(value_info) -> list[int]:
    # symbolic or unknown dims -> -1, TensorRT's spelling of "dynamic"
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def read_graph(onnx_path: str | Path) -> tuple[GraphInfo, Any]:
    """(GraphInfo, the loaded ModelProto) of an mgd-rt graph; MgdRtError for anything else.

    The graph must have input ``image`` float32 (B, 3, S, S) and output ``mask_logits``;
    S comes from the ``image_size`` metadata (and must match the static input dims).
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise MgdRtError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise MgdRtError(f"{path}: not an ONNX graph ({first_line(exc)})") from None
    if not model.graph.node or not model.graph.input:
        raise MgdRtError(f"{path}: not an ONNX graph (no nodes or inputs); pass a graph from mgd-rt export")
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise MgdRtError(f"{path}: not an mgd-rt graph: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                         f"has {sorted(inputs)} -> {sorted(outputs)}")
    meta = {p.key: p.value for p in model.metadata_props}
    dims = _dims(inputs[INPUT_NAME])
    if len(dims) != 4 or dims[1] != 3:
        raise MgdRtError(f"{path}: input {INPUT_NAME!r} must be (B, 3, S, S), has {dims}")
    size = int(meta["image_size"]) if "image_size" in meta else dims[-1]
    if size <= 0 or dims[2:] != [size, size]:
        raise MgdRtError(f"{path}: input {INPUT_NAME!r} is {dims}, metadata image_size {meta.get('image_size')}: "
                         "spatial size must be static and match; re-export with mgd-rt export")
    precision = meta.get("precision") or _detect_precision(model)
    if precision not in PRECISIONS:
        raise MgdRtError(f"{path}: metadata precision {precision!r} is not one of {', '.join(PRECISIONS)}")

    def io(values) -> list[dict[str, Any]]:
        return [{"name": v.name, "shape": _dims(v), "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "?")}
                for v in values]

    info = GraphInfo(path, file_sha256(path), meta, precision, size, dims[0] if dims[0] > 0 else None,
                     io(model.graph.input), io(model.graph.output))
    return info, model


def _detect_precision(model) -> str:
    """A graph without our metadata: Q/DQ nodes -> int8, FP16 weights -> fp16, else fp32."""
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


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


class _Logger:
    """Factory for a TensorRT ILogger that forwards to logging and keeps the errors for our message."""

    @staticmethod
    def create(trt, verbose: bool = False):
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    self.errors.append(msg)
                    log.debug("TensorRT: %s", msg)  # raised in our one-line message, not printed twice
                elif severity == trt.ILogger.WARNING:
                    log.debug("TensorRT warning: %s", msg)  # chatty (e.g. INT64 weights cast): debug
                elif verbose:
                    log.debug("TensorRT: %s", msg)

        return Logger()


def _progress_monitor(trt):
    """A TensorRT progress monitor that logs top-level phases with their time, or None if absent."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}
            self.top: set[str] = set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                self.top.add(phase_name)
                log.info("build: %s (%d steps)...", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.top:
                log.info("build: %s done in %.1f s", phase_name, time.perf_counter() - self.started[phase_name])

    return Progress()


def _parse_targets(targets: str | list[str] | None) -> list[str]:
    if targets is None:
        return []
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    out = [t.strip().lower() for t in items if t.strip()]
    bad = [t for t in out if t not in RTX_TARGETS]
    if bad or not out:
        raise MgdRtError(f"--target {','.join(items)}: choose from {', '.join(RTX_TARGETS)} (comma-separated)")
    return list(dict.fromkeys(out))


def _plan_precision(graph: GraphInfo, precision: str | None, lib: Library, calib_images) -> tuple[str, str | None]:
    """(precision, how the graph to build is derived: None, 'fp16-convert', 'calibrate' or 'trt-fp16-flag')."""
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
        # a typed graph cannot be re-typed: precision is decided in the graph (design.md)
        raise MgdRtError(
            f"--{precision}: {graph.path.name} is a {have} graph; build {precision} from the FP32 graph "
            f"(model.onnx), or leave the precision flag out to build it as {have}"
        )
    if precision == "fp16":
        return precision, "trt-fp16-flag" if not lib.strongly_typed else "fp16-convert"
    # fp32 -> int8: only through a calibrated Q/DQ graph (TensorRT 10's implicit INT8 calibration is deprecated)
    if calib_images is None:
        raise MgdRtError(
            f"--int8: {graph.path.name} is an FP32 graph; pass --calib-images DIR to calibrate it on the fly, "
            "or give the Q/DQ graph mgd-rt calibrate writes"
        )
    return precision, "calibrate"


def _calibrated_graph(onnx_path: Path, calib_images, workdir: Path, options: dict[str, Any]) -> Path:
    """The Q/DQ graph made by mgd_rt.calibration (imported here: it is an optional, later-written stage)."""
    try:
        from mgd_rt.calibration import calibrate
    except ImportError:
        raise MgdRtError(
            "--calib-images: mgd_rt.calibration (INT8 calibration) is not available in this install; "
            "make the Q/DQ graph with it elsewhere and build that graph with --int8"
        ) from None
    output = workdir / f"{onnx_path.stem}.int8.onnx"
    result = calibrate(onnx_path, images=calib_images, output=output, **options)
    made = Path(getattr(result, "path", None) or result or output)
    if not made.is_file():
        raise MgdRtError(f"calibration did not write a Q/DQ graph (expected {made})")
    return made


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

    The engine takes ``image`` float32 (B, 3, S, S), B in the profile ``batch`` (MIN:OPT:MAX),
    and returns ``mask_logits`` float32 (B, 1, S, S). ``precision`` None: the graph's own.
    ``library``: "auto" (tensorrt if installed, else tensorrt_rtx), "tensorrt" or "tensorrt_rtx".
    ``targets`` (TensorRT-RTX only): compute capabilities such as "sm86,sm89" to build for ahead of
    time, no GPU needed; otherwise the engine is for this machine's GPU (``gpu`` overrides the
    detected one, for the engine cache). ``workspace`` in GiB; ``opt_level`` 0-5.
    ``sidecar_extra``: more keys for the sidecar (the engine cache's key).
    """
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    onnx_path = Path(onnx_path)
    graph, proto = read_graph(onnx_path)
    lib = import_library(library)
    trt = lib.module
    precision, derive = _plan_precision(graph, precision, lib, calib_images)

    # the profile: a fixed-batch graph holds only its batch
    if batch is None:
        profile = (graph.fixed_batch,) * 3 if graph.fixed_batch else DEFAULT_PROFILE
    else:
        profile = parse_profile(batch) if isinstance(batch, str) else parse_profile(":".join(map(str, batch)))
    if graph.fixed_batch and profile != (graph.fixed_batch,) * 3:
        n = graph.fixed_batch
        raise MgdRtError(f"--batch {':'.join(map(str, profile))}: {onnx_path.name} has a fixed batch of {n}, "
                         f"so the profile can only be {n}:{n}:{n}; re-export with --batch dynamic for a range")
    if workspace is not None and workspace <= 0:
        raise MgdRtError(f"--workspace {workspace}: give a positive size in GiB")
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise MgdRtError(f"--opt-level {opt_level}: use 0..5 (TensorRT's builder optimization level; default 3)")
    target_list = _parse_targets(targets)
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

    output = Path(output) if output is not None else engine_path(onnx_path, precision)
    check_output_path(output, ".engine", onnx_path, what="engine")
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        if not timing_cache.parent.is_dir() or not os.access(timing_cache.parent, os.W_OK):
            raise MgdRtError(f"--timing-cache {timing_cache}: folder {timing_cache.parent} missing or not writable")
    if not target_list:
        # building for this machine's GPU: record which; TensorRT-RTX can build without one given --target
        if gpu is None:
            try:
                gpu = current_gpu()
            except MgdRtError as exc:
                hint = " or pass --target sm86,sm89,... for an ahead-of-time build" if lib.is_rtx else ""
                raise MgdRtError(f"{exc}{hint}") from None

    with tempfile.TemporaryDirectory(prefix="mgd-rt-build-") as workdir:
        # the graph the library parses: the file itself, or one derived from it on the fly
        t0 = time.perf_counter()
        parse_path, parse_bytes = onnx_path, None
        derived_note = None
        if derive == "fp16-convert":
            from mgd_rt.export.fp16 import to_fp16

            log.info("converting %s to FP16 (strongly typed %s builds from the FP16 graph)...",
                     onnx_path.name, lib.describe())
            fp16 = to_fp16(proto)
            del fp16.metadata_props[:]
            fp16.metadata_props.extend(proto.metadata_props)
            for prop in fp16.metadata_props:
                if prop.key == "precision":
                    prop.value = "fp16"
            parse_bytes = fp16.SerializeToString()
            derived_note = "converted to FP16 on the fly (mgd_rt.export.fp16)"
            seconds["fp16"] = time.perf_counter() - t0
        elif derive == "calibrate":
            log.info("calibrating %s for INT8 on %s...", onnx_path.name, calib_images)
            parse_path = _calibrated_graph(onnx_path, calib_images, Path(workdir), calibration_options or {})
            derived_note = f"calibrated to Q/DQ on the fly from {calib_images} (mgd_rt.calibration)"
            seconds["calibrate"] = time.perf_counter() - t0
        elif derive == "trt-fp16-flag":
            derived_note = f"FP32 graph with {lib.describe()}'s FP16 builder flag"
        del proto  # B+ graphs are hundreds of MB

        t0 = time.perf_counter()
        logger = _Logger.create(trt)
        builder = trt.Builder(logger)
        typed = lib.strongly_typed or (derive != "trt-fp16-flag" and precision != "fp32")
        flags = 0
        if typed and not lib.strongly_typed:
            # TensorRT 10: FP16 / Q/DQ graphs are built strongly typed too, so the graph decides
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse(parse_bytes, str(onnx_path)) if parse_bytes is not None else \
            parser.parse_from_file(str(parse_path))
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        if not ok or errors:
            raise MgdRtError(f"{onnx_path}: {lib.describe()}'s ONNX parser refused the graph: "
                             f"{'; '.join(errors[:3]) or 'no reason given'}")
        seconds["parse"] = time.perf_counter() - t0

        config = builder.create_builder_config()
        if derive == "trt-fp16-flag":
            config.set_flag(trt.BuilderFlag.FP16)
        if workspace is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace * (1 << 30)))
        if opt_level is not None:
            config.builder_optimization_level = opt_level
        if version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if hw_level is not None:
            config.hardware_compatibility_level = hw_level
        if target_list:
            config.num_compute_capabilities = len(target_list)
            for i, target in enumerate(target_list):
                config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), i)
        cache = None
        if timing_cache is not None and lib.is_rtx:
            # TensorRT-RTX deprecated timing caches (its operations are no-ops): say so, keep the flag recorded
            log.warning("--timing-cache: %s has no timing cache (no-op since RTX 1.2); %s is not used",
                        lib.describe(), timing_cache)
        elif timing_cache is not None:
            data = timing_cache.read_bytes() if timing_cache.is_file() else b""
            cache = config.create_timing_cache(data)
            config.set_timing_cache(cache, ignore_mismatch=False)
            log.info("timing cache %s (%s)", timing_cache, f"{len(data)} bytes" if data else "new")
        monitor = _progress_monitor(trt) if progress else None
        if monitor is not None:
            config.progress_monitor = monitor
        s = graph.image_size
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(INPUT_NAME, *[(b, 3, s, s) for b in profile])
        config.add_optimization_profile(opt_profile)

        log.info("building %s engine with %s, batch %d:%d:%d, S=%d, for %s...", precision, lib.describe(),
                 *profile, s, ",".join(target_list) if target_list else f"{gpu.name} ({gpu.compute_capability})")
        t0 = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        seconds["build"] = time.perf_counter() - t0
        if engine is None:
            raise MgdRtError(f"{onnx_path}: {lib.describe()} could not build the engine: "
                             f"{'; '.join(logger.errors[-3:]) or 'no reason given'}")

        def io(tensors) -> list[dict[str, Any]]:
            return [{"name": t.name, "shape": list(t.shape), "dtype": _TRT_DTYPES.get(t.dtype.name, t.dtype.name)}
                    for t in tensors]

        inputs = io(network.get_input(i) for i in range(network.num_inputs))
        outputs = io(network.get_output(i) for i in range(network.num_outputs))

        from mgd_rt.version import __version__

        sidecar: dict[str, Any] = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "engine": {"file": output.name, "bytes": engine.nbytes},
            "library": {"name": lib.name, "version": lib.version},
            "precision": precision,
            "strongly_typed": bool(typed),
            "profile": {"input": INPUT_NAME,
                        **{k: [b, 3, s, s] for k, b in zip(("min", "opt", "max"), profile, strict=True)}},
            "inputs": inputs,
            "outputs": outputs,
            "image_size": s,
            "variant": graph.metadata.get("variant", "unknown"),
            "source": {
                "onnx": str(onnx_path.resolve()),
                "sha256": graph.sha256,
                "precision": graph.precision,
                "derived": derived_note,
                "metadata": graph.metadata,
            },
            "build": {
                "flags": {
                    "batch": ":".join(map(str, profile)),
                    "workspace_gib": workspace,
                    "timing_cache": (f"{timing_cache} (not used: no timing cache in TensorRT-RTX)" if timing_cache
                                     and lib.is_rtx else str(timing_cache) if timing_cache else None),
                    "opt_level": opt_level,
                    "version_compatible": version_compatible,
                    "hardware_compatibility": hardware_compatibility or "none",
                    "targets": target_list or None,
                },
                "seconds": round(time.perf_counter() - t_start, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": platform.node(),
                "mgd_rt_version": __version__,
            },
            "targets": ({"compute_capabilities": target_list} if target_list
                        else {"gpu": gpu.as_dict()}),  # type: ignore[union-attr]
            **(sidecar_extra or {}),
        }
        t0 = time.perf_counter()
        write_engine(output, memoryview(engine), sidecar)
        if cache is not None:
            write_atomic(timing_cache, memoryview(cache.serialize()))
        seconds["save"] = time.perf_counter() - t0
    result = BuildResult(output, sidecar_path(output), sidecar, engine.nbytes, seconds)
    log.info("wrote %s (%.1f MB) in %.1f s", output, engine.nbytes / 1e6, time.perf_counter() - t_start)
    return result


__all__ = ["BuildResult", "DEFAULT_PROFILE", "GraphInfo", "PRECISIONS", "build_engine",
           "parse_profile", "read_graph"]
