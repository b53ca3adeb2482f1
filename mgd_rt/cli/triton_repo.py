"""``mgd-rt triton-repo``: a Triton model repository for .onnx graphs and TensorRT engines."""

from __future__ import annotations

import argparse

from mgd_rt.serve.triton_repo import INSTANCE_KINDS, INT8_WEIGHTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository for .onnx graphs and .engine files",
        description="Validate each artifact as Triton would (names, dtypes, dims, max batch within the engine's "
        "profile), then write REPO/NAME/config.pbtxt, REPO/NAME/1/model.onnx|model.plan (+ the engine's sidecar) "
        "and REPO/NAME/mgd_rt.json. Serve it on a GPU machine with: "
        "tritonserver --model-repository REPO",
    )
    parser.add_argument("models", metavar="MODEL", nargs="+", help=".onnx graph(s) or TensorRT .engine file(s)")
    parser.add_argument("-o", "--output", required=True, metavar="REPO", help="model repository directory")
    parser.add_argument("--name", default=None, help="model name (one MODEL only; default: the file name, "
                        "non-alphanumerics as '_')")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="Triton max_batch_size (default: the engine profile's max; 8 for a graph)")
    parser.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default: 1)")
    parser.add_argument("--instance-kind", choices=INSTANCE_KINDS, default=None,
                        help="where instances run (default: gpu for engines, auto for graphs)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, metavar="US",
                        help="dynamic batcher's wait to fill a batch (default: 2000)")
    parser.add_argument("--int8-weights", choices=INT8_WEIGHTS, default="auto",
                        help="INT8 graphs: u8 writes the weights as U8 (exact) for CPUs without VNNI, where Triton's "
                        "onnxruntime backend would run saturating U8 x S8 kernels; s8 copies the graph as "
                        "calibrated (default auto: u8 for CPU or auto instances when this machine has no VNNI)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing model directories")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.serve.triton_repo import DEFAULT_QUEUE_DELAY_US, write_triton_repo

    written = write_triton_repo(
        args.models, args.output, max_batch=args.max_batch, instances=args.instances,
        instance_kind=args.instance_kind, name=args.name,
        queue_delay_us=DEFAULT_QUEUE_DELAY_US if args.max_queue_delay_us is None else args.max_queue_delay_us,
        overwrite=args.overwrite, int8_weights=args.int8_weights,
    )
    for path in written:
        print(f"wrote {path}")
    print(f"ok: {len(written)} model(s) in {args.output}; serve with: tritonserver --model-repository {args.output}")
    return 0
