"""``mgd-rt build``: ONNX graph -> TensorRT / TensorRT-RTX engine + JSON sidecar.

``python export/build_trt.py`` builds its parser with ``add_build_arguments`` and calls ``run``,
so both take identical flags; flags mean what trtexec users expect. ``--int8 --calib-images DIR``
calibrates on the fly with ``mgd-rt calibrate``'s calibration flags (-n, --method, ...), shared
through ``add_calibration_options``.
"""

from __future__ import annotations

import argparse
import json

from mgd_rt.cli.options import add_calibration_options, calibration_defaults, calibration_options
from mgd_rt.errors import MgdRtError

DESCRIPTION = (
    "Build a TensorRT (or TensorRT-RTX) engine from an mgd-rt ONNX graph: image float32 (B, 3, S, S) -> "
    "mask_logits float32 (B, 1, S, S), B in the --batch profile, S from the graph's metadata. Writes "
    "<name>.<precision>.engine and its JSON sidecar (<engine>.json). Precision is decided in the graph: "
    "--fp16 on an FP32 graph converts it to FP16 first; --int8 needs a Q/DQ graph or --calib-images."
)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="the graph: model.onnx (FP32), model.fp16.onnx or a Q/DQ model.int8.onnx")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="FP16 engine (from the FP16 graph, made on the fly from an FP32 one)")
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8",
                           help="INT8 engine from a Q/DQ graph (or calibrate one with --calib-images)")
    add_calibration_options(parser, images_flag="--calib-images",
                            images_help="with --int8 on an FP32 graph: calibrate on these", placement=False)
    parser.add_argument("--batch", metavar="MIN:OPT:MAX",
                        help="optimisation profile for the batch (default: 1:1:4; a fixed-batch graph: its batch)")
    parser.add_argument("--workspace", type=float, metavar="GiB", help="builder workspace limit (default: the GPU's)")
    parser.add_argument("--timing-cache", metavar="FILE", help="read and update this timing cache")
    parser.add_argument("--opt-level", type=int, metavar="0-5", help="builder optimization level (TensorRT default 3)")
    parser.add_argument("--rtx", action="store_true", help="use TensorRT-RTX (default: tensorrt if installed)")
    parser.add_argument("--target", metavar="sm86,sm89,sm120",
                        help="TensorRT-RTX: build ahead of time for these compute capabilities (no GPU needed)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine runs on later TensorRT versions (TensorRT's version-compatible build)")
    parser.add_argument("--hardware-compatibility", choices=["none", "ampere+", "same-cc"], default=None,
                        help="engine runs on other GPUs: ampere+ (any SM >= 8.0) or same-cc")
    parser.add_argument("-o", "--output", help="engine to write (default: <graph>.<precision>.engine beside it)")
    parser.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build", help="build a TensorRT / TensorRT-RTX engine from an ONNX graph",
                                   description=DESCRIPTION)
    add_build_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.engine import build_engine

    options = calibration_options(args, placement=False)
    defaults = calibration_defaults()
    if args.calib_images is None and any(options[k] != defaults[k] for k in options):
        # without --calib-images nothing is calibrated: a calibration flag would be silently ignored
        raise MgdRtError("-n, --method, --exclude, --no-default-exclusions, --seed and --no-cache "
                         "only apply with --int8 --calib-images DIR")
    result = build_engine(
        args.onnx,
        precision=args.precision,
        output=args.output,
        batch=args.batch,
        calib_images=args.calib_images,
        workspace=args.workspace,
        timing_cache=args.timing_cache,
        opt_level=args.opt_level,
        library="tensorrt_rtx" if args.rtx else "auto",
        targets=args.target,
        version_compatible=args.version_compatible,
        hardware_compatibility=args.hardware_compatibility,
        calibration_options=options,
    )
    print(json.dumps(result.sidecar, indent=2) if args.json else "\n".join(result.lines()))
    return 0
