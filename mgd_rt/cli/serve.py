"""``mgd-rt serve``: serve a model through Triton (PyTriton), with dynamic batching."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model through Triton (PyTriton; needs Python >= 3.12, tested 3.12)",
        description="Serve MODEL (.onnx, .engine or checkpoint) with a real tritonserver (PyTriton's) over "
        "HTTP and gRPC, with dynamic batching. Clients: mgd-rt infer --model grpc://HOST:PORT/NAME, "
        "Segmenter('grpc://HOST:PORT/NAME') or any Triton client. Ctrl-C (or SIGTERM) stops it. Statistics and "
        "the other admin endpoints need the token in $MGD_RT_ACCESS_TOKEN (unset: a random one).",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint, .onnx graph or TensorRT .engine")
    parser.add_argument("--name", default=None, help="Triton model name (default: mgd_sam2)")
    parser.add_argument("--address", default=None, help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=None, help="default: 8000")
    parser.add_argument("--grpc-port", type=int, default=None, help="default: 8001")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: 8002")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="largest batch the dynamic batcher forms (default: 8)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, metavar="US",
                        help="how long a request may wait for others to batch with (default: 5000)")
    parser.add_argument("--instances", type=int, default=None, metavar="N",
                        help="model instances, each its own loaded backend (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.serve.pytriton_server import serve

    # a flag left out means the library's default (filled in one place)
    given = {k: v for k, v in {
        "name": args.name, "address": args.address, "http_port": args.http_port, "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port, "max_batch": args.max_batch, "queue_delay_us": args.max_queue_delay_us,
        "instances": args.instances, "device": args.device,
        # from the environment, not a flag: a token on the command line shows in ps
        "access_token": os.environ.get("MGD_RT_ACCESS_TOKEN") or None,
    }.items() if v is not None}
    serve(args.model, **given)
    print("ok: server stopped")
    return 0
