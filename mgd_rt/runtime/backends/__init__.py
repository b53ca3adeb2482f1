"""The backend table: which file suffix runs on which backend, and what each allows.

One table drives flag validation, the CLI's ``--backend`` and ``--dtype`` choices and backend
selection. Backends are imported only when chosen, so the onnxruntime path never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, GRAPH_SUFFIXES, PACKAGE_SUFFIXES
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend
from mgd_rt.runtime.backends.triton_backend import URL_SCHEMES


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # "module:Class", imported on use
    dtypes: tuple[str, ...]  # --dtype values it accepts
    devices: tuple[str, ...]  # device kinds it can run on
    artifact: str  # what it runs, for messages
    suffixes: tuple[str, ...] = ()  # model files it runs, picked by suffix with --backend auto
    schemes: tuple[str, ...] = ()  # model URLs it runs, picked by scheme
    converts: tuple[str, ...] = ()  # files of other suffixes it opens through a registered converter
    opens: tuple[str, ...] = ()  # files of other backends' suffixes it runs itself when named with --backend


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "mgd_rt.runtime.backends.torch_backend:TorchBackend", ("fp32", "fp16", "bf16"),
                         ("cpu", "cuda"), "a checkpoint", CHECKPOINT_SUFFIXES),
    # an ONNX graph's precision is decided by the graph itself (its metadata), --dtype must match it
    "onnxruntime": BackendSpec("onnxruntime", "mgd_rt.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
                               ("fp32", "fp16", "int8"), ("cpu", "cuda"), "an ONNX graph", GRAPH_SUFFIXES),
    # a built .engine (precision is the engine's), or an .onnx built on first use through the engine cache
    "tensorrt": BackendSpec("tensorrt", "mgd_rt.runtime.backends.tensorrt_backend:TensorRTBackend",
                            ("fp32", "fp16", "int8"), ("cuda",), "a TensorRT engine", ENGINE_SUFFIXES,
                            converts=GRAPH_SUFFIXES),
    # grpc://HOST:PORT/MODEL or http://...: the model runs in a Triton server, picked by the URL's scheme;
    # precision and device are the server's (--dtype must match what it reports, --device is refused)
    "triton": BackendSpec("triton", "mgd_rt.runtime.backends.triton_backend:TritonBackend",
                          ("fp32", "fp16", "int8"), ("server",), "a Triton model URL", schemes=URL_SCHEMES),
    # an .onnx graph on the CPU through OpenVINO, only when named (--backend openvino): fp32 or bf16 from
    # an FP32 graph (bf16 where the CPU has it), an int8 or fp16 graph in its own precision
    "openvino": BackendSpec("openvino", "mgd_rt.runtime.backends.openvino_backend:OpenVINOBackend",
                            ("fp32", "bf16", "int8", "fp16"), ("cpu",), "an ONNX graph on OpenVINO",
                            opens=GRAPH_SUFFIXES),
    # an AOTInductor .pt2 package (mgd-rt export --aoti): compiled for one device kind, CPU ISA or GPU and
    # torch build (another is refused); its precision is its own, --dtype must match it
    "aoti": BackendSpec("aoti", "mgd_rt.runtime.backends.aoti_backend:AOTIBackend", ("fp32", "fp16", "bf16"),
                        ("cpu", "cuda"), "an AOTInductor package", PACKAGE_SUFFIXES),
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
    if backend not in ("auto", None) and backend not in BACKENDS:
        raise MgdRtError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    text = str(model)
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    suffix = "" if scheme else Path(text).suffix.lower()
    found = [spec for spec in BACKENDS.values() if (scheme in spec.schemes if scheme else suffix in spec.suffixes)]
    if not found:
        kinds = ", ".join(f"{spec.artifact} ({', '.join(spec.suffixes or (f'{s}://' for s in spec.schemes))})"
                          for spec in BACKENDS.values() if spec.suffixes or spec.schemes)
        what = f"URL scheme {scheme!r}" if scheme else f"model file type {suffix!r}"
        raise MgdRtError(f"{model}: unknown {what}; give {kinds}")
    by_suffix = found[0]
    if backend in ("auto", None) or backend == by_suffix.name:
        return by_suffix
    wanted = BACKENDS[backend]
    if suffix and suffix in wanted.converts:
        return wanted  # e.g. an .onnx on TensorRT: built once through the engine cache
    if suffix and suffix in wanted.opens:
        return wanted  # e.g. an .onnx on OpenVINO, which reads ONNX itself
    return _refuse(model, by_suffix, backend, scheme is not None)


def _refuse(model: str | Path, fits: BackendSpec, asked: str, is_url: bool) -> BackendSpec:
    if is_url:
        raise MgdRtError(f"{model}: a Triton URL runs on the {fits.name} backend, not {asked}")
    raise MgdRtError(f"{model}: a {Path(str(model)).suffix.lower()} file runs on the {fits.name} backend, not "
                     f"{asked}; pass --backend auto or {fits.name}")


# keyword options only some backends take, which load_backend forwards: option -> the backends that take it
BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {"compile": ("torch",), "tf32": ("torch",)}


def load_backend(
    model: str | Path,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    check_inputs: bool = True,
    **options: Any,
) -> Backend:
    """Load ``model`` on the backend its suffix (or ``backend``) picks; ``device`` None = best.

    ``options``: backend-specific keywords (:data:`BACKEND_OPTIONS`, e.g. ``compile="default"`` for
    torch.compile); None or False is the same as leaving one out, anything else on a backend that does
    not take it is refused.
    """
    spec = backend_for(model, backend)
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    for option in options:
        owners = BACKEND_OPTIONS.get(option)
        if owners is None:
            raise TypeError(f"load_backend: unknown option {option!r}; known: {', '.join(BACKEND_OPTIONS)}")
        if spec.name not in owners:
            takes = " or ".join(f"the {o} backend ({BACKENDS[o].artifact}: {'/'.join(BACKENDS[o].suffixes)})"
                                for o in owners)
            raise MgdRtError(f"--{option.replace('_', '-')} applies to {takes}; {model} runs on {spec.name}")
    if dtype is not None and dtype not in spec.dtypes:
        raise MgdRtError(f"--dtype {dtype} is not available on {spec.name}; choose from {', '.join(spec.dtypes)}")
    if device is not None and spec.name == "triton":
        raise MgdRtError(f"--device {device}: a Triton model runs where the server puts it; leave --device out")
    if device is not None and device.split(":")[0] not in spec.devices:
        raise MgdRtError(f"--device {device}: {spec.name} runs on {' or '.join(spec.devices)}")
    suffix = Path(str(model)).suffix.lower()
    if suffix in spec.converts and suffix not in spec.suffixes:
        convert = CONVERTERS.get((spec.name, suffix))
        if convert is None:
            raise MgdRtError(f"{model}: TensorRT runs engines; build one with mgd-rt build, or call "
                             "mgd_rt.engine.enable_engine_cache() to build it on first use (mgd_rt.Segmenter "
                             "and the mgd-rt commands do)")
        model = convert(Path(model), dtype, device)
    module_name, cls_name = spec.module.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model, device=device, dtype=dtype, check_inputs=check_inputs, **options)


__all__ = ["BACKENDS", "BACKEND_CHOICES", "BACKEND_OPTIONS", "CONVERTERS", "DTYPES", "Backend", "BackendSpec",
           "backend_for", "load_backend", "register_converter"]
