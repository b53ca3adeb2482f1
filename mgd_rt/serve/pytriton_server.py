"""``serve``: any artifact the runtime can run, served by a real Triton server through PyTriton.

PyTriton's wheel ships the ``tritonserver`` binary; our Python function (one loaded runtime
backend per instance) sits behind Triton's Python backend, so Triton does the protocol (HTTP,
gRPC), validates each request's names, dtypes and shapes, and batches concurrent requests with
its dynamic batcher before they reach the model. Clients: :class:`TritonBackend`
(``Segmenter("grpc://HOST:PORT/NAME")``), or any Triton client.

Python versions (measured here): 3.12 works (``pip install 'mgd-rt[serve]'``, wheels only).
3.13: tritonserver starts, but PyTriton 0.7 pins numpy < 2, which has no 3.13 wheel, so pip
builds numpy 1.26 from source (over 15 minutes on 2 cores; not completed here), and forcing
numpy 2 makes every answer an empty tensor (the stub's numpy bindings need 1.x).
3.11.7 fails inside PyTriton's Python-backend stub (``'_thread.RLock' object has no attribute
'_recursion_count'``). Serving an .onnx needs no torch: the light runtime plus PyTriton.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgd_rt.contract import INPUT_FORMAT_KEY, INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")

DEFAULT_NAME = "mgd_sam2"
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 5000  # long enough for concurrent clients' requests to meet in one batch
# measured: 3.12 works; 3.11.7 fails inside PyTriton's Python-backend stub
MIN_PYTHON = (3, 12)
# tritonserver's own heap (set in its environment only, not in this process's, and never over a value the user
# set). glibc's mmap threshold rises to the size of any large block once it is freed, so from then on each
# request's tensor buffers (an S=256 image is 0.75 MiB) come from glibc's per-thread arenas (15 in tritonserver
# here), whose freed space stays resident. A fixed threshold (which also ends that adaptation) keeps blocks of
# 64 KiB and more in mmap, returned on free. Measured (benchmarks/reliability.py, 16,000 requests from 4 gRPC
# clients, tritonserver's anonymous memory after the warm-up -> quarter medians under load): 23 -> 64-74 MB by
# default, 18 -> 30-32 MB with this, 22 -> 52-59 MB with MALLOC_ARENA_MAX=2 instead.
TRITONSERVER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


@dataclass
class ServeConfig:
    """The final configuration of a server, logged at start."""

    model: str
    name: str
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    max_batch: int
    queue_delay_us: int
    instances: int
    device: str | None

    def urls(self) -> tuple[str, str]:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"grpc://{host}:{self.grpc_port}/{self.name}", f"http://{host}:{self.http_port}/{self.name}"


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    """Refuse Python versions on which PyTriton's Python backend is known to fail."""
    if version[:2] < MIN_PYTHON:
        raise MgdRtError(
            f"mgd-rt serve needs Python >= {'.'.join(map(str, MIN_PYTHON))} (tested: 3.12); this is "
            f"{'.'.join(map(str, version))}, where PyTriton's Python backend fails ('_thread.RLock' object has no "
            "attribute '_recursion_count'). Make a 3.12 environment: python3.12 -m venv v && "
            "v/bin/pip install 'mgd-rt[serve]' && v/bin/mgd-rt serve MODEL"
        )


def _libpython_on_loader_path() -> None:
    """Let Triton's Python-backend stub find this interpreter's libpython.

    The stub (a separate binary tritonserver starts) links libpython3.X.so; pyenv-style builds
    keep it in the interpreter's LIBDIR, which only the python binary's own rpath knows about.
    Set before PyTriton starts tritonserver, so the server and its stubs inherit it.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and glob.glob(os.path.join(libdir, "libpython3*.so*")):
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if libdir not in paths:
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def backend_shm_bytes(max_batch: int, image_size: int) -> tuple[int, int]:
    """(initial, growth) bytes of the shared-memory region between tritonserver and one Python-backend stub.

    Every batch crosses it: ``max_batch`` (3, S, S) float32 images in, as many (1, S, S) float32 logits out.
    With PyTriton's default (4 MiB, growing 1 MiB at a time) the backend grows the region in small steps as
    batches and fragmentation need, and each growth maps the whole region again while the old mappings stay
    (three mappings of it in tritonserver after two growths): measured, as the region grew from 5 to 8 MiB,
    tritonserver's resident shared memory went from 7 to 27 MiB and the stub's resident memory up by 20 MB.
    Room for two full batches plus 1 MiB (request metadata) from the start: the region did not grow in 60,000
    requests of S=256 images (measured). The backend allocates all of it at start, so /dev/shm must hold it
    (Docker's default is 64 MiB): 9 MiB at S=256 with --max-batch 4, 257 MiB at S=1024 with 8. Growth, if ever
    needed, is one batch at a time.
    """
    batch = max_batch * (3 + 1) * image_size * image_size * 4  # float32 in (B, 3, S, S) and out (B, 1, S, S)
    return 2 * batch + 2**20, batch


@contextlib.contextmanager
def _python_backend_shm(initial: int, growth: int) -> Iterator[bool]:
    """While a ``Triton`` is constructed: PyTriton's region sizes (module constants of PyTriton 0.7, read when a
    ``Triton`` is made and passed to tritonserver as ``--backend-config python,shm-...``), restored after."""
    import pytriton.triton as pytriton_triton  # PyTriton has no public setting for these

    names = ("INITIAL_BACKEND_SHM_SIZE", "GROWTH_BACKEND_SHM_SIZE")
    if not all(isinstance(getattr(pytriton_triton, n, None), int) for n in names):
        log.warning("could not size the Python backend's shared memory (another PyTriton version?); its default "
                    "grows in small steps, each adding the whole region to tritonserver's resident memory")
        yield False
        return
    saved = [getattr(pytriton_triton, n) for n in names]
    pytriton_triton.INITIAL_BACKEND_SHM_SIZE, pytriton_triton.GROWTH_BACKEND_SHM_SIZE = initial, growth
    try:
        yield True
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(pytriton_triton, name, value)


@contextlib.contextmanager
def _tritonserver_environment(extra: dict[str, str]) -> Iterator[dict[str, str]]:
    """While tritonserver starts (it inherits this process's environment): ``extra``, except names the user set;
    yields what was added. This process's own allocator read its settings at its start and is unaffected."""
    added = {k: v for k, v in extra.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield added
    finally:
        for name in added:
            os.environ.pop(name, None)


def make_infer_fn(backend) -> Callable:
    """A PyTriton inference callable over one loaded runtime backend.

    Triton's dynamic batcher hands over several requests at once; ``@batch`` stacks them into
    one (B, 3, S, S) float32 array ((B, S, S, 3) uint8 for a pixel-input model) and splits the
    (B, 1, S, S) answer back per request.
    """
    from pytriton.decorators import batch

    run = backend.infer_pixels if backend.takes_pixels else backend.infer

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = inputs[INPUT_NAME]  # shape and dtype already checked by Triton
        return {OUTPUT_NAME: run(images)}

    return infer


def _publish_parameters(triton, name: str, parameters: dict[str, str]) -> bool:
    """Add mgd_rt.* parameters to the model's Triton config, as ``mgd-rt triton-repo`` writes them.

    PyTriton has no public way to set config parameters; its generated config is cached on the
    model object, so extending it before the server starts is enough. Without them a client
    falls back to ImageNet normalisation (the contract's default), hence only a warning.
    """
    try:
        manager = triton._model_manager  # private API of PyTriton 0.7
        model = next(m for m in manager.models if m.model_name == name)
        model._get_triton_model_config().backend_parameters.update(
            {f"mgd_rt.{k}": v for k, v in parameters.items()})
        return True
    except Exception as exc:  # an internal change in another PyTriton version
        log.warning("could not publish mgd_rt.* parameters (%s); clients assume ImageNet normalisation", exc)
        return False


def serve(
    model: str | Path,
    name: str = DEFAULT_NAME,
    address: str = "0.0.0.0",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch: int = DEFAULT_MAX_BATCH,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    device: str | None = None,
    backend: str = "auto",
    access_token: str | None = None,
    on_ready: Callable[[ServeConfig], None] | None = None,
) -> ServeConfig:
    """Serve ``model`` (.onnx, .engine or checkpoint) until interrupted; returns the configuration used.

    Each of ``instances`` loads its own backend (ONNX Runtime sessions and TensorRT contexts are
    not shared across threads). ``on_ready`` is called once the server answers. Inference is
    open; PyTriton restricts statistics, model-repository, shared-memory, trace and logging to a
    token: ``access_token`` (None: a random one nobody knows), sent by clients as the header
    ``triton-grpc-protocol-triton-access-token`` (gRPC) or ``triton-access-token`` (HTTP).
    """
    check_python()
    if max_batch < 1:
        raise MgdRtError(f"--max-batch {max_batch}: must be at least 1")
    if instances < 1:
        raise MgdRtError(f"--instances {instances}: must be at least 1")
    if queue_delay_us < 0:
        raise MgdRtError(f"--max-queue-delay-us {queue_delay_us}: must be 0 or more")
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
    except ImportError:
        raise MgdRtError("mgd-rt serve needs PyTriton: pip install 'mgd-rt[serve]' (Python 3.12)") from None
    from mgd_rt.runtime.backends import load_backend

    _libpython_on_loader_path()
    config = ServeConfig(str(model), name, address, http_port, grpc_port, metrics_port, max_batch, queue_delay_us,
                         instances, device)
    t0 = time.perf_counter()
    backends = [load_backend(model, backend, device) for _ in range(instances)]
    first = backends[0]
    if getattr(first, "fixed_batch", None) not in (None, 1):
        raise MgdRtError(f"{model}: takes batches of exactly {first.fixed_batch}; serve a dynamic-batch graph")
    s = first.image_size
    log.info("loaded %s x %d in %.1f s: %s", Path(str(model)).name, instances, time.perf_counter() - t0,
             first.describe())
    parameters = {
        "image_size": str(s), "variant": first.variant, "precision": first.precision,
        "mean": ",".join(map(str, first.mean)), "std": ",".join(map(str, first.std)),
    }
    if first.takes_pixels:  # absent means float32 input, as in the graph's own metadata
        parameters[INPUT_FORMAT_KEY] = first.input_format
    triton_config = TritonConfig(
        http_address=address, http_port=http_port, grpc_address=address, grpc_port=grpc_port,
        metrics_address=address, metrics_port=metrics_port, exit_on_error=True,
    )
    shm_initial, shm_growth = backend_shm_bytes(max_batch, s)
    # not ``with Triton(...)``: entering starts the server, and bind would then load the model
    # before _publish_parameters could add to its config
    with _python_backend_shm(shm_initial, shm_growth):
        triton = Triton(config=triton_config, security_config=TritonSecurityConfig(access_token=access_token))
    try:
        triton.bind(
            model_name=name,
            infer_func=[make_infer_fn(b) for b in backends],
            # batch axis implied; a pixel-input model takes what its clients send, uint8 (S, S, 3)
            inputs=[Tensor(name=INPUT_NAME, dtype=np.uint8, shape=(s, s, 3)) if first.takes_pixels
                    else Tensor(name=INPUT_NAME, dtype=np.float32, shape=(3, s, s))],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(1, s, s))],
            config=ModelConfig(
                max_batch_size=max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us,
                                       preferred_batch_size=[max_batch]),
            ),
            strict=True,  # the callable's outputs are checked against the declared ones
        )
        _publish_parameters(triton, name, parameters)
        with _tritonserver_environment(TRITONSERVER_MALLOC_ENV) as added:
            triton.run()  # starts tritonserver and loads the model; returns once it is ready
        log.info("tritonserver: Python-backend region %.1f MiB (growth %.1f MiB) per instance; %s",
                 shm_initial / 2**20, shm_growth / 2**20,
                 " ".join(f"{k}={v}" for k, v in added.items()) or "allocator settings as in this environment")
        grpc_url, http_url = config.urls()
        log.info("serving %s as %s: %s and %s (max batch %d, queue delay %d us, %d instance(s)); "
                 "Ctrl-C stops", Path(str(model)).name, name, grpc_url, http_url, max_batch, queue_delay_us,
                 instances)
        if on_ready is not None:
            on_ready(config)
        triton.serve()  # blocks until SIGINT/SIGTERM or the server dies
    finally:
        triton.stop()
        for b in backends:
            b.close()
    return config


__all__ = ["DEFAULT_NAME", "ServeConfig", "backend_shm_bytes", "check_python", "serve"]
