"""Facts about the machine a number was measured on: CPU, GPU, libraries, load and memory peaks,
so that export, bench and eval report them alike.

Standard library only at import time: the light runtime and every stage may import it; torch and
ONNX Runtime are imported inside the functions that report on them.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# the distributions bench's environment lists, installed or not (None when not)
BENCH_LIBRARIES = ("mgd-rt", "numpy", "pillow", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu",
                   "tensorrt", "tensorrt-rtx", "openvino", "sam2")
# what nvidia-smi is asked for, one dict per GPU with these keys
NVIDIA_SMI_FIELDS = ("index", "name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm",
                     "clocks.max.mem", "power.draw", "power.limit", "temperature.gpu", "memory.total", "pci.bus_id")


# ------------------------------------------------------------------------------ memory
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (since start, or since :func:`reset_peak_rss`)."""
    hwm = status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024.0


# ------------------------------------------------------------------------------ processor and load
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


# the ISA classes (cpu_isa) whose integer dot products sum 8-bit products straight into 32 bits
VNNI_ISAS = ("amx", "avx512_vnni", "avx_vnni")


def cpu_isa(flags: list[str] | set[str]) -> str:
    """The x86 ISA class that decides ONNX Runtime's (MLAS) integer kernels, from /proc/cpuinfo ``flags``.

    amx (AMX-INT8 tiles), avx512_vnni, avx_vnni (AVX2 with VNNI, e.g. Alder Lake), avx512 (no
    VNNI), avx2, or "other". Without VNNI, MLAS's U8 x S8 kernels add pairs of 8-bit products in
    16-bit sums that saturate (ONNX Runtime's ``session.x64quantprecision`` documentation).
    """
    flags = set(flags)
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512bw" in flags or "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def u8s8_saturates(flags: list[str] | set[str]) -> bool:
    """Whether an INT8 graph's S8 weights should become U8 on the CPU with ``flags`` (ONNX Runtime's
    ``session.x64quantprecision``, or quantize.unsigned_weights in the file): everywhere but VNNI_ISAS."""
    return cpu_isa(flags) not in VNNI_ISAS


def slug(text: str) -> str:
    """``text`` (a CPU, GPU or variant name) as part of a file name: lower case, marks and vendor words dropped,
    runs of anything else one hyphen ("Intel(R) Xeon(R) Processor" -> "xeon", "b+" -> "b")."""
    text = re.sub(r"\(r\)|\(tm\)|nvidia|intel|processor|cpu", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_tag(device: str) -> str:
    """What a result file is named after: ``cuda-<GPU>`` for a CUDA ``device`` (needs torch), else
    ``cpu-<model>-<N>cpu``."""
    if device.startswith("cuda"):
        import torch

        return "cuda-" + slug(torch.cuda.get_device_name(torch.device(device)))
    info = cpu_info()
    return f"cpu-{slug(info['model'])}-{info['logical_cpus']}cpu"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the platform has none (Windows)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def python_version() -> str:
    """The running interpreter's version, e.g. ``3.11.9``."""
    return sys.version.split()[0]


def library_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (without importing it); None if not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------ GPU
def default_device() -> str:
    """``cuda`` where PyTorch sees a usable GPU, else ``cpu`` (also when torch is not installed)."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    return "cpu"


def nvidia_smi() -> list[dict[str, str]] | str:
    """GPU name, driver, clocks, power and temperature from ``nvidia-smi``; a reason if unreadable."""
    fields = list(NVIDIA_SMI_FIELDS)
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi not readable ({type(exc).__name__})"
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.strip().splitlines() if line.strip()]


def _torch_facts(device: str) -> dict[str, Any]:
    """``torch`` (versions, threads, TF32 switches) and, on a usable CUDA ``device``, ``gpu``; ImportError
    without torch."""
    import torch

    facts: dict[str, Any] = {
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                  "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                  "tf32_cudnn": torch.backends.cudnn.allow_tf32}}
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        facts["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                        "multiprocessors": props.multi_processor_count,
                        "memory_gb": round(props.total_memory / 2**30, 2), "nvidia_smi": nvidia_smi()}
    return facts


def malloc_settings() -> dict[str, str]:
    """The allocator settings of this process's environment: glibc's ``MALLOC_*`` variables and ``LD_PRELOAD``."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k == "LD_PRELOAD"}


def environment(device: str) -> dict[str, Any]:
    """Everything that explains a speed measured on ``device``: machine, libraries, threads, load, GPU facts.

    torch is reported only when already imported or when ``device`` is CUDA, so describing a
    light-runtime run does not load it.
    """
    env: dict[str, Any] = {
        "python": python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "load_average_start": load_average(),
        "libraries": {d: library_version(d) for d in BENCH_LIBRARIES},
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        # glibc's malloc settings (or a preloaded allocator) move PyTorch's eager CPU time by 1.4x
        # (benchmarks/eager_allocator.py); the runtimes with their own arenas barely notice
        "env_malloc": malloc_settings(),
    }
    if "torch" in sys.modules or device.startswith("cuda"):
        try:
            env.update(_torch_facts(device))
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


__all__ = ["BENCH_LIBRARIES", "NVIDIA_SMI_FIELDS", "cpu_info", "default_device", "environment", "library_version",
           "load_average", "malloc_settings", "nvidia_smi", "peak_rss_mb", "python_version", "reset_peak_rss",
           "status_mb"]
