"""``mgd-rt app``: a web page to drop photos on and an HTTP API, over one loaded model.

:func:`serve_app` loads the model once and serves :func:`mgd_rt.app.server.create_app` with uvicorn.
FastAPI and uvicorn come with the ``app`` extra and are imported only here, where used, so importing
``mgd_rt.app`` costs nothing.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from mgd_rt.app.settings import TOKEN_ENV, AppSettings
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

__all__ = ["AppSettings", "TOKEN_ENV", "serve_app"]


def _check_port(host: str, port: int) -> None:
    """One clear line for a taken port or an unknown host, before minutes of model loading."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MgdRtError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise MgdRtError(f"{host}:{port}: cannot listen ({exc.strerror}); pick another --port") from None


def serve_app(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    settings: AppSettings | None = None,
    device: str | None = None,
    backend: str = "auto",
    dtype: str | None = None,
    log_level: str = "info",
) -> None:
    """Load ``model`` (checkpoint, .onnx, .engine, grpc:// or http:// Triton URL) and serve the page and the API
    on http://host:port/ until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from mgd_rt.app.server import create_app
    except ImportError as exc:
        raise MgdRtError(f"mgd-rt app needs the app extra ({exc.name} is missing): pip install 'mgd-rt[app]'") from None
    settings = settings or AppSettings()
    if not 0 < port < 65536:
        raise MgdRtError(f"--port {port}: must lie in 1..65535")
    _check_port(host, port)
    with Segmenter(model, device=device, backend=backend, dtype=dtype, batch_size=settings.max_batch) as segmenter:
        log.info("%s", segmenter.describe())
        app = create_app(segmenter, settings)
        token = "; the API needs the bearer token" if settings.token else ""
        log.info("serving http://%s:%d/ (API docs: /docs%s)", host if ":" not in host else f"[{host}]", port, token)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
