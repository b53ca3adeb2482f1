"""The body of a bench run: each planned model loaded, timed at every batch size, its results checked
against the reference and recorded, then the report written. With ``rounds`` > 1 every model is loaded
and timed again in each further round (the checks and memory figures are the first round's), and each
result's latency summarises the timed calls of all rounds."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.bench.chart import write_chart
from mgd_rt.bench.end_to_end import time_end_to_end
from mgd_rt.bench.flops import count_flops
from mgd_rt.bench.models import Reference, Run, load_torch_module
from mgd_rt.bench.peaks import machine_peak, peak_tflops
from mgd_rt.bench.photos import load_photos
from mgd_rt.bench.report import BenchReport, BenchResult, relative_speeds
from mgd_rt.bench.settings import BenchSettings
from mgd_rt.bench.timing import Clock, compile_call, time_result
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.machine import environment, load_average, nvidia_smi, peak_rss_mb, reset_peak_rss, status_mb

log = logging.getLogger("mgd_rt")


def run_bench(settings: BenchSettings, runs: list[Run], start: float) -> BenchReport:
    """Time every run of ``runs`` as ``settings`` ask, write the JSON and chart asked for, return the report.

    ``start`` (a ``time.perf_counter()`` value) is when :func:`mgd_rt.bench.bench` was called, so the
    report's seconds include the validation before this.
    """
    env = environment(settings.device)
    report = BenchReport(settings=settings.as_dict(), environment=env, peak=machine_peak(env, settings.device),
                         unavailable=list(settings.unavailable))
    log.info("bench on %s: %d model run(s) x batch %s, warm-up %d, %s", settings.device, len(runs),
             settings.batches, settings.warmup,
             f"{settings.iters} iterations" if settings.iters else f"{settings.seconds} s per result")
    session = _Session(settings, report)
    for round_index in range(settings.rounds):
        if round_index:
            log.info("bench: round %d of %d", round_index + 1, settings.rounds)
        for index, run in enumerate(runs):
            session.bench_model(run, first_round=round_index == 0)
            if run.kind == "torch" and all(r.model != run.model for r in runs[index + 1:]):
                session.modules.pop(run.model, None)  # last use: free it before the next model's memory is measured

    relative_speeds(report.results)
    if "gpu" in report.environment:  # clocks and temperature after the work, beside those before it
        report.environment["gpu"]["nvidia_smi_end"] = nvidia_smi()
    report.environment["load_average_end"] = load_average()
    report.seconds = time.perf_counter() - start
    _write(report, settings)
    log.info("bench: %.1f s", report.seconds)
    return report


def _write(report: BenchReport, settings: BenchSettings) -> None:
    """The chart (beside the JSON unless given), then the JSON, which names the chart's run."""
    chart = settings.chart
    if settings.output is not None:
        report.json_path = Path(settings.output)
        chart = chart if chart is not None else report.json_path.with_suffix(".png")
    if chart is not None:
        report.chart_path = write_chart(report, chart)
    if report.json_path is not None:
        report.write_json(report.json_path)


@dataclass
class _Loaded:
    """A model loaded for timing, and what each of its batch sizes' results repeats of the load."""

    backend: Any
    torch_cuda: Any  # torch.cuda for the torch backend on a GPU (its allocator is measured), else None
    load_s: float
    rss_reset: bool  # whether the peak-RSS counter could be reset before the load
    load_peak_mb: float  # the load's own peak (e.g. a checkpoint read next to the model)
    rss_after_load_mb: float | None
    tensors: list[tuple[str, np.ndarray]]  # [(photo name, (3, S, S) float32 network input)]
    flops: dict[str, Any]


class _Session:
    """One bench run in progress: its settings, the report it fills, and what its models share
    (the clock, the photos, the reference's cached logits, one PyTorch model per file)."""

    def __init__(self, settings: BenchSettings, report: BenchReport) -> None:
        self.settings, self.report = settings, report
        self.photos = load_photos(settings.end_to_end, settings.photos)
        self.reference = Reference(str(settings.reference), settings.device) if settings.reference is not None \
            else None
        self.clock = Clock(settings.device)
        self.modules: dict[str, Any] = {}  # shared by a file's precisions
        self.holdout = _holdout_photos() if settings.holdout else []
        self.recorded: dict[tuple[int, int], BenchResult] = {}  # (id of the run, batch) -> its first round's result

    def bench_model(self, run: Run, first_round: bool = True) -> None:
        """Load one model, time it at every batch size: in the first round record one BenchResult per batch
        size, in a later one add the new timed calls to those results."""
        from mgd_rt.runtime.processing import preprocess

        rss_reset = reset_peak_rss()
        try:
            t0 = time.perf_counter()
            backend, torch_cuda = self._load(run)
            load_s = time.perf_counter() - t0
        except Exception as exc:  # recorded, so the other models' numbers survive (traceback at debug level)
            log.debug("loading %s failed:\n%s", run.model, traceback.format_exc())
            if not first_round:  # its results keep the rounds they have
                log.warning("%s: not loaded again for another round (%s)", run.label, _failure(exc))
                return
            for b in self.settings.batches:
                self._record(BenchResult(run.model, run.label, b, backend=run.kind, precision=run.dtype or "",
                                         status="error", error=f"cannot load: {_failure(exc)}", compile=run.compile))
            return

        # resident size first: the peak read after it covers it (threads may still be allocating)
        rss_after_load = status_mb("VmRSS")
        load_peak = max(peak_rss_mb(), rss_after_load or 0.0)
        size = backend.image_size
        tensors = [(name, preprocess(img, size, backend.mean, backend.std)) for name, img in self.photos]
        flops = count_flops(backend.variant, size) if backend.variant != "unknown" else \
            {"flops_per_image": None, "error": "the graph does not name its variant"}
        self.report.flops[f"{backend.variant}@{size}"] = flops
        loaded = _Loaded(backend, torch_cuda, load_s, rss_reset, load_peak, rss_after_load, tensors, flops)
        try:
            for b in self.settings.batches:
                if first_round:
                    self._bench_batch(run, loaded, b)
                else:
                    self._time_again(run, loaded, b)
        finally:
            backend.close()

    def _load(self, run: Run) -> tuple[Any, Any]:
        """(backend, ``torch.cuda`` for the torch backend on a GPU else None) for ``run``."""
        settings = self.settings
        if run.kind != "torch":
            from mgd_rt.runtime.backends import load_backend

            # run.kind: the backend plan() picked (by suffix, or --backend); run.dtype: None = the graph's own
            return load_backend(run.model, run.kind, device=settings.device, dtype=run.dtype,
                                check_inputs=False), None
        from mgd_rt.runtime.backends.torch_backend import TorchBackend

        if run.model not in self.modules:
            self.modules[run.model] = load_torch_module(run.model, settings.image_size)
        # one module, shared by the file's precisions and compile modes; each backend compiles its own forward
        backend = TorchBackend(self.modules[run.model], device=settings.device, dtype=run.dtype, check_inputs=False,
                               compile=run.compile, tf32=settings.tf32 and settings.on_cuda)
        if not settings.on_cuda:
            return backend, None
        import torch

        return backend, torch.cuda

    @staticmethod
    def _batch(loaded: _Loaded, b: int) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
        """(the photos chosen, the batch ``loaded`` is timed on): real photos, cycled to fill ``b``; (B, 3, S, S)
        float32, or (B, S, S, 3) uint8 for a pixel-input model, as its clients send."""
        backend = loaded.backend
        chosen = [loaded.tensors[i % len(loaded.tensors)] for i in range(b)]
        batch = np.stack([x for _, x in chosen])
        if backend.takes_pixels:
            from mgd_rt.runtime.processing import to_pixels

            batch = to_pixels(batch, backend.mean, backend.std)
        return chosen, batch

    def _bench_batch(self, run: Run, loaded: _Loaded, b: int) -> None:
        """Time ``loaded`` at batch size ``b`` and record the result, or the reason it could not run."""
        backend, size = loaded.backend, loaded.backend.image_size
        chosen, batch = self._batch(loaded, b)
        result = BenchResult(run.model, run.label, b, backend=backend.name, device=backend.device,
                             precision=backend.precision, dtype=run.dtype, variant=backend.variant, image_size=size,
                             trained=backend.trained, load_s=loaded.load_s, inputs=[n for n, _ in chosen],
                             compile=run.compile)
        # the FLOPs count and an earlier batch's reference pass must not count as this run's memory
        reset_peak_rss()
        try:
            if run.compile is not None:
                compile_call(result, backend, batch, self.clock)  # compilation, timed apart from the warm-up
                result.memory["host_peak_rss_compile_mb"] = peak_rss_mb()
                reset_peak_rss()  # the compiler's own peak stays out of the steady-state figure
            last = time_result(result, backend, batch, self.settings, self.clock, loaded.torch_cuda)
        except Exception as exc:
            log.debug("running %s at batch %d failed:\n%s", run.model, b, traceback.format_exc())
            result.status, result.error = "error", f"cannot run: {_failure(exc)}"
            self._record(result)
            return
        result.round_timings_s = [list(result.timings_s)]
        self.recorded[(id(run), b)] = result
        run_peak = peak_rss_mb()
        result.memory.update(host_rss_after_load_mb=loaded.rss_after_load_mb, host_peak_rss_load_mb=loaded.load_peak_mb,
                             host_peak_rss_run_mb=run_peak, host_peak_rss_mb=max(loaded.load_peak_mb, run_peak),
                             host_peak_rss_scope="max of the load and of this batch size's warm-up + timed calls "
                             "(VmHWM, reset before each)" if loaded.rss_reset else "process lifetime (ru_maxrss)")
        result.flops_per_image = loaded.flops.get("flops_per_image")
        self._throughput(result)
        if self.reference is not None:
            result.accuracy = _holdout_accuracy(self.reference, result, backend, self.holdout) \
                if self.settings.holdout and b == min(self.settings.batches) else \
                _accuracy(self.reference, result, chosen, last)
        if self.settings.end_to_end:
            result.end_to_end = time_end_to_end(backend, self.settings.end_to_end, b)
        self._record(result)

    def _throughput(self, result: BenchResult) -> None:
        """``result``'s achieved TFLOP/s and fraction of the machine's peak, from its images/s."""
        if result.flops_per_image:
            result.achieved_tflops = result.flops_per_image * result.images_per_s / 1e12
            result.peak_tflops = peak_tflops(self.report.peak, result.precision)
            if result.peak_tflops:
                result.peak_fraction = result.achieved_tflops / result.peak_tflops

    def _time_again(self, run: Run, loaded: _Loaded, b: int) -> None:
        """Another round of ``run`` at batch size ``b``: warm-up and timed calls as in the first, added to the
        first round's result (one that failed there stays failed) and summarised again."""
        result = self.recorded.get((id(run), b))
        if result is None:
            return
        _, batch = self._batch(loaded, b)
        again = BenchResult(run.model, run.label, b, backend=result.backend, device=result.device,
                            precision=result.precision, dtype=run.dtype)
        try:
            if run.compile is not None:
                compile_call(again, loaded.backend, batch, self.clock)  # a cache load: kept out of the timings
            time_result(again, loaded.backend, batch, self.settings, self.clock, None)
        except Exception as exc:
            log.warning("%s %s B=%d: round %d not timed (%s)", result.label, result.computes, b,
                        len(result.round_timings_s) + 1, _failure(exc))
            return
        result.round_timings_s.append(again.timings_s)
        result.timings_s.extend(again.timings_s)
        if result.cuda_event_timings_s is not None and again.cuda_event_timings_s:
            result.cuda_event_timings_s.extend(again.cuda_event_timings_s)
        result.summarise()
        self._throughput(result)
        log.info("%s %s %s B=%d round %d: mean %.1f ms (all rounds %.1f ms)", result.label, result.runs_on,
                 result.computes, b, len(result.round_timings_s), 1e3 * float(np.mean(again.timings_s)),
                 result.latency_ms["mean"])

    def _record(self, result: BenchResult) -> None:
        self.report.results.append(result)
        if self.settings.on_result:
            self.settings.on_result(result)


def _accuracy(ref: Reference, result: BenchResult, chosen: list[tuple[str, np.ndarray]], out: np.ndarray
              ) -> dict[str, Any]:
    """``out`` (B, 1, S, S) against the reference's FP32 logits of the same photos ``chosen``, held to the
    tolerance of the result's precision (none for a precision without one)."""
    from mgd_rt.numerics import compare_logits

    expected = ref.logits(chosen, result.image_size)
    tol = result.precision if result.precision in ("fp32", "fp16", "bf16", "int8") else None
    cmp = compare_logits(expected, out, tol, f"{result.label} {result.precision} B={result.batch} vs torch fp32")
    found = cmp.as_dict()
    found["inputs"] = ", ".join(name for name, _ in chosen)
    found["tolerance"] = vars(cmp.tolerance) if cmp.tolerance is not None else None
    return {**found, "reference": str(ref.model), "reference_backend": ref.description, "tolerance_key": tol}


def _holdout_photos() -> list[tuple[str, np.ndarray]]:
    """[(name, (H, W, 3) uint8)]: the photos INT8 calibration holds out (never among its calibration images),
    so an INT8 row is checked on images its ranges were not measured on."""
    from mgd_rt.runtime.samples import HOLDOUT_PHOTOS, sample_photos

    return [(f"skimage.data.{name}", rgb) for name, rgb in sample_photos(HOLDOUT_PHOTOS)]


def _holdout_accuracy(ref: Reference, result: BenchResult, backend: Any, photos: list[tuple[str, np.ndarray]]
                      ) -> dict[str, Any]:
    """Each held-out photo through ``backend`` at batch 1 (apart from the timed calls), against the reference,
    held to the result's precision's tolerance: the worst value of each measure, ``passed`` only when every
    photo passes, ``failures`` naming the photo, and every photo's comparison under ``photos``."""
    from mgd_rt.runtime.processing import preprocess

    inputs = [(name, preprocess(rgb, result.image_size, backend.mean, backend.std)) for name, rgb in photos]
    ref.logits(inputs, result.image_size)  # the reference model loaded once for all of them, then cached
    per_photo = [_accuracy(ref, result, [(name, x)], backend.infer(x[None]))  # pixels for a pixel input
                 for name, x in inputs]
    # each measure at its worst photo (reference_std: the smallest, which the relative measures divide by)
    worst = {key: pick(p[key] for p in per_photo) for key, pick in
             (("max_abs", max), ("max_rel_std", max), ("mean_abs", max), ("median_abs", max), ("p99_abs", max),
              ("sigmoid_mae", max), ("iou_05", min), ("iou_top10", min), ("reference_std", min))}
    shared = {key: per_photo[0][key] for key in ("tolerance", "tolerance_key", "reference", "reference_backend")}
    failures = _photo_failures(per_photo)
    return {**worst, **shared, "name": f"{result.label} {result.precision} held-out photos (worst) vs torch fp32",
            "inputs": ", ".join(name for name, _ in inputs), "failures": failures, "passed": not failures,
            "holdout": True, "photos": per_photo}


def _photo_failures(per_photo: list[dict[str, Any]]) -> list[str]:
    return [f"{p['inputs']}: {f}" for p in per_photo for f in p["failures"]]


def rejudge(accuracy: dict[str, Any]) -> bool:
    """Hold a stored accuracy check (a result's ``accuracy``) to today's tolerance of its precision, from the
    measures it kept (each held-out photo's, else its own): rewrites ``tolerance``, ``failures`` and
    ``passed`` in place; True when the verdict changed."""
    from mgd_rt.numerics import TOLERANCES, tolerance_failures

    key = accuracy.get("tolerance_key")
    if key not in TOLERANCES:
        return False
    tolerance = TOLERANCES[key]
    before = bool(accuracy.get("passed"))
    photos = accuracy.get("photos")
    for check in photos or [accuracy]:
        check["tolerance"] = vars(tolerance)
        check["failures"] = tolerance_failures(check, tolerance)
        check["passed"] = not check["failures"]
    if photos:
        accuracy["tolerance"] = vars(tolerance)
        accuracy["failures"] = _photo_failures(photos)
        accuracy["passed"] = not accuracy["failures"]
    return accuracy["passed"] != before


def _failure(exc: BaseException) -> str:
    """The reason a result records: a user error's own first line; any other exception's type and first
    line (nothing after the colon when it has no message), cut at 400 characters."""
    text = first_line(exc) if str(exc).strip() else ""  # first_line would give the type name again
    return text if isinstance(exc, MgdRtError) else f"{type(exc).__name__}: {text}"[:400]


__all__ = ["rejudge", "run_bench"]
