"""``mgd-rt calibrate``: FP32 model.onnx + images -> model.int8.onnx (Q/DQ) and its accuracy report.

When the held-out check fails (or a ``--target-accuracy`` is not reached), the layers that cost
accuracy are put back in FP32 step by step (``mgd_rt.calibration.recovery``) unless ``--no-recover``.
``python calibration/calibrate.py`` builds its parser with ``add_calibrate_arguments`` and calls
``run``, so both take identical flags.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mgd_rt.calibration.check_backend import CHECK_BACKENDS
from mgd_rt.cli.options import add_calibration_options, calibration_options
from mgd_rt.errors import MgdRtError

DESCRIPTION = (
    "Quantize an FP32 graph from mgd-rt export to INT8 (explicit QuantizeLinear/DequantizeLinear, "
    "per-channel weights) with NVIDIA ModelOpt, calibrated on images pre-processed exactly as the "
    "runtime does; then compare INT8 with FP32 on held-out images where it will run (ONNX Runtime or "
    "OpenVINO, CPU). If an image "
    "is outside TOLERANCES['int8'] (or --target-accuracy), put the layers that cost accuracy back in "
    "FP32, most accuracy per compute first, until all pass or --recover-budget runs out. Prints the "
    "report (every step) and saves it as JSON. Exit code 0 only when the graph written passes."
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
    report.add_argument("--no-report", dest="make_report", action="store_false",
                        help="skip the report (and so the accuracy recovery)")
    report.add_argument("--backend", choices=CHECK_BACKENDS, default="onnxruntime",
                        help="where the check (and each recovery step) runs the INT8 graph: the backend that "
                        "will run it (default: onnxruntime; openvino: pip install 'mgd-rt[openvino]')")
    report.add_argument("--dtype", choices=["bf16"], default=None,
                        help="with --backend openvino: the layers left in float computed in bf16, the DRM in "
                        "fp32, as mgd-rt infer --backend openvino --dtype bf16 runs the INT8 graph "
                        "(CPUs with AVX-512 BF16 or AMX)")
    report.add_argument("--time", type=int, default=0, metavar="RUNS",
                        help="also time FP32 and INT8, and every recovery step (batch 1, best of RUNS)")
    recovery = parser.add_argument_group("accuracy recovery")
    recovery.add_argument("--no-recover", dest="recover", action="store_false",
                          help="on a failed check stop with exit code 1 instead of restoring layers to FP32")
    recovery.add_argument("--target-accuracy", type=float, metavar="IOU",
                          help="top-10%% IoU every held-out image must reach, >= TOLERANCES['int8']'s 0.97 "
                          "(sigmoid MAE bound unchanged); recovery runs until it is reached")
    recovery.add_argument("--recover-budget", metavar="steps=N,fp32=F,speedup=X",
                          help="at most N held-out checks (steps), at most the share F of the quantized "
                          "compute back in FP32, INT8 at least X times FP32's speed (needs --time) "
                          "(default: steps=10,fp32=0.5)")
    recovery.add_argument("--recover-group", type=int, default=12, metavar="N",
                          help="at most N consecutive quantized nodes per sweep group, put back in FP32 "
                          "together (default: 12; a node heavier than half an average group is one alone)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="INT8 calibration: FP32 .onnx + images -> Q/DQ .onnx",
                                   description=DESCRIPTION)
    add_calibrate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.calibration import accuracy_report, calibrate
    from mgd_rt.calibration.check_backend import CheckBackend
    from mgd_rt.calibration.quantize import refuse_unloadable_placement
    from mgd_rt.calibration.recovery import (
        RecoveryBudget,
        describe_image,
        recover_accuracy,
        target_tolerance,
        worst_image,
    )
    from mgd_rt.calibration.report import describe_tolerance

    start = time.perf_counter()
    # recovery flags are checked before the (long) calibration
    tolerance = target_tolerance(args.target_accuracy)
    budget = RecoveryBudget.parse(args.recover_budget) if args.recover_budget else RecoveryBudget()
    if not args.make_report and (args.target_accuracy is not None or args.recover_budget):
        raise MgdRtError("--target-accuracy and --recover-budget act on the held-out check: drop --no-report")
    if budget.speedup is not None and not args.time:
        raise MgdRtError(f"--recover-budget speedup={budget.speedup:g} needs timing: add --time RUNS (e.g. --time 3)")
    check_on = CheckBackend(args.backend, args.dtype)
    if args.make_report and check_on.backend == "onnxruntime":
        refuse_unloadable_placement(args.model, args.target)
    if args.recover_group < 1:
        raise MgdRtError(f"--recover-group {args.recover_group}: restore at least 1 node per step")
    path = calibrate(args.model, images=args.images, output=args.output, **calibration_options(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.make_report:
        print(f"done in {time.perf_counter() - start:.1f} s (no accuracy report)")
        return 0
    report = accuracy_report(args.model, path, images=args.holdout, num_images=args.holdout_n,
                             calibration_images=args.images, timing_runs=args.time, tolerance=tolerance,
                             check_on=check_on)
    report_path = args.report or Path(path).with_suffix(".report.json")
    if report.passed or not args.recover:
        data = {**report.as_dict(), "recovery": None}
        if report.passed:
            speed = f", {report.speedup:.2f}x FP32" if report.speedup else ""
            verdict = (f"PASS: {path} within {describe_tolerance(tolerance)} on all {len(report.images)} held-out "
                       f"images as calibrated (no layer restored){speed}")
        else:
            worst = worst_image(report.comparisons, tolerance)
            verdict = (f"FAIL: recovery is off (--no-recover); worst image {describe_image(worst)} (need "
                       f"{describe_tolerance(tolerance)}): rerun without --no-recover to put the layers that cost "
                       "accuracy back in FP32")
        printed = report.lines()
    else:
        print("\n".join(report.lines()))
        print(f"held-out check failed: restoring the layers that cost accuracy to FP32 (budget {budget}; "
              "--no-recover to skip)", flush=True)
        result = recover_accuracy(args.model, path, initial=report, budget=budget, group_size=args.recover_group,
                                  timing_runs=args.time, check_on=check_on)
        data = {**result.final.as_dict(), "initial": report.as_dict(), "recovery": result.as_dict()}
        # the verdict is printed last, with the report's path
        printed = result.lines()[:-1] + (result.final.lines() if result.written else [])
        verdict = result.verdict()
        report = result.final
    from mgd_rt.artifacts import write_json_atomic
    from mgd_rt.calibration.report import record_check

    record_check(path, report)  # the file at path is the one this report checked (recovery's, if it wrote one)
    saved = write_json_atomic(report_path, data)
    print(json.dumps(data, indent=2) if args.json else "\n".join(printed))
    print(f"{verdict}; report {saved}; {time.perf_counter() - start:.1f} s")
    return 0 if report.passed else 1
