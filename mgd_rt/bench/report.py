"""The results of a bench run: one :class:`BenchResult` per model x precision x batch size, the
:class:`BenchReport` around them, its terminal table and the JSON it writes (schema :data:`SCHEMA`)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "mgd-rt-bench/1"


def computes(precision: str, dtype: str | None) -> str:
    """``precision``, or ``precision+dtype`` where the --dtype asked for is not the artifact's own."""
    return f"{precision}+{dtype}" if dtype and precision and dtype != precision else precision


@dataclass
class BenchResult:
    """One model x precision x batch size. Times in seconds (raw) and milliseconds (summary)."""

    model: str
    label: str
    batch: int
    backend: str = ""
    device: str = ""
    precision: str = ""
    # the --dtype asked for (None: the artifact's own); differs from precision where a backend computes an
    # artifact's float layers in another precision (OpenVINO: an INT8 graph with --dtype bf16)
    dtype: str | None = None
    variant: str = ""
    image_size: int = 0
    trained: bool | None = None
    status: str = "ok"  # ok | error
    error: str | None = None
    load_s: float | None = None
    warmup_timings_s: list[float] = field(default_factory=list)
    warmup_stable: bool | None = None  # None: stability not checked (CPU)
    timings_s: list[float] = field(default_factory=list)  # every round's timed calls, which latency_ms summarises
    round_timings_s: list[list[float]] = field(default_factory=list)  # the timed calls of each round, in order
    cuda_event_timings_s: list[float] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    flops_per_image: int | None = None
    achieved_tflops: float | None = None
    peak_tflops: float | None = None
    peak_fraction: float | None = None
    vs_torch_fp32: float | None = None  # speed relative to torch fp32 of the same model, same batch, same run
    inputs: list[str] = field(default_factory=list)
    accuracy: dict[str, Any] | None = None
    end_to_end: dict[str, Any] | None = None
    compile: str | None = None  # torch.compile mode of a torch result; None: eager
    # the compiled model's first call at this shape (compilation or inductor cache load, plus one forward),
    # made before the warm-up and in none of the timings; where its kernels came from: miss, hit or reused
    compile_s: float | None = None
    compile_cache: str | None = None

    @property
    def runs_on(self) -> str:
        """The backend, with the torch.compile mode of a compiled result: ``torch+max-autotune``."""
        return f"{self.backend}+{self.compile}" if self.compile else self.backend

    @property
    def computes(self) -> str:
        """The precision, with the float layers' own where the backend was asked for another: ``int8+bf16``."""
        return computes(self.precision, self.dtype)

    def summarise(self) -> None:
        """Fill latency_ms and images_per_s from the raw timings."""
        t = np.asarray(self.timings_s, dtype=np.float64) * 1e3
        self.latency_ms = {"min": float(t.min()), "p50": float(np.percentile(t, 50)),
                           "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
                           "mean": float(t.mean()), "max": float(t.max()), "std": float(t.std())}
        self.images_per_s = self.batch / (self.latency_ms["mean"] / 1e3)


@dataclass
class BenchReport:
    """A whole run: settings, environment, machine peak, FLOPs, results; ``as_dict`` is the JSON."""

    settings: dict[str, Any]
    environment: dict[str, Any]
    peak: dict[str, Any]
    flops: dict[str, Any] = field(default_factory=dict)
    results: list[BenchResult] = field(default_factory=list)
    unavailable: list[dict[str, str]] = field(default_factory=list)  # what could not run, and why
    json_path: Path | None = None
    chart_path: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return any(r.status == "ok" for r in self.results) and all(
            r.accuracy is None or r.accuracy.get("passed", True) for r in self.results if r.status == "ok")

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": self.seconds,
            "settings": self.settings,
            "environment": self.environment,
            "peak": self.peak,
            "flops": self.flops,
            "results": [vars(r).copy() for r in self.results],
            "unavailable": self.unavailable,
        }

    def table(self) -> str:
        """The terminal table: one line per result, accuracy in the same row."""
        bw = max([12] + [len(r.runs_on) for r in self.results])  # wider for compiled results' modes
        head = (f"{'model':<30} {'backend':<{bw}} {'prec':<5} {'B':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
                f"{'mean ms':>9} {'img/s':>8} {'xfp32':>6} {'RSS MB':>7} {'GPU MB':>7} {'%peak':>6} "
                f"{'max/std':>8} {'sig MAE':>8} {'IoU10':>6} acc")
        lines = [head, "-" * len(head)]
        for r in self.results:
            if r.status != "ok":
                lines.append(f"{r.label[:30]:<30} {r.runs_on:<{bw}} {r.computes:<5} {r.batch:>3} "
                             f"not run: {r.error}")
                continue
            lat = r.latency_ms
            acc = r.accuracy or {}
            gpu = r.memory.get("gpu_peak_allocated_mb")

            def f(v: float | None, spec: str) -> str:
                return format(v, spec) if v is not None else "-"

            verdict = "-" if not acc else ("ok" if acc.get("passed") else "FAIL")
            lines.append(
                f"{r.label[:30]:<30} {r.runs_on:<{bw}} {r.computes:<5} {r.batch:>3} {lat['p50']:>9.1f} "
                f"{lat['p90']:>9.1f} {lat['p99']:>9.1f} {lat['mean']:>9.1f} {r.images_per_s:>8.3f} "
                f"{f(r.vs_torch_fp32, '6.2f'):>6} {r.memory.get('host_peak_rss_mb', 0):>7.0f} {f(gpu, '7.0f'):>7} "
                f"{f(None if r.peak_fraction is None else 100 * r.peak_fraction, '6.2f'):>6} "
                f"{f(acc.get('max_rel_std'), '8.1e'):>8} {f(acc.get('sigmoid_mae'), '8.1e'):>8} "
                f"{f(acc.get('iou_top10'), '6.4f'):>6} {verdict}")
        for r in self.results:
            if r.status == "ok" and r.compile_s is not None:
                lines.append(f"compile {r.label} {r.runs_on} {r.precision} B={r.batch}: first call {r.compile_s:.1f} s "
                             f"(inductor cache: {r.compile_cache}), steady mean {r.latency_ms['mean']:.1f} ms")
        for u in self.unavailable:
            lines.append(f"{u['name'][:30]:<30} not run: {u['reason']}")
        return "\n".join(lines)

    def line(self) -> str:
        done = sum(r.status == "ok" for r in self.results)
        verdict = "ok" if self.ok else "FAILED"
        where = f"; wrote {self.json_path}" if self.json_path else ""
        return f"{verdict}: {done}/{len(self.results)} result(s) in {self.seconds:.1f} s{where}"


    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`as_dict` to ``path`` (its folder created); numpy scalars and paths as plain JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1, default=_json_default) + "\n")
        return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return vars(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def relative_speeds(results: list[BenchResult]) -> None:
    """vs_torch_fp32: baseline (PyTorch FP32 eager) mean latency / this mean latency, same model family, size
    and batch."""
    base = {(r.variant, r.image_size, r.batch): r.latency_ms["mean"] for r in results
            if r.status == "ok" and r.backend == "torch" and r.precision == "fp32" and r.compile is None}
    for r in results:
        b = base.get((r.variant, r.image_size, r.batch))
        if r.status == "ok" and b is not None:
            r.vs_torch_fp32 = b / r.latency_ms["mean"]


__all__ = ["SCHEMA", "BenchReport", "BenchResult", "relative_speeds"]
