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

import glob
import logging
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError

log = logging.getLogger("mgd_rt")

DEFAULT_NAME = "mgd_sam2"
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 5000  # long enough for concurrent clients' requests to meet in one batch
# measured: 3.12 works; 3.11.7 fails inside PyTriton's Python-backend stub
MIN_PYTHON = (3, 12)


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


def make_infer_fn(backend) -> Callable:
    """A PyTriton inference callable over one loaded runtime backend.

    Triton's dynamic batcher hands over several requests at once; ``@batch`` stacks them into
    one (B, 3, S, S) float32 array and splits the (B, 1, S, S) answer back per request.
    """
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = inputs[INPUT_NAME]  # (B, 3, S, S) float32, shape and dtype already checked by Triton
        return {OUTPUT_NAME: backend.infer(images)}

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
    triton_config = TritonConfig(
        http_address=address, http_port=http_port, grpc_address=address, grpc_port=grpc_port,
        metrics_address=address, metrics_port=metrics_port, exit_on_error=True,
    )
    # not ``with Triton(...)``: entering starts the server, and bind would then load the model
    # before _publish_parameters could add to its config
    triton = Triton(config=triton_config, security_config=TritonSecurityConfig(access_token=access_token))
    try:
        triton.bind(
            model_name=name,
            infer_func=[make_infer_fn(b) for b in backends],
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=(3, s, s))],  # batch axis implied
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(1, s, s))],
            config=ModelConfig(
                max_batch_size=max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us,
                                       preferred_batch_size=[max_batch]),
            ),
            strict=True,  # the callable's outputs are checked against the declared ones
        )
        _publish_parameters(triton, name, parameters)
        triton.run()  # starts tritonserver and loads the model; returns once it is ready
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


__all__ = ["DEFAULT_NAME", "ServeConfig", "check_python", "serve"]
