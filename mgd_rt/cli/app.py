"""``mgd-rt app``: a web page and an HTTP API over one loaded model (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import os

from mgd_rt.app.settings import TOKEN_ENV, AppSettings
from mgd_rt.runtime.backends import BACKEND_CHOICES, DTYPES

_DEFAULTS = AppSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="a web page to drop photos on and an HTTP API (POST /v1/segment)",
        description="Load MODEL once and serve a page (drop photos, see matte, cut-out and overlay) and an HTTP "
        "API: POST /v1/segment, GET /v1/health, GET /v1/model, OpenAPI docs at /docs. Requests wait in a bounded "
        "queue (full: 503 + Retry-After) and those arriving together share a model call. Ctrl-C stops it.",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint (.pth/.pt/.safetensors), ONNX graph (.onnx), "
                        "engine (.engine) or a Triton model: grpc://HOST:PORT/NAME, http://HOST:PORT/NAME")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="default: 7860")
    parser.add_argument("--max-batch", type=int, default=_DEFAULTS.max_batch, metavar="N",
                        help=f"requests gathered into one model call (default: {_DEFAULTS.max_batch})")
    parser.add_argument("--batch-wait-ms", type=float, default=_DEFAULTS.batch_wait_ms, metavar="MS",
                        help=f"how long a request waits for others to batch with (default: {_DEFAULTS.batch_wait_ms})")
    parser.add_argument("--queue-size", type=int, default=_DEFAULTS.queue_size, metavar="N",
                        help=f"requests that may wait for the model; beyond: 503 (default: {_DEFAULTS.queue_size})")
    parser.add_argument("--max-bytes", type=int, default=_DEFAULTS.max_bytes, metavar="N",
                        help=f"largest upload in bytes; beyond: 413 (default: {_DEFAULTS.max_bytes})")
    parser.add_argument("--max-pixels", type=int, default=_DEFAULTS.max_pixels, metavar="N",
                        help=f"largest image in pixels; beyond: 413 (default and most: {_DEFAULTS.max_pixels})")
    parser.add_argument("--cache-mb", type=float, default=_DEFAULTS.cache_bytes / 1e6, metavar="MB",
                        help="results kept so a photo asked again (other format, threshold) skips the model "
                        f"(default: {_DEFAULTS.cache_bytes / 1e6:g}; 0: off)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token the API requires (better: ${TOKEN_ENV}, which `ps` does not show)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best available)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="default: picked by the model file's suffix")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="torch: autocast precision (default fp32); a graph or engine runs in its own")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.app import serve_app

    settings = AppSettings(
        max_batch=args.max_batch, queue_size=args.queue_size, batch_wait_ms=args.batch_wait_ms,
        max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        cache_bytes=round(args.cache_mb * 1e6),
        token=args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None,
    )
    log_level = "debug" if args.verbose else "warning" if args.quiet else "info"
    serve_app(args.model, host=args.host, port=args.port, settings=settings, device=args.device,
              backend=args.backend, dtype=args.dtype, log_level=log_level)
    print("ok: app stopped")
    return 0
