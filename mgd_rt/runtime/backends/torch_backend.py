"""PyTorch backend: a checkpoint (or a loaded MGDSAM2) run under inference mode, eager or compiled.

The only runtime module that imports torch. FP16/BF16 run under autocast (weights stay
FP32, numerically sensitive ops stay FP32 as autocast decides, and the model keeps its DRM in FP32:
``MGDSAM2.refine``); the logits are returned as float32 whatever the compute precision.

``compile`` (a mode of :data:`~mgd_rt.runtime.backends.torch_compile.COMPILE_MODES`) runs the
same forward through ``torch.compile`` with inductor and static shapes: the first call at each
new (batch, size) compiles, or loads the kernels from inductor's cache, and its time is kept in
``compile_seconds``. Autocast sits inside the compiled function, so a compiled fp16/bf16 graph
makes the per-op precision choices eager autocast makes (the weights are not cast). FP32 on CUDA
runs with TF32 off unless ``tf32`` is asked for (PyTorch's own default runs cuDNN convolutions in
TF32), set around every call since those switches are process-wide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend
from mgd_rt.runtime.backends.torch_compile import CACHE_ENV, COMPILE_MODES, CUDA_GRAPH_MODES, inductor_cache_dir

log = logging.getLogger("mgd_rt")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Every TorchBackend compiles the same Python function (its closure differs), so dynamo's per-function
# limit on compiled variants counts all of them in this process: raised from torch's 8 so a bench run's
# modes x precisions x batch sizes fit, and made an error past it (torch would fall back to eager silently)
_RECOMPILE_LIMIT = 64


def resolve_device(device: str | None) -> torch.device:
    """None picks CUDA when usable, else the CPU; an explicit CUDA without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MgdRtError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MgdRtError(f"--device {device}: CUDA is not usable here (torch {torch.__version__}, "
                             f"no GPU or no CUDA build); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MgdRtError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise MgdRtError(f"--device {device}: the torch backend runs on cpu or cuda")
    return dev


def use_inductor_cache() -> Path:
    """Point inductor's on-disk cache at :func:`~mgd_rt.runtime.backends.torch_compile.inductor_cache_dir`
    (``$TORCHINDUCTOR_CACHE_DIR`` as the user set it, else ``~/.cache/mgd-rt/inductor``) and turn the FX
    graph cache on, so a second process compiling the same model at the same shape loads the kernels
    instead of generating and building them. Returns the folder. Process-wide: it sets the variable."""
    import torch._inductor.config as inductor_config  # importing it writes torch's default into the variable
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    path = inductor_cache_dir(default_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    if os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE") != "0":  # a user who switched it off keeps it off
        inductor_config.fx_graph_cache = True
    return path


def _check_compiler(dev: torch.device) -> None:
    """Refuse up front what would fail minutes into the first call: inductor builds C++ kernels with a
    host compiler on the CPU and Triton kernels on CUDA."""
    if dev.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise MgdRtError("--compile on CUDA: inductor needs Triton (pip install triton, the version your "
                             "torch pins); leave --compile out to run eager")
        return
    from torch._inductor import exc as inductor_exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except inductor_exc.InvalidCxxCompiler:
        raise MgdRtError("--compile on the CPU: inductor builds C++ kernels and found no compiler; install g++ "
                         "(or set $CXX), or leave --compile out to run eager") from None


def _compile_counters() -> tuple[int, int, int]:
    """(graphs dynamo compiled, inductor FX cache hits, misses) so far in this process."""
    from torch._dynamo.utils import counters

    return (counters["stats"]["unique_graphs"], counters["inductor"]["fxgraph_cache_hit"],
            counters["inductor"]["fxgraph_cache_miss"])


class TorchBackend(Backend):
    """``model``: a checkpoint path (see :func:`mgd_rt.load_model`) or an MGDSAM2 module.

    ``compile``: None (eager) or a torch.compile mode (``default``, ``max-autotune``,
    ``max-autotune-no-cudagraphs``, ``reduce-overhead``; the last captures CUDA graphs and runs on
    CUDA only). ``tf32`` (CUDA only): let FP32 matmuls and convolutions use TF32 tensor cores.
    After a compiled call, ``compile_seconds[(B, S)]`` holds the first call's time at that shape
    (compilation or cache load, plus one forward) and ``compile_cache[(B, S)]`` where its kernels came
    from: ``miss`` (generated and built), ``hit`` (inductor's cache) or ``reused`` (a graph this
    process had already compiled).
    """

    name = "torch"

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        compile: str | None = None,
        tf32: bool = False,
        **load_kwargs: Any,
    ) -> None:
        from mgd_rt.checkpoint import load_model

        super().__init__(check_inputs)
        dev = resolve_device(device)
        dtype = dtype or "fp32"
        if dtype not in _DTYPES:
            raise MgdRtError(f"--dtype {dtype}: the torch backend runs fp32, fp16 or bf16")
        if dtype == "fp16" and dev.type == "cpu":
            # CPU autocast to float16 exists but is slow and less accurate than bf16 there;
            # refuse rather than quietly run something else
            raise MgdRtError("--dtype fp16 on the CPU: use bf16 on the CPU, or fp16 with --device cuda")
        if compile is not None and compile not in COMPILE_MODES:
            raise MgdRtError(f"--compile {compile}: not a torch.compile mode; choose from {', '.join(COMPILE_MODES)} "
                             "(leave --compile out to run eager)")
        if compile == "reduce-overhead" and dev.type != "cuda":
            raise MgdRtError("--compile reduce-overhead: its only effect is CUDA graphs, which need --device cuda; "
                             "on the CPU use --compile default or max-autotune")
        if tf32 and dev.type != "cuda":
            raise MgdRtError("--tf32: TF32 is a CUDA tensor-core setting; leave it out on the CPU")
        if compile is not None:
            _check_compiler(dev)
        if isinstance(model, torch.nn.Module):
            self.model = model.to(dev).eval()
        else:
            self.model = load_model(model, device=dev, **load_kwargs)
        self.image_size = int(self.model.image_size)
        self.variant = self.model.variant.name
        self.trained = bool(getattr(self.model, "trained", False))
        self.torch_device = dev
        self.device = str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})"
        self.precision = dtype
        self.autocast = _DTYPES[dtype]
        self.tf32: bool | None = tf32 if dev.type == "cuda" else None  # None: not a setting on the CPU
        self.compile_mode = compile
        self.cuda_graphs = compile in CUDA_GRAPH_MODES and dev.type == "cuda"
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.compile_cache: dict[tuple[int, int], str] = {}
        self.inductor_cache: Path | None = None
        self._eager: Callable[[torch.Tensor], torch.Tensor] | None = self._make_forward()
        self._forward = self._eager
        if compile is not None:
            self.inductor_cache = use_inductor_cache()
            # static shapes: each new batch size (or TTA scale) compiles once more, so every call after the
            # first at a shape runs kernels specialised to it
            self._forward = torch.compile(self._forward, backend="inductor", mode=compile, dynamic=False)
            log.info("torch.compile %s (inductor, static shapes%s): each new batch size compiles on its first "
                     "call; cache %s", compile, ", CUDA graphs" if self.cuda_graphs else "", self.inductor_cache)

    def _make_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward eager and compiled runs share: (B, 3, S, S) float32 -> (B, 1, S, S) logits, under
        autocast when fp16/bf16 (inside the function, so torch.compile traces the same precision choices)."""
        model, device_type, dtype = self.model, self.torch_device.type, self.autocast

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return model(x)

        return forward

    @contextmanager
    def _tf32_flags(self) -> Iterator[None]:
        """TF32 as this backend was asked, for the duration of one call (the switches are process-wide:
        another backend, or the bench reference, may want them otherwise)."""
        if self.tf32 is None:
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        if self._forward is None:
            raise MgdRtError("this torch backend was closed; load the model again")
        x = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)  # (B, 3, S, S) float32
        with torch.inference_mode(), self._tf32_flags():
            logits = self._forward(x) if self.compile_mode is None else self._run_compiled(x)
        # float32 on the host: the post-processing contract whatever the compute precision
        return logits.float().cpu().numpy()

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor:
        """One compiled call on (B, 3, S, S); the first at a (B, S) is timed and logged as its compilation."""
        import torch._dynamo
        from torch._dynamo.exc import FailOnRecompileLimitHit

        key = (int(x.shape[0]), int(x.shape[-1]))
        first = key not in self.compile_seconds
        before = _compile_counters() if first else (0, 0, 0)
        t0 = time.perf_counter()
        if first:
            # The model keeps Python-side caches per input size (the MCEM and SAM 2 position codes), filled
            # by its first call at a size: dynamo would trace the empty-cache path, then see a full cache on
            # the next call and compile everything again. One eager call first fills them (counted here).
            self._eager(x)  # type: ignore[misc]
        try:
            with torch._dynamo.config.patch(recompile_limit=max(_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit),
                                            fail_on_recompile_limit_hit=True):
                if self.cuda_graphs:
                    # a new step: the previous call's outputs (already copied to the host) may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._forward(x)  # type: ignore[misc]
        except FailOnRecompileLimitHit:
            raise MgdRtError(f"torch.compile: this process has compiled {_RECOMPILE_LIMIT} shape/precision/mode "
                             f"variants of the model, the limit; use fewer batch sizes, or run eager") from None
        if first:
            if self.torch_device.type == "cuda":
                torch.cuda.synchronize(self.torch_device)  # the compile's kernels have run, not just been queued
            seconds = time.perf_counter() - t0
            graphs, hits, misses = (now - then for now, then in zip(_compile_counters(), before, strict=True))
            source = "reused" if graphs == 0 else ("hit" if misses == 0 and hits else "miss")
            self.compile_seconds[key], self.compile_cache[key] = seconds, source
            log.info("torch.compile %s: batch %d at %d compiled in %.1f s (%s)", self.compile_mode, *key, seconds,
                     {"reused": "graph already compiled in this process", "hit": "kernels from the inductor cache",
                      "miss": "kernels generated and built; cached for the next run"}[source])
        return logits

    def describe(self) -> str:
        text = super().describe()
        if self.compile_mode is not None:
            text += (f", torch.compile {self.compile_mode} (inductor, static shapes"
                     f"{', CUDA graphs' if self.cuda_graphs else ''})")
        if self.tf32 is not None:
            text += f", TF32 {'on' if self.tf32 else 'off'}"
        return text

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._forward = self._eager = None  # their closure holds the model
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
