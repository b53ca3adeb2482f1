"""Which TensorRT: the datacenter ``tensorrt`` or ``tensorrt_rtx``, and which GPU is here.

Both Python APIs match (Builder, OnnxParser, BuilderConfig, Runtime), so one builder and one
runtime backend serve both; what differs is recorded in :class:`Library`. Nothing here imports
a TensorRT module or CUDA until asked, so ``mgd-rt --help`` works without either.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")

# import name -> (pip package, what it serves), in the order "auto" tries them
LIBRARIES: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "datacenter TensorRT 10.x/11.x, NVIDIA GPUs from Turing (SM 7.5) on; builds need a GPU"),
    "tensorrt_rtx": ("tensorrt-rtx", "TensorRT for RTX (SM 7.5/8.0/8.6/8.9/12.x); builds ahead of time on a CPU"),
}
# --target values for TensorRT-RTX ahead-of-time builds -> ComputeCapability member names
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
# --hardware-compatibility values -> HardwareCompatibilityLevel member names
HARDWARE_COMPATIBILITY = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}


@dataclass(frozen=True)
class Library:
    """An imported TensorRT flavour: ``module`` is ``tensorrt`` or ``tensorrt_rtx``."""

    name: str  # import name
    version: str
    module: ModuleType

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 and TensorRT-RTX have no precision flags: the graph's types decide."""
        return self.is_rtx or self.major >= 11

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def import_library(name: str = "auto") -> Library:
    """Import ``name`` ("tensorrt", "tensorrt_rtx") or, for "auto", the first one installed."""
    if name not in ("auto", *LIBRARIES):
        raise MgdRtError(f"unknown TensorRT library {name!r}; choose from auto, {', '.join(LIBRARIES)}")
    candidates = list(LIBRARIES) if name == "auto" else [name]
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            continue
        return Library(candidate, str(module.__version__), module)
    wanted = " or ".join(f"{LIBRARIES[c][0]} ({LIBRARIES[c][1]})" for c in candidates)
    raise MgdRtError(f"no TensorRT here: install {wanted}; see README 'TensorRT engines'")


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: name and compute capability as "8.9"."""

    name: str
    compute_capability: str
    index: int = 0

    @property
    def sm(self) -> str:
        """"8.9" -> "sm89", the spelling of --target."""
        return "sm" + self.compute_capability.replace(".", "")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def cuda_runtime():
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            raise MgdRtError(
                "cuda-python is not installed: the TensorRT backend manages GPU memory with it; "
                "pip install -e '.[trt]' (or pip install cuda-python)"
            ) from None
    return cudart


def check_cuda(result: tuple, what: str):
    """cuda-python calls return (error, *values): raise MgdRtError on an error, else the values."""
    err, *values = result
    if int(err) != 0:
        raise MgdRtError(f"CUDA error in {what}: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else tuple(values)


def current_gpu(index: int = 0) -> GpuInfo:
    """The CUDA device ``index``, through cuda-python; MgdRtError naming what is missing."""
    cudart = cuda_runtime()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        reason = getattr(err, "name", str(err)) if int(err) != 0 else "no devices"
        raise MgdRtError(f"no CUDA GPU usable here ({reason}); TensorRT engines run on an NVIDIA GPU")
    if index >= count:
        raise MgdRtError(f"cuda:{index}: only {count} CUDA device(s) here")
    props = check_cuda(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}", index)


__all__ = ["GpuInfo", "HARDWARE_COMPATIBILITY", "LIBRARIES", "Library", "RTX_TARGETS", "check_cuda",
           "cuda_runtime", "current_gpu", "import_library"]
