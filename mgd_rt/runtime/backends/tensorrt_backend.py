"""TensorRT backend: a built ``.engine`` (TensorRT or TensorRT-RTX) with its sidecar.

The sidecar is read first: an engine built by another TensorRT version, or for another GPU, is
refused with a message before any CUDA call is made on its behalf. GPU memory, the stream and
CUDA graphs go through NVIDIA's ``cuda-python`` bindings (no pycuda, no torch). numpy input is
copied through pinned host buffers asynchronously on the backend's stream; a torch CUDA tensor
is bound directly (no copy) and the output comes back as a torch CUDA tensor, enqueued on
torch's current stream. One execution context: calls are not thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.artifacts import read_sidecar
from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend
from mgd_rt.runtime.tensorrt_library import GpuInfo, Library, check_cuda, cuda_runtime, current_gpu, import_library

log = logging.getLogger("mgd_rt")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def check_library(sidecar: dict[str, Any], engine: Path) -> Library:
    """Import the library that built ``engine``; refuse another version (unless built version-compatible)."""
    name, built = sidecar["library"]["name"], sidecar["library"]["version"]
    source = sidecar.get("source", {}).get("onnx", "model.onnx")
    rebuild = f"rebuild it here with: mgd-rt build {source}" + (" --rtx" if name == "tensorrt_rtx" else "")
    try:
        lib = import_library(name)
    except MgdRtError:
        package = "tensorrt-rtx" if name == "tensorrt_rtx" else "tensorrt"
        raise MgdRtError(f"{engine.name} was built with {name} {built}, which is not installed: "
                         f"pip install {package}=={built.rsplit('.', 1)[0] if built.count('.') > 2 else built}, "
                         f"or {rebuild}") from None
    if lib.version != built:
        flags = sidecar.get("build", {}).get("flags", {})
        newer_same_major = (_version_tuple(lib.version) >= _version_tuple(built)
                            and lib.major == _version_tuple(built)[0])
        if flags.get("version_compatible") and newer_same_major:
            log.warning("%s: built with %s %s, loading in %s (version-compatible engine)",
                        engine.name, name, built, lib.version)
        else:
            raise MgdRtError(f"{engine.name} was built with {name} {built} but {lib.version} is installed: an engine "
                             f"only loads in the TensorRT version that built it; {rebuild}")
    return lib


def check_gpu(sidecar: dict[str, Any], gpu: GpuInfo, engine: Path) -> None:
    """Refuse an engine built for another compute capability than ``gpu``'s (per its hardware compatibility)."""
    targets = sidecar["targets"]
    level = sidecar.get("build", {}).get("flags", {}).get("hardware_compatibility", "none")
    source = sidecar.get("source", {}).get("onnx", "model.onnx")
    if level == "ampere+":
        if float(gpu.compute_capability) < 8.0:
            raise MgdRtError(f"{engine.name} is hardware-compatible for Ampere and later (SM >= 8.0); "
                             f"{gpu.name} is SM {gpu.compute_capability}")
        return
    if targets.get("compute_capabilities"):  # TensorRT-RTX ahead-of-time targets
        if gpu.sm not in targets["compute_capabilities"]:
            raise MgdRtError(f"{engine.name} was built for {', '.join(targets['compute_capabilities'])}; "
                             f"{gpu.name} is {gpu.sm}: rebuild with --target {gpu.sm}")
        return
    built = targets["gpu"]
    if built["compute_capability"] != gpu.compute_capability:
        raise MgdRtError(f"{engine.name} was built for {built['name']} (SM {built['compute_capability']}); this GPU "
                         f"is {gpu.name} (SM {gpu.compute_capability}): rebuild here with mgd-rt build {source}")
    if built["name"] != gpu.name:
        log.warning("%s was built on %s, running on %s (same SM %s): TensorRT advises building on the same model",
                    engine.name, built["name"], gpu.name, gpu.compute_capability)


def cuda_index(device: str | None) -> int:
    """"cuda:N" -> N ("cuda" and None -> 0); MgdRtError for anything but a CUDA device."""
    if device not in (None, "cuda") and not str(device).startswith("cuda:"):
        raise MgdRtError(f"--device {device}: TensorRT engines run on a CUDA GPU (cuda or cuda:N)")
    return int(device.split(":")[1]) if device and ":" in device else 0


def padding_to_profile(n: int, min_batch: int, max_batch: int) -> int:
    """Zero images to append to a batch of ``n`` so that every chunk of at most ``max_batch`` has at
    least ``min_batch`` images (an engine refuses a batch outside its profile)."""
    last = n % max_batch or max_batch
    return max(0, min_batch - last) if n > max_batch else max(0, min_batch - n)


def _is_torch_tensor(x: object) -> bool:
    # no torch import: the light runtime must not pull it in
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


class TensorRTBackend(Backend):
    """``model``: an .engine with its sidecar (an .onnx reaches here as the engine the engine cache built).

    ``device``: "cuda" or "cuda:N" (None: cuda:0). ``cuda_graph``: capture copy + enqueue + copy
    for the first batch size seen and replay it for that size (a fixed batch); other sizes run
    normally.
    """

    name = "tensorrt"
    kind = "engine"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        self._closed = True  # close() is safe however far __init__ gets
        super().__init__(check_inputs)
        index = cuda_index(device)
        path = self.model_file(model, "engine")
        # 1. the sidecar, before anything touches CUDA or the engine bytes
        sidecar = read_sidecar(path)
        self.sidecar = sidecar
        self.library = check_library(sidecar, path)
        self.precision = sidecar["precision"]
        self.check_dtype(dtype, path.name, f"build a {dtype} engine and pass that file")
        # 2. the GPU it would run on
        self.gpu = current_gpu(index)
        check_gpu(sidecar, self.gpu, path)

        meta = sidecar["source"].get("metadata", {})
        self.image_size = int(sidecar["image_size"])
        self.apply_metadata(meta)
        self.variant = sidecar.get("variant", self.variant)
        self.device = f"cuda:{index} ({self.gpu.name})"
        self.path = path

        # 3. CUDA: device, stream, engine
        self._cudart = cudart = cuda_runtime()
        check_cuda(cudart.cudaSetDevice(index), "cudaSetDevice")
        trt = self.library.module
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise MgdRtError(f"{path}: {self.library.describe()} could not deserialize this engine "
                             "(corrupt, or built for another GPU/version than its sidecar says); rebuild it")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        # every I/O tensor gets an address at enqueue, so anything beyond the contract's two is refused
        self.check_io(inputs, set(names) - set(inputs), str(path), only=True)
        self.check_io_types(str(path), {n: self.engine.get_tensor_dtype(n) for n in names}, trt.DataType.FLOAT,
                            trt.DataType.UINT8)
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)  # (min, opt, max) (B, 3, S, S) or (B, S, S, 3)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.context = self.engine.create_execution_context()
        self._stream = check_cuda(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate")
        self._closed = False
        self._buffers: dict[str, int] = {}
        self._host_in: np.ndarray | None = None
        self._host_out: np.ndarray | None = None
        self.cuda_graph = cuda_graph
        self._graph: tuple[int, Any, Any] | None = None  # (batch, graph, graph exec)
        log.info("loaded %s (%s, %s, batch %d..%d)", path.name, self.library.describe(), self.precision,
                 self.min_batch, self.max_batch)

    # buffers -------------------------------------------------------------------------------
    def _input_shape(self, b: int) -> tuple[int, int, int, int]:
        """(b, 3, S, S) float32 input, or (b, S, S, 3) uint8 for a pixel-input engine."""
        s = self.image_size
        return (b, s, s, 3) if self.takes_pixels else (b, 3, s, s)

    def _input_bytes(self, b: int) -> int:
        return b * 3 * self.image_size**2 * (1 if self.takes_pixels else 4)

    def _allocate(self) -> None:
        """Device buffers for the profile's max batch and pinned host buffers (async copies need pinned)."""
        cudart, s, b = self._cudart, self.image_size, self.max_batch
        n_out = b * s * s  # float32 elements of (B, 1, S, S)
        for key, size in (("d_in", self._input_bytes(b)), ("d_out", n_out * 4)):
            self._buffers[key] = int(check_cuda(cudart.cudaMalloc(size), "cudaMalloc"))
        for key, size in (("h_in", self._input_bytes(b)), ("h_out", n_out * 4)):
            self._buffers[key] = int(check_cuda(cudart.cudaMallocHost(size), "cudaMallocHost"))
        # numpy views of the pinned memory: the input (see _input_shape) and (Bmax, 1, S, S) float32
        element = ctypes.c_uint8 if self.takes_pixels else ctypes.c_float
        n_in = self._input_bytes(b) // ctypes.sizeof(element)
        self._host_in = np.ctypeslib.as_array((element * n_in).from_address(self._buffers["h_in"]))
        self._host_in = self._host_in.reshape(self._input_shape(b))
        self._host_out = np.ctypeslib.as_array((ctypes.c_float * n_out).from_address(self._buffers["h_out"]))
        self._host_out = self._host_out.reshape(b, 1, s, s)

    # numpy path -----------------------------------------------------------------------------
    # Backend.run_unchecked cuts a batch into chunks of at most max_batch (the profile's maximum);
    # run_exact pads a chunk below the profile's minimum
    def _enqueue(self, b: int, d_in: int, d_out: int, stream: int) -> None:
        self.context.set_input_shape(INPUT_NAME, self._input_shape(b))
        self.context.set_tensor_address(INPUT_NAME, d_in)
        self.context.set_tensor_address(OUTPUT_NAME, d_out)
        if not self.context.execute_async_v3(stream):
            raise MgdRtError(f"{self.path.name}: TensorRT failed to enqueue a batch of {b}")

    def _copies_and_enqueue(self, b: int) -> None:
        cudart, buf, s = self._cudart, self._buffers, self.image_size
        kind = cudart.cudaMemcpyKind
        check_cuda(cudart.cudaMemcpyAsync(buf["d_in"], buf["h_in"], self._input_bytes(b),
                                          kind.cudaMemcpyHostToDevice, self._stream), "cudaMemcpyAsync")
        self._enqueue(b, buf["d_in"], buf["d_out"], int(self._stream))
        check_cuda(cudart.cudaMemcpyAsync(buf["h_out"], buf["d_out"], b * s * s * 4,
                                          kind.cudaMemcpyDeviceToHost, self._stream), "cudaMemcpyAsync")

    def run_exact(self, x: np.ndarray) -> np.ndarray:
        """(b, 3, S, S) float32 (or (b, S, S, 3) uint8 pixels) with b <= max batch -> (b, 1, S, S) float32."""
        if self._closed:
            raise MgdRtError("the TensorRT backend is closed")
        if not self._buffers:
            self._allocate()
        cudart = self._cudart
        n = x.shape[0]
        b = max(n, self.min_batch)
        self._host_in[:n] = x  # into pinned memory
        if b > n:
            self._host_in[n:b] = 0  # padding up to the profile's minimum batch
        if self.cuda_graph and self._graph is None:
            self._copies_and_enqueue(b)  # one plain run first: TensorRT initialises lazily on the first enqueue
            check_cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            self._capture(b)
        if self._graph is not None and self._graph[0] == b:
            check_cuda(cudart.cudaGraphLaunch(self._graph[2], self._stream), "cudaGraphLaunch")
        else:
            self._copies_and_enqueue(b)
        check_cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return self._host_out[:n].copy()

    def _capture(self, b: int) -> None:
        """Record copy-in, enqueue and copy-out for batch ``b`` as one CUDA graph (fixed addresses)."""
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check_cuda(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            self._copies_and_enqueue(b)
        finally:
            graph = check_cuda(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        exec_ = check_cuda(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._graph = (b, graph, exec_)
        log.info("captured a CUDA graph for batch %d", b)

    # torch path ----------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, Any] | Any) -> Any:
        """numpy (B, 3, S, S) float32 -> numpy logits; a torch CUDA tensor -> torch CUDA logits, no copies."""
        batch = inputs[INPUT_NAME] if isinstance(inputs, Mapping) else inputs
        if _is_torch_tensor(batch):
            if not batch.is_cuda:
                import torch

                return torch.from_numpy(super().infer(batch.detach().numpy()))
            return self.infer_torch(batch)
        return super().infer(batch)

    def infer_torch(self, x: Any) -> Any:
        """torch.float32 CUDA (B, 3, S, S) (torch.uint8 (B, S, S, 3) for a pixel-input engine) -> torch.float32
        CUDA (B, 1, S, S), enqueued on torch's current stream.

        The caller's memory is bound directly; nothing is copied (a non-contiguous input is made
        contiguous first) and nothing is synchronised: torch orders later work on the same stream.
        """
        import torch

        s = self.image_size
        dtype = torch.uint8 if self.takes_pixels else torch.float32
        if self.check_inputs and (x.dtype != dtype or x.ndim != 4 or tuple(x.shape[1:]) != self._input_shape(1)[1:]):
            raise MgdRtError(f"tensorrt: input must be a {dtype} {('B', *self._input_shape(1)[1:])} tensor, got "
                             f"{x.dtype} {tuple(x.shape)}")
        if x.device.index not in (None, self.gpu.index):
            raise MgdRtError(f"tensorrt: input is on {x.device}, the engine on cuda:{self.gpu.index}")
        x = x.contiguous()
        n = x.shape[0]
        short = padding_to_profile(n, self.min_batch, self.max_batch)
        if short:  # the last chunk would be under the profile's minimum (a copy; only min batch > 1 profiles)
            x = torch.cat([x, x.new_zeros(self._input_shape(short))])
        out = torch.empty((x.shape[0], 1, s, s), dtype=torch.float32, device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        for i in range(0, x.shape[0], self.max_batch):
            chunk = x[i : i + self.max_batch]  # a view: contiguous along the batch axis
            self._enqueue(chunk.shape[0], chunk.data_ptr(), out[i : i + self.max_batch].data_ptr(), stream)
        return out[:n]

    # lifetime ------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"tensorrt on {self.device}, {self.precision}, {self.library.describe()}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cudart = self._cudart
        if self._graph is not None:
            cudart.cudaGraphExecDestroy(self._graph[2])
            cudart.cudaGraphDestroy(self._graph[1])
            self._graph = None
        for key, ptr in self._buffers.items():
            (cudart.cudaFreeHost if key.startswith("h_") else cudart.cudaFree)(ptr)
        self._buffers.clear()
        self._host_in = self._host_out = None
        cudart.cudaStreamDestroy(self._stream)
        self.context = self.engine = None  # the context goes before the engine


__all__ = ["TensorRTBackend", "check_gpu", "check_library", "cuda_index"]
