"""Builder configuration: the network parsed from the prepared graph, and the BuilderConfig for a plan.

Everything here works on the imported library module (``plan.lib.module``, tensorrt or
tensorrt_rtx), whose Python APIs match; nothing imports TensorRT at module level.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from mgd_rt.contract import INPUT_NAME
from mgd_rt.engine.plan import TRT_FP16_FLAG, BuildPlan
from mgd_rt.engine.prepare import PreparedGraph
from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")


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


@dataclass
class ParsedNetwork:
    """A parsed INetworkDefinition with the objects it depends on.

    The library's objects are held together because the parser owns the weights the network
    points to, and the builder and network call back into the logger: none may be freed first.
    """

    logger: Any
    builder: Any
    network: Any
    parser: Any


def parse_network(plan: BuildPlan, graph: PreparedGraph) -> ParsedNetwork:
    """Create the network (strongly typed as ``plan`` says) and parse ``graph`` into it; MgdRtError
    with the parser's first errors when it refuses the graph."""
    trt = plan.lib.module
    logger = _Logger.create(trt)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and not plan.lib.strongly_typed:
        # TensorRT 10: FP16 / Q/DQ graphs are built strongly typed too, so the graph decides
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(graph.data, str(plan.onnx_path)) if graph.data is not None else \
        parser.parse_from_file(str(graph.path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok or errors:
        raise MgdRtError(f"{plan.onnx_path}: {plan.lib.describe()}'s ONNX parser refused the graph: "
                         f"{'; '.join(errors[:3]) or 'no reason given'}")
    return ParsedNetwork(logger, builder, network, parser)


@dataclass
class BuilderSetup:
    """The BuilderConfig for a plan, its timing cache (None when not used) and progress monitor
    (held here: the config only borrows it)."""

    config: Any
    timing_cache: Any = None
    monitor: Any = None


def _set_timing_cache(plan: BuildPlan, setup: BuilderSetup) -> None:
    if plan.timing_cache is None:
        return
    if plan.lib.is_rtx:
        # TensorRT-RTX deprecated timing caches (its operations are no-ops): say so, keep the flag recorded
        log.warning("--timing-cache: %s has no timing cache (no-op since RTX 1.2); %s is not used",
                    plan.lib.describe(), plan.timing_cache)
        return
    data = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    setup.timing_cache = setup.config.create_timing_cache(data)
    setup.config.set_timing_cache(setup.timing_cache, ignore_mismatch=False)
    log.info("timing cache %s (%s)", plan.timing_cache, f"{len(data)} bytes" if data else "new")


def configure_builder(plan: BuildPlan, parsed: ParsedNetwork) -> BuilderSetup:
    """The BuilderConfig: precision flag (TensorRT 10 FP16 only), workspace, optimisation level,
    portability, compute-capability targets, timing cache, progress monitor and the batch profile
    for ``image`` (B, 3, S, S) or, for a pixel input, (B, S, S, 3)."""
    trt = plan.lib.module
    config = parsed.builder.create_builder_config()
    if plan.derive == TRT_FP16_FLAG:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace * (1 << 30)))
    if plan.opt_level is not None:
        config.builder_optimization_level = plan.opt_level
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.hardware_level is not None:
        config.hardware_compatibility_level = plan.hardware_level
    if plan.targets:
        config.num_compute_capabilities = len(plan.targets)
        for i, target in enumerate(plan.targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), i)
    setup = BuilderSetup(config)
    _set_timing_cache(plan, setup)
    setup.monitor = _progress_monitor(trt) if plan.progress else None
    if setup.monitor is not None:
        config.progress_monitor = setup.monitor
    profile = parsed.builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *[plan.graph.input_shape(b) for b in plan.profile])
    config.add_optimization_profile(profile)
    return setup


__all__ = ["BuilderSetup", "ParsedNetwork", "configure_builder", "parse_network"]
