"""``mgd-rt smoke``: load a checkpoint (or seeded weights) and run one forward pass."""

from __future__ import annotations

import argparse
import json

from mgd_rt.cli.options import add_device_option, add_model_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "smoke",
        help="load the PyTorch model and run one forward pass",
        description="Print the variant, parameter count, input/output shapes and the output "
        "statistics of one forward pass on seeded random input.",
    )
    add_model_options(parser)
    add_device_option(parser)
    parser.add_argument("--batch", type=int, default=1, help="images in the batch (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.smoke import smoke

    report = smoke(args.checkpoint, args.variant, args.image_size, args.device, args.batch)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0
