"""``mgd-rt demo``: export, verify and segment scikit-image's photos, offline, in one command."""

from __future__ import annotations

import argparse

from mgd_rt.cli.options import add_model_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="export to ONNX, verify against PyTorch, segment sample photos, print parity and latency",
        description="Without --checkpoint: seeded UNTRAINED B+ weights (the masks mean nothing; the "
        "pipeline, parity and latency do). Needs the export extra and scikit-image.",
    )
    add_model_options(parser)
    parser.add_argument("-o", "--output", default="mgd-rt-demo", metavar="OUTDIR",
                        help="where model.onnx, photos/ and overlays/ go (default: mgd-rt-demo)")
    parser.add_argument("--photos", type=int, default=4, metavar="N", help="sample photos to segment (1-4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.demo import demo

    report = demo(args.checkpoint, args.variant, args.image_size, args.output, args.photos)
    print("\n".join(report.lines))
    return 0 if report.parity else 1
