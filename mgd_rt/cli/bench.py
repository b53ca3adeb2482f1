"""``mgd-rt bench``: latency, throughput, memory and accuracy per model, precision and batch size."""

from __future__ import annotations

import argparse
import sys

from mgd_rt.cli.options import add_torch_options


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive")
    return values


def _dtypes(text: str) -> list[str]:
    from mgd_rt.runtime.backends import DTYPES

    allowed = DTYPES  # which backend takes which is checked by bench's plan, per model
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma-separated)")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    from mgd_rt.runtime.backends import BACKEND_CHOICES  # the backend table: plain data, no torch

    parser = subparsers.add_parser(
        "bench",
        help="latency, throughput, memory and accuracy per model, precision and batch size",
        description="Time models through the runtime's backends: latency min/p50/p90/p99/mean, images/s, peak "
        "memory, FLOPs and fraction of the machine's peak, accuracy against PyTorch FP32 (--reference). Prints a "
        "table; -o writes the JSON (every raw timing and the environment) and a PNG chart beside it.",
    )
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="checkpoint (.pth/.pt/.safetensors: PyTorch, eager or --compile), .onnx (ONNX Runtime), "
                        "engine (TensorRT, where installed), or a variant name (b+, tiny, ...) for seeded UNTRAINED "
                        "weights")
    parser.add_argument("--batch", type=_ints, default=[1], metavar="1,2,4,8", help="batch sizes (default: 1)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="warm-up calls (default 3; on CUDA more until 3 calls agree within 5%%)")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--iters", type=int, default=None, metavar="N", help="timed calls per result (default: 10)")
    count.add_argument("--seconds", type=float, default=None, metavar="S", help="time calls for S seconds instead")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="time every model again N-1 more times, each round after all the others, and summarise "
                        "all rounds' calls (default 1; on a shared VM whose speed drifts, 3 spreads each model's "
                        "calls over the whole run)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when usable, else cpu)")
    parser.add_argument("--dtype", type=_dtypes, default=None, metavar="fp32,bf16",
                        help="PyTorch precisions to run each checkpoint in (default fp32; fp16/bf16 = autocast); "
                        "an .onnx graph or engine runs in its own precision, which is reported, unless "
                        "--backend names one that chooses (openvino: fp32 or bf16 from an FP32 graph)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the model files (default: picked by suffix; openvino runs .onnx graphs "
                        "on OpenVINO)")
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="model input side for checkpoints and variant names (default: the variant's)")
    add_torch_options(parser, several=True)  # --compile eager,default,... and --tf32
    parser.add_argument("--end-to-end", nargs="+", default=None, metavar="IMAGES",
                        help="also time image files (files, folders, globs) from disk to written matte, by stage")
    parser.add_argument("--reference", metavar="CKPT", default=None,
                        help="PyTorch FP32 model (checkpoint or variant name) to measure accuracy against")
    parser.add_argument("--holdout", action="store_true",
                        help="check accuracy (needs --reference) on each of INT8 calibration's six held-out photos "
                        "at batch 1, every one held to the precision's tolerance, instead of on the timed batch")
    parser.add_argument("-o", "--output", metavar="results.json", default=None,
                        help="write the JSON here and the chart beside it (.png)")
    parser.add_argument("--chart", metavar="PNG", default=None, help="chart path (default: the JSON's with .png)")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.bench import bench

    if args.warmup < 0:
        args.parser.error("--warmup must be 0 or more")
    if args.iters is not None and args.iters < 1:
        args.parser.error("--iters must be at least 1")
    if args.rounds < 1:
        args.parser.error("--rounds must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        args.parser.error("--seconds must be positive")
    if args.holdout and args.reference is None:
        args.parser.error("--holdout checks accuracy against --reference: give one (a checkpoint or variant name)")
    # a flag left out means the library's default: only pass what was given
    counts = {k: v for k, v in (("iters", args.iters), ("seconds", args.seconds)) if v is not None}
    report = bench(
        args.models, batches=args.batch, warmup=args.warmup, device=args.device, dtypes=args.dtype,
        end_to_end=args.end_to_end, reference=args.reference, output=args.output, chart=args.chart,
        image_size=args.image_size, compile=args.compile, tf32=args.tf32, backend=args.backend,
        holdout=args.holdout, rounds=args.rounds, **counts,
    )
    print(report.table())
    for r in report.results:
        if r.end_to_end:
            s = r.end_to_end["stage_s_per_image"]
            print(f"end-to-end {r.label} B={r.batch}: {r.end_to_end['images']} image(s), "
                  f"{r.end_to_end['images_per_s']:.3f} images/s; per image: "
                  + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in s.items() if v is not None))
    if report.chart_path:
        print(f"chart: {report.chart_path}")
    print(report.line(), file=sys.stderr)
    return 0 if report.ok else 1
