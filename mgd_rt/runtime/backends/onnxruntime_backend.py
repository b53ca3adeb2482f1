"""ONNX Runtime backend: an exported .onnx graph, no torch.

Execution providers, best first: TensorRT, CUDA, CPU. ``device=None`` takes the best
available; ``device="cuda"`` demands a GPU provider and refuses (never a quiet CPU run) when
ONNX Runtime has none or falls back. Full graph optimisation, all cores; on CUDA the output
stays on the GPU via I/O binding until one copy back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.machine import cpu_info, u8s8_saturates
from mgd_rt.runtime.backends.base import Backend

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger("mgd_rt")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDERS = ("CPUExecutionProvider",)


def ort_session(
    model: str | Path | bytes,
    threads: int | None = None,
    log_severity: int | None = None,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = CPU_PROVIDERS,
    optimize: bool = True,
    priority_order: bool = False,
    x64quantprecision: bool | None = None,
) -> onnxruntime.InferenceSession:
    """An ``onnxruntime.InferenceSession`` of the graph at ``model`` (a path, or serialized bytes) on
    ``providers`` (default: the CPU only).

    ``threads``: intra-op threads (None: ONNX Runtime's default, one per physical core).
    ``log_severity``: ONNX Runtime's own messages from this level up (3: errors only; None: its default,
    warnings). ``optimize`` False: no graph optimisation (reading a signature; seconds saved on B+).
    ``priority_order``: ONNX Runtime's PRIORITY_BASED execution order, which runs a graph's added
    reductions right after their producers (bounded memory when calibrating).
    Exceptions are ONNX Runtime's own (a caller turns them into its message).

    Integer kernels: x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) run ONNX Runtime's U8S8
    matrix products with 16-bit intermediate sums that saturate, which put INT8 graphs out of
    tolerance on such machines; ``session.x64quantprecision`` makes ONNX Runtime convert the S8
    weights to U8 for its exact U8U8 kernels there. ``x64quantprecision`` None: on unless the CPU
    has VNNI or AMX (machine.VNNI_ISAS), whose U8S8 kernels sum in 32 bits. There the conversion
    only costs time: B+ at 1024, INT8 (cpu placement), Emerald Rapids AMX, 2 threads: 4.0 s with it,
    2.45 s without (MatMulIntegerToFloat 1.90 -> 0.45 s), and the logits of
    the six held-out photos bit-identical between the two (three seeded sets).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if x64quantprecision is None:
        x64quantprecision = u8s8_saturates(cpu_info()["flags"])
    options.add_session_config_entry("session.x64quantprecision", "1" if x64quantprecision else "0")
    # No memory pattern: with it, each new input shape (a server's dynamic batches of 1..max) plans
    # and keeps one more block in the CPU arena, which never shrinks. Measured (tiny, S=256, batches
    # of 1-4 in random order, 2 cores): resident 349 -> 576 MB with it, flat at 349 MB without, at
    # the same speed (48.3 vs 49.1 ms per image).
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    if log_severity is not None:
        options.log_severity_level = log_severity
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


class OnnxRuntimeBackend(Backend):
    """``model``: path of a graph with input ``image`` (B, 3, S, S) float32 (or (B, S, S, 3) uint8 pixels)
    and output ``mask_logits`` (B, 1, S, S) float32."""

    name = "onnxruntime"
    kind = "graph"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(check_inputs)
        path = self.model_file(model, "ONNX")
        available = ort.get_available_providers()
        device_id = 0
        if device is None:
            wanted = [p for p in GPU_PROVIDERS if p in available]
        elif device.split(":")[0] == "cuda":
            device_id = int(device.split(":")[1]) if ":" in device else 0
            wanted = [p for p in GPU_PROVIDERS if p in available]
            if not wanted:
                raise MgdRtError(
                    f"--device {device}: ONNX Runtime {ort.__version__} has no CUDA or TensorRT execution "
                    f"provider here (available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
                )
        elif device == "cpu":
            wanted = []
        else:
            raise MgdRtError(f"--device {device}: the onnxruntime backend runs on cpu or cuda")
        providers: list[str | tuple[str, dict[str, Any]]] = [(p, {"device_id": device_id}) for p in wanted]
        providers += CPU_PROVIDERS
        try:
            # all cores: ONNX Runtime's default counts physical cores only
            self.session = ort_session(path, threads or os.cpu_count() or 1, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise MgdRtError(f"{path}: ONNX Runtime cannot load this graph ({first_line(exc)})") from None
        used = self.session.get_providers()
        if device is not None and device.startswith("cuda") and used[0] not in GPU_PROVIDERS:
            raise MgdRtError(f"--device {device}: ONNX Runtime fell back to {used[0]} (CUDA libraries missing?); "
                             "fix the CUDA install or use --device cpu")
        self.provider = used[0]
        on_gpu = self.provider in GPU_PROVIDERS
        self.device = f"{self.provider} (cuda:{device_id})" if on_gpu else self.provider
        self.device_id = device_id

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.check_io(inputs, outputs, str(path))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.apply_metadata(meta)
        self.check_io_types(str(path), {INPUT_NAME: inputs[INPUT_NAME].type, OUTPUT_NAME: outputs[OUTPUT_NAME].type},
                            "tensor(float)", "tensor(uint8)")
        shape = inputs[INPUT_NAME].shape  # (B, 3, S, S), or (B, S, S, 3) for pixels; B symbolic or fixed
        sides = [d if isinstance(d, int) else None for d in (shape[1:3] if self.takes_pixels else shape[-2:])]
        self.image_size = self.check_image_size(str(path), sides, list(shape))
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.precision = meta.get("precision", "fp32")
        self.check_dtype(dtype, path.name, f"export a {dtype} graph and pass that file")
        self.warn_int8_check(str(path), "onnxruntime" if not on_gpu else f"onnxruntime on {self.provider}")
        self._bind = on_gpu

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        if self._bind:
            # I/O binding: one host->device copy in, the output allocated on the GPU, one copy out
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, batch)
            binding.bind_output(OUTPUT_NAME, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
