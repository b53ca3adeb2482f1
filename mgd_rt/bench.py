"""``bench``: latency, throughput, memory and accuracy per model, backend, precision and batch.

Every speed claim of the project comes out of this module. Models run through the runtime's
backends (:func:`mgd_rt.runtime.backends.load_backend`, the same ``infer`` the Segmenter calls:
float32 (B, 3, S, S) on the host in, float32 (B, 1, S, S) logits on the host out), so a latency
includes the host<->device copies of the input and the logits, as a user of the runtime pays
them. What is measured, per model and batch size:

- latency of each timed call (min/p50/p90/p99/mean from the raw per-iteration timings, which
  are all kept), images/s = batch / mean latency;
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
  photos (design.md's measures via :func:`mgd_rt.numerics.compare_logits`, tolerance per
  precision from :data:`mgd_rt.numerics.TOLERANCES`);
- with ``end_to_end``: real image files from disk to written matte through the Segmenter,
  with the time split into decode, resize, model and write (post-processing + PNG encode).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")

SCHEMA = "mgd-rt-bench/1"
TORCH_DTYPES = ("fp32", "fp16", "bf16")
# warm-up on CUDA continues until this many consecutive calls agree within STABLE_SPREAD
STABLE_WINDOW = 3
STABLE_SPREAD = 0.05
MAX_WARMUP_SECONDS = 60.0
MAX_WARMUP_ITERS = 200
# photos scikit-image ships (design.md: real test photos with no download)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
_VARIANT_NAMES = ("b+", "t", "s", "l", "tiny")


# ------------------------------------------------------------------------------ peaks
@dataclass(frozen=True)
class GpuPeak:
    """Dense (no sparsity) peak of one GPU in TFLOP/s (TOP/s for INT8), from NVIDIA's datasheets.

    ``fp16`` is the tensor-core FP16/BF16 peak (RTX 4090: with FP32 accumulate, what PyTorch
    autocast and TensorRT use), ``fp32`` the non-tensor FP32 peak (TF32 tensor cores are off
    in our FP32 numbers' intent, so FP32 is held against the plain FP32 units).
    """

    name: str
    pattern: str  # regex on the lower-cased device name, first match in GPU_PEAKS wins
    fp32: float
    fp16: float
    int8: float
    source: str


# The one table of machine peaks (README "Benchmarks" repeats it with the sources).
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 PCIe", r"h100.*pcie", 51.0, 756.0, 1513.0,
            "NVIDIA H100 Tensor Core GPU datasheet (dense = half the sparsity figures)"),
    GpuPeak("H100 SXM", r"h100", 67.0, 989.0, 1979.0,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5; dense = half the sparsity figures)"),
    GpuPeak("H200", r"h200", 67.0, 989.0, 1979.0, "NVIDIA H200 datasheet (same compute as H100 SXM)"),
    GpuPeak("A100", r"a100", 19.5, 312.0, 624.0, "NVIDIA A100 Tensor Core GPU datasheet"),
    GpuPeak("L4", r"\bl4\b", 30.3, 121.0, 242.0, "NVIDIA L4 datasheet (dense = half the sparsity figures, ~)"),
    GpuPeak("RTX 4090", r"rtx 4090", 82.6, 165.2, 660.6,
            "NVIDIA Ada Lovelace architecture whitepaper, appendix (FP16 tensor with FP32 accumulate)"),
)


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The :data:`GPU_PEAKS` row for a device name such as ``NVIDIA H100 80GB HBM3``, or None."""
    lowered = device_name.lower()
    for row in GPU_PEAKS:
        if re.search(row.pattern, lowered):
            return row
    return None


def cpu_info() -> dict[str, Any]:
    """CPU model, flags of interest, logical CPUs usable by this process, clock (/proc/cpuinfo)."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass

    def first(key: str) -> str | None:
        m = re.search(rf"^{key}\s*:\s*(.*)$", text, re.MULTILINE)
        return m.group(1).strip() if m else None

    model = first("model name") or platform.processor() or "unknown"
    flags = set((first("flags") or "").split())
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    ghz, clock_source = None, None
    m = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if m:  # the nominal clock in the model name beats the momentary "cpu MHz"
        ghz, clock_source = float(m.group(1)), "nominal clock in the model name"
    elif first("cpu MHz"):
        ghz, clock_source = float(first("cpu MHz")) / 1000.0, "'cpu MHz' in /proc/cpuinfo at start"
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {"model": model, "logical_cpus": cpus, "os_cpu_count": os.cpu_count(), "ghz": ghz,
            "clock_source": clock_source, "flags": interesting}


def cpu_peak(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Peak TFLOP/s of the usable CPUs: cores x clock x FLOPs per cycle per core.

    FP32 FLOPs/cycle/core assume two FMA units (server cores): AVX-512 2 x 16 lanes x 2 = 64,
    AVX2+FMA 32, else 8. BF16/FP16: AMX-BF16 1024, AVX512_BF16 / AVX512_FP16 2 x FP32. INT8:
    AMX-INT8 2048, VNNI 4 x FP32. Logical CPUs are counted as cores (a VM's vCPUs may be
    hyper-threads: then the peak is an over-estimate and the fraction an under-estimate).
    """
    info = info or cpu_info()
    flags = set(info["flags"])
    if "avx512f" in flags:
        fp32 = 64
    elif "avx2" in flags and "fma" in flags:
        fp32 = 32
    else:
        fp32 = 8
    bf16 = 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32
    fp16 = 1024 if "amx_fp16" in flags else 2 * fp32 if "avx512_fp16" in flags else fp32
    int8 = 2048 if "amx_int8" in flags else 4 * fp32 if flags & {"avx512_vnni", "avx_vnni"} else fp32
    ghz = info.get("ghz") or 0.0
    per = {"fp32": fp32, "bf16": bf16, "fp16": fp16, "int8": int8}
    return {
        "name": info["model"],
        "tflops": {k: info["logical_cpus"] * ghz * v / 1e3 for k, v in per.items()},
        "flops_per_cycle_per_core": per,
        "source": f"{info['logical_cpus']} logical CPUs x {ghz:.2f} GHz ({info.get('clock_source')}) x FLOPs/cycle "
                  "from /proc/cpuinfo flags (2 FMA units assumed)",
    }


def peak_tflops(machine: dict[str, Any], precision: str) -> float | None:
    """The peak for a result's compute precision on ``machine`` (the JSON's ``peak`` entry)."""
    table = machine.get("tflops") or {}
    key = {"bf16": "bf16" if "bf16" in table else "fp16"}.get(precision, precision)
    return table.get(key)


# ------------------------------------------------------------------------------ environment
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> list[dict[str, str]] | str:
    """GPU name, driver, clocks, power and temperature from ``nvidia-smi``; a reason if unreadable."""
    fields = ["index", "name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm",
              "clocks.max.mem", "power.draw", "power.limit", "temperature.gpu", "memory.total", "pci.bus_id"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi not readable ({type(exc).__name__})"
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.strip().splitlines() if line.strip()]


def environment(device: str) -> dict[str, Any]:
    """Everything that explains a number: machine, libraries, threads, load, GPU facts."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "libraries": {d: _version(d) for d in ("mgd-rt", "numpy", "pillow", "torch", "torchvision", "onnx",
                                               "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx",
                                               "sam2")},
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
    if "torch" in sys.modules or device.startswith("cuda"):
        try:
            import torch

            env["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32}
            if device.startswith("cuda") and torch.cuda.is_available():
                dev = torch.device(device)
                props = torch.cuda.get_device_properties(dev)
                env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                              "multiprocessors": props.multi_processor_count,
                              "memory_gb": round(props.total_memory / 2**30, 2), "nvidia_smi": nvidia_smi()}
        except ImportError:
            env["torch"] = None
    try:
        import onnxruntime as ort

        # the ORT backend sets intra_op threads to the usable CPU count (runtime/backends)
        env["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers(),
                              "intra_op_threads": os.cpu_count()}
    except ImportError:
        env["onnxruntime"] = None
    return env


def machine_peak(env: dict[str, Any], device: str) -> dict[str, Any]:
    """The peak row for this run: the GPU's from :data:`GPU_PEAKS`, or :func:`cpu_peak`."""
    if device.startswith("cuda"):
        name = (env.get("gpu") or {}).get("name", "")
        row = gpu_peak(name)
        if row is None:
            return {"name": name, "tflops": {}, "source": "not in mgd_rt.bench.GPU_PEAKS: fraction of peak omitted"}
        return {"name": row.name, "device_name": name, "source": row.source,
                "tflops": {"fp32": row.fp32, "fp16": row.fp16, "bf16": row.fp16, "int8": row.int8}}
    return cpu_peak(env["cpu"])


# ------------------------------------------------------------------------------ memory
def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024.0


# ------------------------------------------------------------------------------ FLOPs
_FLOPS_CACHE: dict[tuple[str, int], dict[str, Any]] = {}


def count_flops(variant: str, image_size: int) -> dict[str, Any]:
    """FLOPs of one (1, 3, S, S) forward pass, counted once per variant and size.

    FlopCounterMode counts matmuls, convolutions and attention (2 FLOPs per multiply-add) as
    dispatched by PyTorch; on meta tensors it needs no weights and no compute. Element-wise
    ops are not counted (they are bandwidth, not FLOPs).
    """
    key = (variant, int(image_size))
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from mgd_rt.checkpoint import load_model
    except ImportError as exc:
        result: dict[str, Any] = {"flops_per_image": None, "error": f"needs torch and the export extra ({exc})"}
        _FLOPS_CACHE[key] = result
        return result
    t0 = time.perf_counter()
    quiet = logging.getLogger("mgd_rt")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the "UNTRAINED weights" notice would only be noise here
    try:
        model = load_model(variant=variant, image_size=image_size)
    finally:
        quiet.setLevel(level)
    method = "torch.utils.flop_counter.FlopCounterMode, meta tensors"
    counter = FlopCounterMode(display=False)
    try:
        meta = model.to("meta")
        with torch.inference_mode(), counter:
            meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    except Exception as exc:  # a model op without a meta kernel: count on a real CPU pass instead
        log.debug("FLOPs on meta failed (%s); counting on the CPU", exc)
        model = load_model(variant=variant, image_size=image_size)
        method = "torch.utils.flop_counter.FlopCounterMode, CPU forward"
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(torch.zeros(1, 3, image_size, image_size))
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    result = {"flops_per_image": int(counter.get_total_flops()), "gflops_per_image": counter.get_total_flops() / 1e9,
              "by_op": by_op, "method": method, "torch": torch.__version__,
              "seconds": time.perf_counter() - t0}
    _FLOPS_CACHE[key] = result
    return result


# ------------------------------------------------------------------------------ inputs
def synthetic_photo(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 scene (gradients, an object, texture) when no photo is at hand."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = ((y - height * 0.55) ** 2 / (height * 0.3) ** 2 + (x - width * 0.5) ** 2 / (width * 0.22) ** 2) < 1
    img = np.stack([x / width * 200, y / height * 180, blob * 170.0 + 40], axis=2)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_photos(end_to_end: Sequence[str | Path] | None = None, count: int = 4) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` real (H, W, 3) uint8 photos: the end-to-end images, scikit-image's, or synthetic."""
    from mgd_rt.runtime.image_io import read_image

    if end_to_end:
        from mgd_rt.runtime.infer import collect_inputs

        jobs, _ = collect_inputs(list(end_to_end))
        photos = []
        for job in jobs[:count]:
            try:
                photos.append((str(job.source), read_image(job.source)))
            except MgdRtError:
                continue
        if photos:
            return photos
    try:
        from skimage import data

        return [(f"skimage.data.{n}", getattr(data, n)()) for n in PHOTOS[:count]]
    except ImportError:
        return [(f"synthetic seed {i}", synthetic_photo(seed=i)) for i in range(count)]


# ------------------------------------------------------------------------------ results
@dataclass
class BenchResult:
    """One model x precision x batch size. Times in seconds (raw) and milliseconds (summary)."""

    model: str
    label: str
    batch: int
    backend: str = ""
    device: str = ""
    precision: str = ""
    variant: str = ""
    image_size: int = 0
    trained: bool | None = None
    status: str = "ok"  # ok | error
    error: str | None = None
    load_s: float | None = None
    warmup_timings_s: list[float] = field(default_factory=list)
    warmup_stable: bool | None = None  # None: stability not checked (CPU)
    timings_s: list[float] = field(default_factory=list)
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
        head = (f"{'model':<30} {'backend':<12} {'prec':<5} {'B':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
                f"{'mean ms':>9} {'img/s':>8} {'xfp32':>6} {'RSS MB':>7} {'GPU MB':>7} {'%peak':>6} "
                f"{'max/std':>8} {'sig MAE':>8} {'IoU10':>6} acc")
        lines = [head, "-" * len(head)]
        for r in self.results:
            if r.status != "ok":
                lines.append(f"{r.label[:30]:<30} {r.backend:<12} {r.precision:<5} {r.batch:>3} "
                             f"not run: {r.error}")
                continue
            lat = r.latency_ms
            acc = r.accuracy or {}
            gpu = r.memory.get("gpu_peak_allocated_mb")

            def f(v: float | None, spec: str) -> str:
                return format(v, spec) if v is not None else "-"

            verdict = "-" if not acc else ("ok" if acc.get("passed") else "FAIL")
            lines.append(
                f"{r.label[:30]:<30} {r.backend:<12} {r.precision:<5} {r.batch:>3} {lat['p50']:>9.1f} "
                f"{lat['p90']:>9.1f} {lat['p99']:>9.1f} {lat['mean']:>9.1f} {r.images_per_s:>8.3f} "
                f"{f(r.vs_torch_fp32, '6.2f'):>6} {r.memory.get('host_peak_rss_mb', 0):>7.0f} {f(gpu, '7.0f'):>7} "
                f"{f(None if r.peak_fraction is None else 100 * r.peak_fraction, '6.2f'):>6} "
                f"{f(acc.get('max_rel_std'), '8.1e'):>8} {f(acc.get('sigmoid_mae'), '8.1e'):>8} "
                f"{f(acc.get('iou_top10'), '6.4f'):>6} {verdict}")
        for u in self.unavailable:
            lines.append(f"{u['name'][:30]:<30} not run: {u['reason']}")
        return "\n".join(lines)

    def line(self) -> str:
        done = sum(r.status == "ok" for r in self.results)
        verdict = "ok" if self.ok else "FAILED"
        where = f"; wrote {self.json_path}" if self.json_path else ""
        return f"{verdict}: {done}/{len(self.results)} result(s) in {self.seconds:.1f} s{where}"


# ------------------------------------------------------------------------------ timing
class _Clock:
    """Times one ``infer`` call: perf_counter around a synchronised call, CUDA events on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.torch = None
        if self.cuda:
            try:
                import torch

                self.torch = torch if torch.cuda.is_available() else None
            except ImportError:
                self.torch = None

    def __call__(self, fn: Callable[[], np.ndarray]) -> tuple[float, float | None, np.ndarray]:
        t = self.torch
        if t is not None:
            t.cuda.synchronize()  # nothing queued before the call may leak into it
            start, end = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            out = fn()  # returns host numpy: the device work is finished (ORT binds, torch copies back)
            end.record()
            end.synchronize()
            wall = time.perf_counter() - t0
            return wall, start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, None, out


def _warm_up(clock: _Clock, fn: Callable[[], np.ndarray], minimum: int, until_stable: bool
             ) -> tuple[list[float], bool | None]:
    """``minimum`` calls, then (``until_stable``) more until STABLE_WINDOW agree within STABLE_SPREAD."""
    timings: list[float] = []
    t0 = time.perf_counter()
    for _ in range(minimum):
        timings.append(clock(fn)[0])
    if not until_stable:
        return timings, None
    while True:
        last = timings[-STABLE_WINDOW:]
        if len(last) == STABLE_WINDOW and (max(last) - min(last)) <= STABLE_SPREAD * float(np.median(last)):
            return timings, True
        if len(timings) >= MAX_WARMUP_ITERS or time.perf_counter() - t0 > MAX_WARMUP_SECONDS:
            return timings, False
        timings.append(clock(fn)[0])


# ------------------------------------------------------------------------------ models
@dataclass
class _Run:
    """One thing to load: a model file or variant, with the precision asked for."""

    model: str
    kind: str  # torch | other backend name
    dtype: str | None
    label: str


def _is_variant(model: str) -> bool:
    return model.lower() in _VARIANT_NAMES and not Path(model).exists()


def _plan(models: Sequence[str | Path], dtypes: Sequence[str] | None) -> list[_Run]:
    from mgd_rt.runtime.backends import backend_for

    runs = []
    for model in map(str, models):
        if _is_variant(model):
            kind = "torch"
        else:
            if not Path(model).exists():
                raise MgdRtError(f"{model}: no such model file; give a checkpoint, an .onnx graph, an engine, "
                                 f"or a variant name ({', '.join(_VARIANT_NAMES)}) for seeded UNTRAINED weights")
            kind = backend_for(model).name
        name = Path(model).name if not _is_variant(model) else f"{model} (untrained)"
        if kind == "torch":
            for dtype in dtypes or ("fp32",):
                if dtype not in TORCH_DTYPES:
                    raise MgdRtError(f"--dtype {dtype}: PyTorch runs {', '.join(TORCH_DTYPES)}")
                runs.append(_Run(model, kind, dtype, name))
        else:
            # a graph or engine computes in its own precision (design.md); it is read from the file
            runs.append(_Run(model, kind, None, name))
    return runs


def _load_torch_module(model: str, image_size: int | None, compile: bool) -> Any:
    from mgd_rt.checkpoint import load_model

    module = load_model(variant=model, image_size=image_size) if _is_variant(model) else \
        load_model(model, image_size=image_size)
    if compile:
        import torch

        module = torch.compile(module)
    return module


class _Reference:
    """PyTorch FP32 logits of the reference model per (photo, size), computed once, TF32 off."""

    def __init__(self, model: str, device: str) -> None:
        self.model, self.device = model, device
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        self.description = ""

    def logits(self, photos: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
        """(N, 1, S, S) float32 for ``photos`` (name, (3, S, S) tensor), batch 1 each."""
        missing = [(n, x) for n, x in photos if (n, size) not in self.cache]
        if missing:
            import torch

            from mgd_rt.runtime.backends.torch_backend import TorchBackend

            module = _load_torch_module(self.model, size, False)
            backend = TorchBackend(module, device=self.device, dtype="fp32", check_inputs=False)
            self.description = backend.describe()
            flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            # the reference is FP32: TF32 tensor cores would make it a lower-precision result itself
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                for name, x in missing:
                    self.cache[(name, size)] = backend.infer(x[None])[0]
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
                backend.close()
        return np.stack([self.cache[(n, size)] for n, _ in photos])


def _end_to_end(backend: Any, images: Sequence[str | Path], batch: int) -> dict[str, Any]:
    """Image files -> written mattes through the Segmenter, time split by stage (seconds per image)."""
    from mgd_rt.runtime.infer import collect_inputs
    from mgd_rt.runtime.outputs import write_result
    from mgd_rt.runtime.segmenter import Segmenter

    jobs, problems = collect_inputs(list(images))
    if not jobs:
        raise MgdRtError(f"--end-to-end: no images found ({'; '.join(problems) or 'empty'})")
    seg = Segmenter(backend, batch_size=batch)  # not closed: that would close the shared backend
    stages: dict[str, list[float]] = {"decode": [], "resize": [], "model": [], "write": []}
    failed: list[str] = []
    # one untimed pass first: a last, partial batch is a new input shape, and its first call pays
    # for cuDNN / ONNX Runtime kernel choice, which is warm-up, not the steady state
    t0 = time.perf_counter()
    for _ in seg.stream(job.source for job in jobs):
        pass
    warmup_wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="mgd-rt-bench-") as tmp:
        t0 = time.perf_counter()
        for i, result in enumerate(seg.stream(job.source for job in jobs)):
            if not result.ok:
                failed.append(result.error or "")
                continue
            for k in ("decode", "resize", "model"):
                stages[k].append(result.seconds.get(k, 0.0))
            tw = time.perf_counter()
            # the mask written as the default `mgd-rt infer` output: resize back, sigmoid, PNG encode, rename
            write_result(result, Path(tmp) / f"{i}.png", "matte")
            stages["write"].append(time.perf_counter() - tw)
        wall = time.perf_counter() - t0
    done = len(stages["write"])
    return {
        "images": done, "failed": failed, "batch": batch, "wall_s": wall, "warmup_pass_wall_s": warmup_wall,
        "images_per_s": done / wall if wall > 0 else None,
        "stage_s_per_image": {k: float(np.mean(v)) if v else None for k, v in stages.items()},
        "stage_raw_s": stages,
        "note": "decode and resize run in background threads ahead of the model, so wall time per image "
                "can be below the sum of the stages; write runs in the caller's thread here",
    }


# ------------------------------------------------------------------------------ chart
def write_chart(report: BenchReport, path: str | Path) -> Path:
    """A PNG with latency (p50, p90 whisker) and throughput bars per model and batch size (Pillow only)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r for r in report.results if r.status == "ok"]
    path = Path(path)
    font = ImageFont.load_default()
    label_w, bar_w, pad, row_h = 330, 360, 16, 22
    width = label_w + 2 * bar_w + 4 * pad
    height = 90 + max(1, len(rows)) * row_h + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    env = report.environment
    where = (env.get("gpu") or {}).get("name") or env.get("cpu", {}).get("model", "")
    d.text((pad, 8), f"mgd-rt bench: {where}", fill="black", font=font)
    d.text((pad, 24), "left: latency per batch call, p50 bar, p90 whisker (ms); right: images/s", fill="gray",
           font=font)
    panels = [("latency p50 ms", lambda r: r.latency_ms["p50"], (70, 110, 190)),
              ("images/s", lambda r: r.images_per_s, (220, 120, 40))]
    top = 60
    for p, (title, value, colour) in enumerate(panels):
        x0 = label_w + pad + p * (bar_w + 2 * pad)
        d.text((x0, top - 16), title, fill="black", font=font)
        vmax = max([value(r) for r in rows] + ([r.latency_ms["p90"] for r in rows] if p == 0 else []) + [1e-12])
        d.line([(x0, top), (x0, top + len(rows) * row_h)], fill="black")
        for i, r in enumerate(rows):
            y = top + i * row_h + 3
            v = value(r)
            w = int(bar_w * 0.85 * v / vmax)
            d.rectangle([x0, y, x0 + max(w, 1), y + row_h - 8], fill=colour)
            end = x0 + max(w, 1)
            if p == 0:  # p90 whisker: the spread a user sees
                xw = x0 + int(bar_w * 0.85 * r.latency_ms["p90"] / vmax)
                d.line([(x0 + w, y + (row_h - 8) // 2), (xw, y + (row_h - 8) // 2)], fill="black")
                d.line([(xw, y), (xw, y + row_h - 8)], fill="black")
                end = max(end, xw)
            d.text((end + 4, y + 2), f"{v:.4g}", fill="black", font=font)
    for i, r in enumerate(rows):
        d.text((pad, top + i * row_h + 5), f"{r.label[:30]} {r.backend} {r.precision} B={r.batch}", fill="black",
               font=font)
    if not rows:
        d.text((pad, top + 4), "no result ran", fill="red", font=font)
    d.text((pad, height - 22), f"{SCHEMA}; raw timings in the JSON", fill="gray", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------ the entry point
def _default_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    return "cpu"


def bench(
    models: Sequence[str | Path],
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
    compile: bool = False,
    photos: int = 4,
    unavailable: Sequence[dict[str, str]] = (),
    on_result: Callable[[BenchResult], None] | None = None,
    tf32: bool = False,
) -> BenchReport:
    """Benchmark ``models`` at each batch size and write the JSON (``output``) and PNG (``chart``).

    models: checkpoints (.pth/.pt/.safetensors, PyTorch eager; ``compile`` adds torch.compile),
    .onnx graphs (ONNX Runtime), engines (TensorRT, where that backend exists) or variant names
    (``b+``, ``tiny``, ...: seeded UNTRAINED weights), each loaded through the runtime's backend
    table. dtypes: the precisions PyTorch models run in (default fp32; fp16/bf16 = autocast); a
    graph or engine runs in its own precision, which is recorded. ``iters`` timed calls, or
    calls for ``seconds`` (at least one). device None: CUDA when usable, else the CPU. reference:
    checkpoint or variant name of the PyTorch FP32 model the outputs are compared with. chart
    defaults to the JSON's path with .png. A model that cannot load or run becomes a result with
    ``status: error`` and the reason, so one failure does not lose the other numbers. ``tf32``
    (CUDA): let PyTorch use TF32 tensor cores for FP32 matmuls and convolutions; off by default,
    so "fp32" means FP32 (PyTorch's own default runs cuDNN convolutions in TF32) and meets the fp32
    tolerance; the switches are restored afterwards and recorded in the JSON.
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
    device = device or _default_device()
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise MgdRtError(f"--device {device}: use cpu, cuda or cuda:N")
    runs = _plan(models, dtypes)  # validates files and dtypes before any slow work
    if reference is not None and not _is_variant(str(reference)) and not Path(reference).is_file():
        raise MgdRtError(f"--reference {reference}: no such checkpoint (or give a variant name such as b+)")
    if end_to_end:
        from mgd_rt.runtime.infer import collect_inputs

        if not collect_inputs(list(end_to_end))[0]:
            raise MgdRtError(f"--end-to-end {' '.join(map(str, end_to_end))}: no image files found")
    on_cuda = device.startswith("cuda")
    tf32_before = _set_tf32(tf32) if on_cuda else None
    try:
        return _bench(models, runs, batches, warmup, iters, seconds, device, dtypes, end_to_end, reference, output,
                      chart, image_size, compile, photos, unavailable, on_result, tf32, start)
    finally:
        if tf32_before is not None:
            _set_tf32(*tf32_before)


def _set_tf32(matmul: bool, cudnn: bool | None = None) -> tuple[bool, bool]:
    """Set PyTorch's TF32 switches (matmul, cuDNN); returns the previous pair."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = matmul if cudnn is None else cudnn
    return before


def _bench(models: Sequence[str | Path], runs: list[_Run], batches: list[int], warmup: int, iters: int | None,
           seconds: float | None, device: str, dtypes: Sequence[str] | None, end_to_end: Sequence[str | Path] | None,
           reference: str | Path | None, output: str | Path | None, chart: str | Path | None,
           image_size: int | None, compile: bool, photos: int, unavailable: Sequence[dict[str, str]],
           on_result: Callable[[BenchResult], None] | None, tf32: bool, start: float) -> BenchReport:
    """The body of :func:`bench`, arguments validated."""
    from mgd_rt.runtime.backends import load_backend
    from mgd_rt.runtime.processing import preprocess

    on_cuda = device.startswith("cuda")
    until_stable = on_cuda  # a CPU forward of B+ takes seconds: warm-up stays at the count asked for

    settings = {"models": [str(m) for m in models], "batches": batches, "warmup": warmup, "iters": iters,
                "seconds": seconds, "device": device, "dtypes": list(dtypes or ["fp32"]),
                "end_to_end": [str(p) for p in end_to_end] if end_to_end else None,
                "reference": str(reference) if reference is not None else None, "image_size": image_size,
                "compile": compile, "warmup_until_stable": until_stable, "tf32": tf32 if on_cuda else None,
                "stable_rule": f"{STABLE_WINDOW} consecutive calls within {STABLE_SPREAD:.0%} of their median, "
                               f"at most {MAX_WARMUP_ITERS} calls / {MAX_WARMUP_SECONDS:.0f} s",
                "latency_includes": "host->device copy of the input, the model, device->host copy of the logits "
                                    "(the runtime Backend contract: numpy in, numpy out)",
                "argv": sys.argv}
    env = environment(device)
    report = BenchReport(settings=settings, environment=env, peak=machine_peak(env, device),
                         unavailable=list(unavailable))
    log.info("bench on %s: %d model run(s) x batch %s, warm-up %d, %s", device, len(runs), batches, warmup,
             f"{iters} iterations" if iters else f"{seconds} s per result")
    photo_arrays = load_photos(end_to_end, photos)
    ref = _Reference(str(reference), device) if reference is not None else None
    clock = _Clock(device)
    modules: dict[str, Any] = {}  # one PyTorch model per file, shared by its precisions

    for run in runs:
        _bench_one(run, batches, warmup, iters, seconds, device, image_size, compile, until_stable, clock,
                   photo_arrays, ref, end_to_end, modules, report, load_backend, preprocess, on_result)
        if run.kind == "torch" and all(r.model != run.model for r in runs[runs.index(run) + 1:]):
            modules.pop(run.model, None)  # last use: free it before the next model's memory is measured

    _relative_speeds(report.results)
    if "gpu" in report.environment:  # clocks and temperature after the work, beside those before it
        report.environment["gpu"]["nvidia_smi_end"] = nvidia_smi()
    report.environment["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report.seconds = time.perf_counter() - start
    if output is not None:
        report.json_path = Path(output)
        chart = chart if chart is not None else report.json_path.with_suffix(".png")
    if chart is not None:
        report.chart_path = write_chart(report, chart)
    if report.json_path is not None:
        report.json_path.parent.mkdir(parents=True, exist_ok=True)
        report.json_path.write_text(json.dumps(report.as_dict(), indent=1, default=_json_default) + "\n")
    log.info("bench: %.1f s", report.seconds)
    return report


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return vars(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _relative_speeds(results: list[BenchResult]) -> None:
    """vs_torch_fp32: baseline mean latency / this mean latency, same model family, size and batch."""
    base = {(r.variant, r.image_size, r.batch): r.latency_ms["mean"] for r in results
            if r.status == "ok" and r.backend == "torch" and r.precision == "fp32"}
    for r in results:
        b = base.get((r.variant, r.image_size, r.batch))
        if r.status == "ok" and b is not None:
            r.vs_torch_fp32 = b / r.latency_ms["mean"]


def _bench_one(run: _Run, batches: list[int], warmup: int, iters: int | None, seconds: float | None, device: str,
               image_size: int | None, compile: bool, until_stable: bool, clock: _Clock,
               photos: list[tuple[str, np.ndarray]], ref: _Reference | None,
               end_to_end: Sequence[str | Path] | None, modules: dict[str, Any], report: BenchReport,
               load_backend: Callable[..., Any], preprocess: Callable[..., np.ndarray],
               on_result: Callable[[BenchResult], None] | None) -> None:
    """Load one model, time it at every batch size, append one BenchResult per batch size."""
    backend = None
    rss_reset = _reset_peak_rss()
    torch_cuda = None
    try:
        t0 = time.perf_counter()
        if run.kind == "torch":
            from mgd_rt.runtime.backends.torch_backend import TorchBackend

            if run.model not in modules:
                modules[run.model] = _load_torch_module(run.model, image_size, compile)
            backend = TorchBackend(modules[run.model], device=device, dtype=run.dtype, check_inputs=False)
            if device.startswith("cuda"):
                import torch

                torch_cuda = torch.cuda
        else:
            backend = load_backend(run.model, device=device, dtype=None, check_inputs=False)
        load_s = time.perf_counter() - t0
    except Exception as exc:  # recorded, so the other models' numbers survive (traceback at debug level)
        log.debug("loading %s failed:\n%s", run.model, traceback.format_exc())
        for b in batches:
            result = BenchResult(run.model, run.label, b, backend=run.kind, precision=run.dtype or "",
                                 status="error", error=f"cannot load: {_reason(exc)}")
            report.results.append(result)
            if on_result:
                on_result(result)
        return

    load_peak = _peak_rss_mb()  # the load's own peak (e.g. a checkpoint read next to the model)
    rss_after_load = _status_mb("VmRSS")
    size = backend.image_size
    tensors = [(name, preprocess(img, size, backend.mean, backend.std)) for name, img in photos]
    flops = count_flops(backend.variant, size) if backend.variant != "unknown" else \
        {"flops_per_image": None, "error": "the graph does not name its variant"}
    report.flops[f"{backend.variant}@{size}"] = flops
    try:
        for b in batches:
            chosen = [tensors[i % len(tensors)] for i in range(b)]  # real photos, cycled to fill the batch
            batch = np.stack([x for _, x in chosen])  # (B, 3, S, S) float32
            result = BenchResult(run.model, run.label, b, backend=backend.name, device=backend.device,
                                 precision=backend.precision, variant=backend.variant, image_size=size,
                                 trained=backend.trained, load_s=load_s, inputs=[n for n, _ in chosen])
            # the FLOPs count and an earlier batch's reference pass must not count as this run's memory
            _reset_peak_rss()
            try:
                last = _time_result(result, backend, batch, warmup, iters, seconds, until_stable, clock, torch_cuda)
            except Exception as exc:
                log.debug("running %s at batch %d failed:\n%s", run.model, b, traceback.format_exc())
                result.status, result.error = "error", f"cannot run: {_reason(exc)}"
                report.results.append(result)
                if on_result:
                    on_result(result)
                continue
            run_peak = _peak_rss_mb()
            result.memory.update(host_rss_after_load_mb=rss_after_load, host_peak_rss_load_mb=load_peak,
                                 host_peak_rss_run_mb=run_peak, host_peak_rss_mb=max(load_peak, run_peak),
                                 host_peak_rss_scope="max of the load and of this batch size's warm-up + timed calls "
                                 "(VmHWM, reset before each)" if rss_reset else "process lifetime (ru_maxrss)")
            result.flops_per_image = flops.get("flops_per_image")
            if result.flops_per_image:
                result.achieved_tflops = result.flops_per_image * result.images_per_s / 1e12
                result.peak_tflops = peak_tflops(report.peak, result.precision)
                if result.peak_tflops:
                    result.peak_fraction = result.achieved_tflops / result.peak_tflops
            if ref is not None:
                expected = ref.logits(chosen, size)
                tol = result.precision if result.precision in ("fp32", "fp16", "bf16", "int8") else None
                cmp = _compare(expected, last, tol, f"{result.label} {result.precision} B={b} vs torch fp32")
                result.accuracy = {**cmp, "reference": str(ref.model), "reference_backend": ref.description,
                                   "tolerance_key": tol}
            if end_to_end:
                result.end_to_end = _end_to_end(backend, end_to_end, b)
            report.results.append(result)
            if on_result:
                on_result(result)
    finally:
        backend.close()


def _compare(expected: np.ndarray, out: np.ndarray, tol: str | None, name: str) -> dict[str, Any]:
    from mgd_rt.numerics import compare_logits

    cmp = compare_logits(expected, out, tol, name)
    d = cmp.as_dict()
    d["tolerance"] = vars(cmp.tolerance) if cmp.tolerance is not None else None
    return d


def _time_result(result: BenchResult, backend: Any, batch: np.ndarray, warmup: int, iters: int | None,
                 seconds: float | None, until_stable: bool, clock: _Clock, torch_cuda: Any) -> np.ndarray:
    """Warm up, then time ``iters`` calls (or for ``seconds``); fills timings, latency and GPU memory.

    Returns the last timed output (B, 1, S, S), which the accuracy check compares.
    """
    def call() -> np.ndarray:
        return backend.infer(batch)

    if torch_cuda is not None:
        torch_cuda.synchronize()
        torch_cuda.reset_peak_memory_stats()
        resident = torch_cuda.memory_allocated() / 2**20
    result.warmup_timings_s, result.warmup_stable = _warm_up(clock, call, warmup, until_stable)
    events: list[float] = []
    out = None
    t_end = time.perf_counter() + seconds if seconds is not None else None
    while True:
        wall, event, out = clock(call)
        result.timings_s.append(wall)
        if event is not None:
            events.append(event)
        if iters is not None and len(result.timings_s) >= iters:
            break
        if t_end is not None and time.perf_counter() >= t_end:
            break
    result.cuda_event_timings_s = events or None
    result.summarise()
    if torch_cuda is not None:
        result.memory.update(gpu_resident_after_load_mb=resident,
                             gpu_peak_allocated_mb=torch_cuda.max_memory_allocated() / 2**20,
                             gpu_peak_reserved_mb=torch_cuda.max_memory_reserved() / 2**20)
    elif result.device.startswith("cuda") or "CUDA" in result.device:
        result.memory["gpu_peak_allocated_mb"] = None
        result.memory["gpu_note"] = "only the torch backend's allocator is measured"
    return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, MgdRtError) else f"{type(exc).__name__}: {text}"[:400]


__all__ = ["GPU_PEAKS", "BenchReport", "BenchResult", "GpuPeak", "bench", "count_flops", "cpu_peak", "gpu_peak",
           "write_chart"]
