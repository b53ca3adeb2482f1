"""The backend table: which file suffix runs on which backend, and what each allows.

One table drives flag validation, the CLI's ``--backend`` and ``--dtype`` choices and backend
selection. Backends are imported only when chosen, so the onnxruntime path never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend

# the PyTorch suffixes are mgd_rt.checkpoint.CHECKPOINT_SUFFIXES; that module imports torch,
# so selection checks the light suffixes first and only imports it for a torch candidate
_ONNX_SUFFIXES = (".onnx",)
_ENGINE_SUFFIXES = (".engine",)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # "module:Class", imported on use
    dtypes: tuple[str, ...]  # --dtype values it accepts
    devices: tuple[str, ...]  # device kinds it can run on


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "mgd_rt.runtime.backends.torch_backend:TorchBackend", ("fp32", "fp16", "bf16"),
                         ("cpu", "cuda")),
    # an ONNX graph's precision is decided by the graph itself (its metadata), --dtype must match it
    "onnxruntime": BackendSpec("onnxruntime", "mgd_rt.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
                               ("fp32", "fp16", "int8"), ("cpu", "cuda")),
    # a built .engine (precision is the engine's), or an .onnx built on first use through the engine cache
    "tensorrt": BackendSpec("tensorrt", "mgd_rt.runtime.backends.tensorrt_backend:TensorRTBackend",
                            ("fp32", "fp16", "int8"), ("cuda",)),
    # grpc://HOST:PORT/MODEL or http://...: the model runs in a Triton server, picked by the URL's scheme;
    # precision and device are the server's (--dtype must match what it reports, --device is refused)
    "triton": BackendSpec("triton", "mgd_rt.runtime.backends.triton_backend:TritonBackend",
                          ("fp32", "fp16", "int8"), ("server",)),
}

# what the CLI offers, in table order: "auto" (by suffix or URL) or a backend; every --dtype some backend takes
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
DTYPES: tuple[str, ...] = tuple(dict.fromkeys(d for spec in BACKENDS.values() for d in spec.dtypes))


# How a file a backend cannot load itself becomes one it can: (backend, suffix) -> converter(path, dtype,
# device) -> the path to load. The runtime never builds anything; the stage that can registers here
# (mgd_rt.engine.enable_engine_cache: an .onnx on tensorrt becomes the engine its cache builds).
Converter = Callable[[Path, "str | None", "str | None"], Path]
CONVERTERS: dict[tuple[str, str], Converter] = {}


def register_converter(backend: str, suffix: str, converter: Converter) -> None:
    """Let ``backend`` open ``suffix`` files through ``converter`` (see :data:`CONVERTERS`)."""
    CONVERTERS[(backend, suffix)] = converter


def backend_for(model: str | Path, backend: str = "auto") -> BackendSpec:
    """The backend that runs ``model``: by its suffix (or URL scheme), or the one named (which must fit it)."""
    from mgd_rt.runtime.backends.triton_backend import is_triton_url  # light: no tritonclient import

    if is_triton_url(str(model)):
        if backend not in ("auto", None, "triton"):
            raise MgdRtError(f"{model}: a Triton URL runs on the triton backend, not {backend}")
        return BACKENDS["triton"]
    suffix = Path(model).suffix.lower()
    if suffix in _ONNX_SUFFIXES:
        by_suffix = "onnxruntime"
        if backend == "tensorrt":
            return BACKENDS["tensorrt"]  # an .onnx on TensorRT: built once through the engine cache
    elif suffix in _ENGINE_SUFFIXES:
        by_suffix = "tensorrt"
    else:
        from mgd_rt.checkpoint import CHECKPOINT_SUFFIXES  # torch path: importing torch is fine

        if suffix not in CHECKPOINT_SUFFIXES:
            raise MgdRtError(
                f"{model}: unknown model file type {suffix!r}; give a checkpoint "
                f"({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX graph (.onnx) or a TensorRT engine (.engine)"
            )
        by_suffix = "torch"
    if backend in ("auto", None):
        return BACKENDS[by_suffix]
    if backend not in BACKENDS:
        raise MgdRtError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if backend != by_suffix:
        raise MgdRtError(f"{model}: a {suffix} file runs on the {by_suffix} backend, not {backend}; "
                         f"pass --backend auto or {by_suffix}")
    return BACKENDS[backend]


def load_backend(
    model: str | Path,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    check_inputs: bool = True,
) -> Backend:
    """Load ``model`` on the backend its suffix (or ``backend``) picks; ``device`` None = best."""
    spec = backend_for(model, backend)
    if dtype is not None and dtype not in spec.dtypes:
        raise MgdRtError(f"--dtype {dtype} is not available on {spec.name}; choose from {', '.join(spec.dtypes)}")
    if device is not None and spec.name == "triton":
        raise MgdRtError(f"--device {device}: a Triton model runs where the server puts it; leave --device out")
    if device is not None and device.split(":")[0] not in spec.devices:
        raise MgdRtError(f"--device {device}: {spec.name} runs on {' or '.join(spec.devices)}")
    suffix = Path(str(model)).suffix.lower()
    if spec.name == "tensorrt" and suffix in _ONNX_SUFFIXES:
        convert = CONVERTERS.get((spec.name, suffix))
        if convert is None:
            raise MgdRtError(f"{model}: TensorRT runs engines; build one with mgd-rt build, or call "
                             "mgd_rt.engine.enable_engine_cache() to build it on first use (mgd_rt.Segmenter "
                             "and the mgd-rt commands do)")
        model = convert(Path(model), dtype, device)
    module_name, cls_name = spec.module.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model, device=device, dtype=dtype, check_inputs=check_inputs)


__all__ = ["BACKENDS", "BACKEND_CHOICES", "CONVERTERS", "DTYPES", "Backend", "BackendSpec", "backend_for",
           "load_backend", "register_converter"]
