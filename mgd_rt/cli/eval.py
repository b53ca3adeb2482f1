"""``mgd-rt eval``: DIS metrics of model files on image / ground-truth folders, with TTA."""

from __future__ import annotations

import argparse
import sys

from mgd_rt.runtime.backends import DTYPES
from mgd_rt.runtime.tta import TTA_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score models on image/ground-truth folders (S, E, F, weighted F, MAE, HCE)",
        description="Score each MODEL (checkpoint, .onnx or engine, through the runtime users get) on images "
        "paired with ground truths by file stem; the first MODEL is the reference every other row is compared "
        "with. Metrics from pysodmetrics (pip install 'mgd-rt[eval]'). Exit code 1 if nothing could be scored.",
    )
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="checkpoint, .onnx graph or engine; the first is the reference")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="image folder, or a DIS5K folder holding im/ and gt/ (then leave --masks out)")
    parser.add_argument("--masks", metavar="DIR", help="ground-truth folder (single-channel masks, same stems)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: flip (2 passes) or paper (the authors' protocol, 6 passes; "
                        "a graph needs <name>.s<size>.onnx per scale)")
    parser.add_argument("--tile", action="store_true", help="add the high-resolution window pass")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when usable, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="torch: autocast precision; a graph or engine: must match its own precision")
    parser.add_argument("-o", "--output", metavar="JSON", help="write every figure and the environment as JSON")
    parser.add_argument("--csv", metavar="CSV", help="write one row per (model, image)")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.evaluate import evaluate

    if args.batch_size < 1:
        args.parser.error("--batch-size must be at least 1")
    report = evaluate(
        args.models, args.images, args.masks, tta=args.tta, tile=args.tile, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, output=args.output, csv_path=args.csv, progress=sys.stderr,
    )
    print(report.table())
    print(report.summary() + "; " + ", ".join(f"{m.images_per_second:.2f}" for m in report.models) + " images/s")
    return 0 if report.scored else 1
