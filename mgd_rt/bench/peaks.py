"""Peak compute of the machine a result ran on, the denominator of its fraction of peak: a table of
GPUs from NVIDIA's datasheets, and the CPU's peak from its cores, clock and instruction-set flags."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from mgd_rt.machine import cpu_info


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


def machine_peak(env: dict[str, Any], device: str) -> dict[str, Any]:
    """The peak row for this run: the GPU's from :data:`GPU_PEAKS`, or :func:`cpu_peak`."""
    if device.startswith("cuda"):
        name = (env.get("gpu") or {}).get("name", "")
        row = gpu_peak(name)
        if row is None:
            return {"name": name, "tflops": {}, "source": "not in mgd_rt.bench.GPU_PEAKS: fraction of peak omitted"}
        return {"name": row.name, "device_name": name, "source": row.source,
                "tflops": {"fp32": row.fp32, "fp16": row.fp16, "bf16": row.fp16, "int8": row.int8}}
    peak = cpu_peak(env["cpu"])
    gemm = measured_fp32_gemm()
    if gemm is not None:
        peak["fp32_gemm_measured"] = gemm
        fp32_per_cycle = peak["flops_per_cycle_per_core"]["fp32"] * gemm["threads"]  # the cores that ran it
        peak["source"] += (f"; FP32 GEMM measured at the start: {gemm['gflops']:.0f} GFLOP/s ({gemm['method']}), "
                           f"as if the cores ran at {gemm['gflops'] / fp32_per_cycle:.2f} GHz")
    return peak


def measured_fp32_gemm(size: int = 2048, calls: int = 5) -> dict[str, Any] | None:
    """The FP32 matrix-product rate the CPU sustains now: the best of ``calls`` ``torch.mm`` of two (size, size)
    float32 matrices on torch's default threads. None without torch.

    A VM's /proc/cpuinfo gives the base clock, and cores that run above it put rows over 100% of the counted
    peak (OpenVINO fp32 at 101-102% on the Emerald Rapids VM, whose 2 vCPUs ran a 4096 GEMM at 435-465
    GFLOP/s against the 269 counted at 2.1 GHz); this rate says what the FP32 units gave while the run began.
    """
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # first call: thread pool and packing
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    threads = torch.get_num_threads()
    return {"gflops": 2 * size**3 / best / 1e9, "threads": threads,
            "method": f"torch.mm {size} x {size} float32, {threads} threads, best of {calls}"}


__all__ = ["GPU_PEAKS", "GpuPeak", "cpu_peak", "gpu_peak", "machine_peak", "measured_fp32_gemm", "peak_tflops"]
