"""What bench loads: the plan of runs (model file or variant name x precision), PyTorch models for
checkpoints and variant names, and the PyTorch FP32 reference the outputs are compared with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.errors import MgdRtError
from mgd_rt.model.variants import VARIANTS  # plain data: planning an .onnx-only run needs no torch


@dataclass
class Run:
    """One thing to load: a model file or variant, with the precision asked for."""

    model: str
    kind: str  # torch | other backend name
    dtype: str | None
    label: str
    compile: str | None = None  # torch.compile mode of a torch run; None: eager


def compile_modes(compile: str | Sequence[str | None] | None) -> tuple[str | None, ...]:
    """bench's ``compile`` as the modes to run each PyTorch model in (None: eager), checked."""
    from mgd_rt.runtime.backends.torch_compile import COMPILE_MODES  # plain data, no torch

    given = [compile] if compile is None or isinstance(compile, str) else list(compile)
    modes = tuple(dict.fromkeys(None if m in (None, "eager") else m for m in given))
    bad = [m for m in modes if m is not None and m not in COMPILE_MODES]
    if not modes or bad:
        raise MgdRtError(f"--compile {','.join(map(str, bad or given))}: choose from eager, {', '.join(COMPILE_MODES)}")
    return modes


def run_label(model: str) -> str:
    """A row's model label: the file's name, or ``<variant> (untrained)`` for a variant's seeded weights."""
    return f"{model} (untrained)" if is_variant(model) else Path(model).name


def is_variant(model: str) -> bool:
    """Whether ``model`` names a variant (seeded UNTRAINED weights) rather than a file."""
    return model.lower() in VARIANTS and not Path(model).exists()


def plan(models: Sequence[str | Path | Run], dtypes: Sequence[str] | None, backend: str = "auto",
         compile: Sequence[str | None] = (None,)) -> list[Run]:
    """One :class:`Run` per model and PyTorch precision; checks that files exist and dtypes are known.

    ``backend`` other than "auto" runs the model files on that backend (e.g. openvino for .onnx graphs),
    once per precision of ``dtypes`` (each must be one it takes); with "auto" a graph or engine runs once,
    in its own precision. A :class:`Run` among ``models`` is one row chosen by the caller (file, backend,
    precision or None for the file's own): checked, then kept as it is.
    """
    from mgd_rt.runtime.backends import BACKENDS, backend_for

    torch_dtypes = BACKENDS["torch"].dtypes
    runs = []
    for model in models:
        if isinstance(model, Run):  # e.g. benchmarks/run_matrix.py's OpenVINO rows beside the others
            if is_variant(model.model) and model.kind == "torch":
                spec = BACKENDS["torch"]
            elif not Path(model.model).exists():
                raise MgdRtError(f"{model.model}: no such model file")
            else:
                spec = backend_for(model.model, model.kind)  # refuses a file the backend cannot run
            if model.dtype is not None and model.dtype not in spec.dtypes:
                raise MgdRtError(f"--dtype {model.dtype}: {spec.name} runs {', '.join(spec.dtypes)}")
            if model.compile is not None:
                compile_modes(model.compile)  # a known mode
                if spec.name != "torch":
                    raise MgdRtError(f"--compile {model.compile}: {model.model} runs on {spec.name}, not PyTorch")
            runs.append(model)
            continue
        model = str(model)
        if is_variant(model):
            if backend not in ("auto", "torch"):
                raise MgdRtError(f"{model}: a variant name runs on PyTorch, not --backend {backend}; "
                                 "give a model file for that backend")
            kind = "torch"
        else:
            if not Path(model).exists():
                raise MgdRtError(f"{model}: no such model file; give a checkpoint, an .onnx graph, an engine, "
                                 f"or a variant name ({', '.join(VARIANTS)}) for seeded UNTRAINED weights")
            kind = backend_for(model, backend).name
        name = run_label(model)
        if kind == "torch":
            for dtype in dtypes or ("fp32",):
                if dtype not in torch_dtypes:
                    raise MgdRtError(f"--dtype {dtype}: PyTorch runs {', '.join(torch_dtypes)}")
                runs.extend(Run(model, kind, dtype, name, mode) for mode in compile)  # ``compile``: modes, None eager
        elif backend != "auto" and dtypes:
            # a named backend that chooses its precision at load (openvino: fp32 or bf16 from an FP32 graph)
            for dtype in dtypes:
                if dtype not in BACKENDS[kind].dtypes:
                    raise MgdRtError(f"--dtype {dtype}: {kind} runs {', '.join(BACKENDS[kind].dtypes)}")
                runs.append(Run(model, kind, dtype, name))
        else:
            # a graph or engine computes in the precision it was built in; the backend reads it from the file
            runs.append(Run(model, kind, None, name))
    return runs


def load_torch_module(model: str, image_size: int | None) -> Any:
    """The PyTorch model of a checkpoint or variant name (seeded UNTRAINED weights); the backend compiles
    it when a run asks (TorchBackend's ``compile``)."""
    from mgd_rt.checkpoint import load_model

    module = load_model(variant=model, image_size=image_size) if is_variant(model) else \
        load_model(model, image_size=image_size)
    return module


def set_tf32(matmul: bool, cudnn: bool | None = None) -> tuple[bool, bool]:
    """Set PyTorch's TF32 switches (matmul, cuDNN); returns the previous pair."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = matmul if cudnn is None else cudnn
    return before


class Reference:
    """PyTorch FP32 logits of the reference model per (photo, size), computed once, TF32 off."""

    def __init__(self, model: str, device: str) -> None:
        self.model, self.device = model, device
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        self.description = ""

    def logits(self, photos: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
        """(N, 1, S, S) float32 for ``photos`` (name, (3, S, S) tensor), batch 1 each."""
        missing = [(n, x) for n, x in photos if (n, size) not in self.cache]
        if missing:
            from mgd_rt.runtime.backends.torch_backend import TorchBackend

            module = load_torch_module(self.model, size)
            backend = TorchBackend(module, device=self.device, dtype="fp32", check_inputs=False)
            self.description = backend.describe()
            # the reference is FP32: TF32 tensor cores would make it a lower-precision result itself
            flags = set_tf32(False)
            try:
                for name, x in missing:
                    self.cache[(name, size)] = backend.infer(x[None])[0]
            finally:
                set_tf32(*flags)
                backend.close()
        return np.stack([self.cache[(n, size)] for n, _ in photos])


__all__ = ["Reference", "Run", "compile_modes", "is_variant", "load_torch_module", "plan", "set_tf32"]
