"""``bench``: latency, throughput, memory and accuracy per model, backend, precision and batch.

Every speed claim of the project comes out of this package. Models run through the runtime's
backends (:func:`mgd_rt.runtime.backends.load_backend`, the same ``infer`` the Segmenter calls:
float32 (B, 3, S, S) on the host in, float32 (B, 1, S, S) logits on the host out), so a latency
includes the host<->device copies of the input and the logits, as a user of the runtime pays
them. What is measured, per model and batch size:

- latency of each timed call (min/p50/p90/p99/mean from the raw per-iteration timings, which
  are all kept), images/s = batch / mean latency; with several rounds, each model is timed again
  after all the others, and its figures come from every round's calls;
- on CUDA: a synchronised clock (the device is synchronised before each call and the logits
  are on the host when ``infer`` returns) plus CUDA events around the call, and warm-up that
  continues until three consecutive calls agree within 5% (bounded);
- peak host RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each model is
  loaded; else the process-lifetime ``ru_maxrss``, and the JSON says which), and on CUDA the
  PyTorch allocator's peak (``torch.cuda.max_memory_allocated``) for the torch backend;
- FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` on the PyTorch model, on meta
  tensors, once per variant and size) and the fraction of the machine's peak reached, peaks
  from :data:`GPU_PEAKS` or :func:`cpu_peak` (README, "Benchmarks", gives the sources);
- with ``reference``: the last timed output against the PyTorch FP32 model on the same real
  photos (:func:`mgd_rt.numerics.compare_logits`, tolerance per precision from
  :data:`mgd_rt.numerics.TOLERANCES`);
- with ``end_to_end``: real image files from disk to written matte through the Segmenter,
  with the time split into decode, resize, model and write (post-processing + PNG encode).

The parts: ``settings`` (what a run is asked to do), ``models`` (what it loads), ``photos``,
``timing``, ``flops``, ``peaks``, ``end_to_end``, ``runner`` (the run itself), ``report`` (results
and the JSON) and ``chart``. The machine's own facts come from :mod:`mgd_rt.machine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mgd_rt.bench.chart import write_chart
from mgd_rt.bench.flops import count_flops
from mgd_rt.bench.models import Run, compile_modes, is_variant, plan, set_tf32
from mgd_rt.bench.peaks import GPU_PEAKS, GpuPeak, cpu_peak, gpu_peak
from mgd_rt.bench.photos import synthetic_photo
from mgd_rt.bench.report import SCHEMA, BenchReport, BenchResult
from mgd_rt.bench.runner import run_bench
from mgd_rt.bench.settings import BenchSettings
from mgd_rt.errors import MgdRtError
from mgd_rt.machine import default_device


def bench(
    models: Sequence[str | Path | Run],
    batches: Sequence[int] = (1,),
    warmup: int = 3,
    iters: int | None = 10,
    seconds: float | None = None,
    device: str | None = None,
    dtypes: Sequence[str] | None = None,
    end_to_end: Sequence[str | Path] | None = None,
    reference: str | Path | None = None,
    output: str | Path | None = None,
    chart: str | Path | None = None,
    image_size: int | None = None,
    compile: str | Sequence[str | None] | None = None,
    photos: int = 4,
    holdout: bool = False,
    unavailable: Sequence[dict[str, str]] = (),
    on_result: Callable[[BenchResult], None] | None = None,
    tf32: bool = False,
    backend: str = "auto",
    rounds: int = 1,
) -> BenchReport:
    """Benchmark ``models`` at each batch size and write the JSON (``output``) and PNG (``chart``).

    models: checkpoints (.pth/.pt/.safetensors, PyTorch eager unless ``compile``),
    .onnx graphs (ONNX Runtime), engines (TensorRT, where that backend exists) or variant names
    (``b+``, ``tiny``, ...: seeded UNTRAINED weights), each loaded through the runtime's backend
    table. dtypes: the precisions PyTorch models run in (default fp32; fp16/bf16 = autocast); a
    graph or engine runs in its own precision, which is recorded. ``iters`` timed calls, or
    calls for ``seconds`` (at least one). device None: CUDA when usable, else the CPU. reference:
    checkpoint or variant name of the PyTorch FP32 model the outputs are compared with. chart
    defaults to the JSON's path with .png. ``photos``: how many real photos feed the batches (cycled
    to fill one). ``holdout``: check accuracy on each of INT8 calibration's held-out photos at batch 1 (the
    smallest batch's result; every photo must pass) instead of on the timed batch's photos.
    ``unavailable``: rows the caller could not run, ``{"name", "reason"}``, reported
    beside the results. ``on_result`` is called with each result as it is recorded. A model that
    cannot load or run becomes a result with ``status: error`` and the reason, so one failure does
    not lose the other numbers. ``tf32`` (CUDA): let PyTorch use TF32 tensor cores for FP32 matmuls
    and convolutions; off by default, so "fp32" means FP32 (PyTorch's own default runs cuDNN
    convolutions in TF32) and meets the fp32 tolerance; the switches are restored afterwards and
    recorded in the JSON. ``backend``: "auto" picks each model file's backend by its suffix; a backend's
    name runs the files on it (``openvino`` for .onnx graphs), once per precision of ``dtypes``
    (e.g. fp32 and bf16 from one FP32 graph), each one it takes. A :class:`Run` among ``models`` fixes
    one row's file, backend and precision (rows on several backends in one run). ``compile``: a
    torch.compile mode, or several (``"eager"`` or None for the uncompiled run beside them), each PyTorch
    model and precision run in each; a compiled result records its first call (compilation or inductor
    cache load) as ``compile_s``, apart from the warm-up and the timed calls. ``rounds``: passes over all the
    models, each loading, warming up and timing every one again; a result's latency summarises the timed calls of
    every round (``round_timings_s`` keeps them per round), so speed-ups between models measured on a machine
    whose speed drifts compare calls spread over the same stretch of time. Accuracy and memory are the first
    round's.
    """
    start = time.perf_counter()
    if not models:
        raise MgdRtError("give at least one MODEL")
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1:
        raise MgdRtError(f"--batch {batches}: batch sizes must be positive integers")
    if warmup < 0:
        raise MgdRtError(f"--warmup {warmup}: must be 0 or more")
    if seconds is not None:
        if seconds <= 0:
            raise MgdRtError(f"--seconds {seconds}: must be positive")
        iters = None
    elif iters is None or iters < 1:
        raise MgdRtError(f"--iters {iters}: must be at least 1")
    if rounds < 1:
        raise MgdRtError(f"--rounds {rounds}: must be at least 1")
    device = device or default_device()
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise MgdRtError(f"--device {device}: use cpu, cuda or cuda:N")
    modes = compile_modes(compile)
    runs = plan(models, dtypes, backend, modes)  # validates files, backend and dtypes before any slow work
    if reference is not None and not is_variant(str(reference)) and not Path(reference).is_file():
        raise MgdRtError(f"--reference {reference}: no such checkpoint (or give a variant name such as b+)")
    if end_to_end:
        from mgd_rt.runtime.infer import collect_inputs

        if not collect_inputs(list(end_to_end))[0]:
            raise MgdRtError(f"--end-to-end {' '.join(map(str, end_to_end))}: no image files found")
    settings = BenchSettings(models=models, batches=batches, warmup=warmup, iters=iters, seconds=seconds,
                             device=device, dtypes=dtypes, end_to_end=end_to_end, reference=reference, output=output,
                             chart=chart, image_size=image_size, compile=modes, photos=photos, holdout=holdout,
                             unavailable=unavailable, on_result=on_result, tf32=tf32, backend=backend,
                             rounds=rounds)
    tf32_before = set_tf32(tf32) if settings.on_cuda else None
    try:
        return run_bench(settings, runs, start)
    finally:
        if tf32_before is not None:
            set_tf32(*tf32_before)


__all__ = ["GPU_PEAKS", "SCHEMA", "BenchReport", "BenchResult", "BenchSettings", "GpuPeak", "Run", "bench",
           "count_flops", "cpu_peak", "gpu_peak", "synthetic_photo", "write_chart"]
