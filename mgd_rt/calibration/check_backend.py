"""Where the held-out check runs an INT8 graph: the backend (and float precision) that will run it.

An INT8 graph's accuracy is its runtime's: the same Q/DQ graph gave top-10% IoU 0.975 through ONNX
Runtime with Q/DQ computed in float and 0.839 through its fused integer kernels on an AVX2 CPU, and
a graph that passed on ONNX Runtime missed on OpenVINO's kernels (0.9695, Zen 4). So the check, and
each recovery step, runs the graph where the user will: ONNX Runtime's CPU kernels (the default) or
OpenVINO, whose ``bf16`` also computes the layers left in float in bf16 (the DRM in f32,
:mod:`mgd_rt.runtime.backends.openvino_backend`). The FP32 reference is ONNX Runtime's FP32 run of
the FP32 graph either way (PyTorch's within TOLERANCES['fp32']); speed is compared on that backend:
the FP32 graph in fp32 there.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session

CHECK_BACKENDS = ("onnxruntime", "openvino")
# the float-layer precision each backend's check can run an INT8 graph with (None: f32)
CHECK_DTYPES = {"onnxruntime": (None,), "openvino": (None, "bf16")}


@dataclass
class Runner:
    """One compiled graph: ``infer`` maps (1, 3, S, S) float32 to (1, 1, S, S) float32 logits."""

    infer: Callable[[np.ndarray], np.ndarray]
    description: str
    session: Any = None  # the onnxruntime.InferenceSession when ONNX Runtime runs it (its runtime facts)

    def best_ms(self, x: np.ndarray, runs: int) -> float:
        """Best of ``runs`` timed calls on ``x`` (1, 3, S, S), after one untimed call (allocation, weight packing)."""
        self.infer(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.infer(x)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)


@dataclass(frozen=True)
class CheckBackend:
    """``backend``: onnxruntime or openvino. ``dtype``: openvino's bf16 (an INT8 graph's float layers in
    bf16, the DRM in f32), else None (f32). ``threads``: the backend's threads (None: its default)."""

    backend: str = "onnxruntime"
    dtype: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in CHECK_BACKENDS:
            raise MgdRtError(f"--backend {self.backend}: the held-out check runs on {' or '.join(CHECK_BACKENDS)}")
        if self.dtype not in CHECK_DTYPES[self.backend]:
            raise MgdRtError(f"--dtype {self.dtype}: the check on {self.backend} runs the INT8 graph's float layers "
                             f"in fp32 only" + ("; --backend openvino --dtype bf16 runs them in bf16"
                                                if self.backend == "onnxruntime" else ""))

    @property
    def key(self) -> str:
        """The check's place as an INT8 graph's ``int8_checked_on`` prop records it: onnxruntime, openvino or
        openvino-bf16 (what BaseBackend.warn_int8_check compares with the runtime running the graph)."""
        return self.backend + (f"-{self.dtype}" if self.dtype else "")

    def __str__(self) -> str:
        return "ONNX Runtime CPU" if self.backend == "onnxruntime" else \
            f"OpenVINO CPU{', float layers in bf16' if self.dtype else ''}"

    def open(self, graph: str | Path | bytes, reference: bool = False) -> Runner:
        """``graph`` (a path or serialized ONNX) compiled on this backend; ``reference``: an FP32 graph run in
        fp32 there (the speed reference), whatever ``dtype`` says."""
        if self.backend == "onnxruntime":
            try:
                session = ort_session(graph if isinstance(graph, bytes) else str(graph), self.threads, log_severity=3)
            except Exception as exc:  # ONNX Runtime's own errors: one line naming the graph, not a traceback
                name = "a recovery step's graph" if isinstance(graph, bytes) else str(graph)
                raise MgdRtError(f"{name}: ONNX Runtime cannot load this graph ({first_line(exc)})") from None
            return Runner(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], str(self), session)
        return self._openvino(graph, None if reference else self.dtype)

    def _openvino(self, graph: str | Path | bytes, dtype: str | None) -> Runner:
        from mgd_rt.runtime.backends.openvino_backend import OpenVINOBackend

        if not isinstance(graph, bytes):  # a file of the user's: through OpenVINO's model cache, as it will run
            backend = OpenVINOBackend(graph, dtype=dtype, check_inputs=False, threads=self.threads)
            return Runner(backend.run_exact, backend.describe())
        # a recovery's candidate is compiled once and dropped: its file and cache entry go with it
        with tempfile.TemporaryDirectory(prefix="mgd-rt-check-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            path.write_bytes(graph)
            backend = OpenVINOBackend(path, dtype=dtype, check_inputs=False, threads=self.threads,
                                      cache=Path(tmp) / "cache")
        return Runner(backend.run_exact, backend.describe())
