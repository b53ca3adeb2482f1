"""``mgd-rt export``: PyTorch model -> model.onnx (FP32) [+ model.fp16.onnx], verified.

``python export/to_onnx.py`` builds its parser with ``add_export_arguments`` and calls ``run``,
so both take identical flags.
"""

from __future__ import annotations

import argparse
import json

from mgd_rt.cli.options import add_model_options
from mgd_rt.errors import MgdRtError

DESCRIPTION = (
    "Export MGD-SAM2 to ONNX: image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S), "
    "simplified, checked, with metadata; --fp16 also writes <name>.fp16.onnx. Verified against "
    "the PyTorch model with ONNX Runtime unless --no-verify."
)


def parse_batch(value: str) -> int | None:
    """'dynamic' -> None, 'N' -> N (N >= 1)."""
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use 'dynamic' or a positive integer") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: use 'dynamic' or a positive integer")
    return batch


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("-o", "--output", default="model.onnx", help="FP32 graph to write (default: model.onnx)")
    parser.add_argument("--fp16", action="store_true", help="also write the FP16 graph <name>.fp16.onnx")
    parser.add_argument("--batch", type=parse_batch, default=None, metavar="dynamic|N",
                        help="batch dimension: dynamic (default) or fixed N")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the ONNX Runtime comparison with the PyTorch model")
    parser.add_argument("--images", metavar="DIR", help="verify on these images (default: scikit-image samples)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the model to ONNX (FP32, optionally FP16)",
                                   description=DESCRIPTION)
    add_export_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mgd_rt.export import export_onnx

    result = export_onnx(
        checkpoint=args.checkpoint,
        variant=args.variant,
        image_size=args.image_size,
        output=args.output,
        fp16=args.fp16,
        batch=args.batch,
        opset=args.opset,
        verify_graph=args.verify,
        images=args.images,
    )
    if args.json:
        summary = {
            "path": str(result.path),
            "fp16_path": str(result.fp16_path) if result.fp16_path else None,
            "nodes": result.nodes_final,
            "file_bytes": result.file_bytes,
            "timings": result.timings,
            "verification": [v.as_dict() for v in result.verification],
        }
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(result.lines()))
    if not result.passed:
        raise MgdRtError("verification failed: a comparison exceeds its tolerance (table above)")
    return 0
