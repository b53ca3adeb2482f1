"""``mgd-rt verify``: compare an exported graph with the PyTorch model; exit 1 beyond tolerance."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare an .onnx graph (ONNX Runtime, CPU), engine or .pt2 package with the PyTorch model",
        description="Run ARTIFACT (an .onnx graph with ONNX Runtime on the CPU; a TensorRT .engine; an "
        "AOTInductor .pt2 package on the device it was compiled for) on photos and random input and compare with the "
        "PyTorch model it was exported from: max |delta logit|, max |delta|/std, sigmoid MAE, mask "
        "IoU, per image. Exit code 1 when a tolerance for the graph's precision is exceeded.",
    )
    parser.add_argument("artifact", help="the .onnx graph, .engine or .pt2 package (its metadata names variant, "
                        "size, precision)")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="the checkpoint it was exported from (leave out for seeded weights)")
    parser.add_argument("--images", metavar="DIR", help="images to compare on (default: scikit-image samples)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.export import verify

    report = verify(args.artifact, args.checkpoint, args.images)
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.passed else 1
