"""``mgd-rt calibrate``: FP32 model.onnx + images -> model.int8.onnx (Q/DQ) and its accuracy report.

``python calibration/calibrate.py`` builds its parser with ``add_calibrate_arguments`` and calls
``run``, so both take identical flags.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mgd_rt.cli.options import add_calibration_options, calibration_options

DESCRIPTION = (
    "Quantize an FP32 graph from mgd-rt export to INT8 (explicit QuantizeLinear/DequantizeLinear, "
    "per-channel weights) with NVIDIA ModelOpt, calibrated on images pre-processed exactly as the "
    "runtime does; then compare INT8 with FP32 on held-out images (ONNX Runtime, CPU), print the "
    "report and save it as JSON. Exit code 1 when a held-out image exceeds TOLERANCES['int8']."
)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the FP32 .onnx graph mgd-rt export wrote")
    add_calibration_options(parser)
    parser.add_argument("-o", "--output", help="INT8 graph to write (default: <model>.int8.onnx)")
    report = parser.add_argument_group("accuracy report")
    report.add_argument("--holdout", metavar="DIR",
                        help="held-out images for the report (default: scikit-image photos never used "
                        "for calibration); files equal to a calibration image are left out")
    report.add_argument("--holdout-n", type=int, default=6, metavar="N", help="held-out images (default: 6)")
    report.add_argument("--report", metavar="JSON", help="report file (default: <output>.report.json)")
    report.add_argument("--no-report", dest="make_report", action="store_false", help="skip the report")
    report.add_argument("--time", type=int, default=0, metavar="RUNS",
                        help="also time FP32 and INT8 (batch 1, best of RUNS)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="INT8 calibration: FP32 .onnx + images -> Q/DQ .onnx",
                                   description=DESCRIPTION)
    add_calibrate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.calibration import accuracy_report, calibrate

    start = time.perf_counter()
    path = calibrate(args.model, images=args.images, output=args.output, **calibration_options(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.make_report:
        print(f"done in {time.perf_counter() - start:.1f} s (no accuracy report)")
        return 0
    report = accuracy_report(args.model, path, images=args.holdout, num_images=args.holdout_n,
                             calibration_images=args.images, timing_runs=args.time)
    saved = report.save(args.report or Path(path).with_suffix(".report.json"))
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.lines()))
    verdict = "PASS" if report.passed else "FAIL"
    print(f"{verdict}: calibrated and checked in {time.perf_counter() - start:.1f} s; report {saved}")
    return 0 if report.passed else 1
