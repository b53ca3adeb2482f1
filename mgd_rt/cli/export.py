"""``mgd-rt export``: PyTorch model -> model.onnx (FP32) [+ model.fp16.onnx], verified.

``python export/to_onnx.py`` builds its parser with ``add_export_arguments`` and calls ``run``,
so both take identical flags.
"""

from __future__ import annotations

import argparse
import json

from mgd_rt.artifacts import PACKAGE_PRECISIONS
from mgd_rt.cli.options import add_model_options
from mgd_rt.errors import MgdRtError

DESCRIPTION = (
    "Export MGD-SAM2 to ONNX: image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S), "
    "simplified, checked, with metadata; --fp16 also writes <name>.fp16.onnx. Verified against "
    "the PyTorch model with ONNX Runtime unless --no-verify. With --aoti: an AOTInductor package "
    "(torch.export + AOTInductor) model.pt2 for one device, precision and batch range instead, verified "
    "by running it."
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


def parse_sizes(value: str) -> list[int]:
    """'1024' -> [1024]; '768,1024,1280' -> [768, 1024, 1280] (one graph per size)."""
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use S or a comma list such as 768,1024,1280") from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"{value!r}: use S or a comma list such as 768,1024,1280")
    return sizes


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    # export alone takes a size list (one graph per size, for --tta paper): widen the shared flag
    size_flag = add_model_options(parser)
    size_flag.type, size_flag.metavar = parse_sizes, "S[,S...]"
    size_flag.help += "; a list (e.g. 768,1024,1280) writes <name>.s<S>.onnx per size, for --tta paper"
    parser.add_argument("--paper-codes", action="store_true",
                        help="with a size list: MCEM position codes from the smallest size's grid in every graph "
                        "(the authors' TTA quirk, needed to reproduce the paper's --tta paper numbers)")
    parser.add_argument("-o", "--output", default=None,
                        help="FP32 graph to write (default: model.onnx; with --aoti the package, model.pt2)")
    parser.add_argument("--fp16", action="store_true", help="also write the FP16 graph <name>.fp16.onnx")
    parser.add_argument("--batch", type=parse_batch, default=None, metavar="dynamic|N",
                        help="batch dimension: dynamic (default) or fixed N")
    parser.add_argument("--opset", type=int, default=None, metavar="17..23",
                        help="ONNX opset (default: 20, the graph TensorRT builds); 23 is the CPU graph: each "
                        "attention one ONNX Attention node (B+: 3-6%% faster on ONNX Runtime, 2-3%% on OpenVINO), "
                        "which TensorRT-RTX 1.7 builds only in FP16 or for a fixed batch; calibrate it with --target "
                        "cpu (above opset 20, --target tensorrt writes a graph ONNX Runtime 1.32's optimizer rejects)")
    parser.add_argument("--uint8-input", dest="pixel_input", action="store_true",
                        help="input uint8 (B, S, S, 3) RGB pixels, normalised inside the graph: clients send a "
                        "quarter of the bytes and do no float work (the runtime picks it up from the metadata)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the comparison with the PyTorch model (ONNX Runtime; a package runs itself)")
    parser.add_argument("--images", metavar="DIR", help="verify on these images (default: scikit-image samples)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    aoti = parser.add_argument_group("AOTInductor package (--aoti)")
    aoti.add_argument("--aoti", action="store_true",
                      help="write a .pt2 AOTInductor package (compiled kernels, weights and metadata; minutes to "
                      "compile) instead of an ONNX graph; it runs with the torch that compiled it, on that device "
                      "kind (and CPU instruction set or GPU)")
    aoti.add_argument("--device", default=None, help="compile for cpu, cuda or cuda:N (default: cpu)")
    aoti.add_argument("--dtype", choices=PACKAGE_PRECISIONS, default=None,
                      help="compute precision, by autocast with FP32 weights (default: fp32; fp16 needs cuda)")
    aoti.add_argument("--min-batch", type=int, default=None, metavar="N", help="smallest batch (default: 1)")
    aoti.add_argument("--max-batch", type=int, default=None, metavar="N",
                      help="largest batch (default: 256); --batch N compiles for exactly N")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the model to ONNX (FP32, optionally FP16) or, "
                                   "with --aoti, an AOTInductor .pt2 package",
                                   description=DESCRIPTION)
    add_export_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.aoti:
        return run_aoti(args)
    aoti_only = [flag for flag, value in (("--device", args.device), ("--dtype", args.dtype),
                                          ("--min-batch", args.min_batch), ("--max-batch", args.max_batch))
                 if value is not None]
    if aoti_only:
        raise MgdRtError(f"{', '.join(aoti_only)}: for --aoti packages; an ONNX graph runs on any device "
                         "(--fp16 for an FP16 graph, --batch for its batch)")
    from mgd_rt.export import export_onnx, export_onnx_sizes

    sizes = args.image_size or [None]
    common = dict(checkpoint=args.checkpoint, variant=args.variant, output=args.output or "model.onnx",
                  fp16=args.fp16, batch=args.batch, opset=args.opset, verify_graph=args.verify, images=args.images,
                  pixel_input=args.pixel_input)
    if len(sizes) > 1 or args.paper_codes:
        if sizes == [None]:
            raise MgdRtError("--paper-codes needs the list of TTA sizes, e.g. --image-size 768,1024,1280")
        results = export_onnx_sizes(sizes, paper_codes=args.paper_codes, **common)
    else:
        results = [export_onnx(image_size=sizes[0], **common)]
    for result in results:
        _report(args, result)
    if not all(r.passed for r in results):
        raise MgdRtError("verification failed: a comparison exceeds its tolerance (table above)")
    return 0


def run_aoti(args: argparse.Namespace) -> int:
    """``mgd-rt export --aoti``: mgd_rt.export.aoti.export_aoti with the flags given (its defaults otherwise)."""
    onnx_only = [flag for flag, given in (("--fp16", args.fp16), ("--opset", args.opset is not None),
                                          ("--paper-codes", args.paper_codes),
                                          ("a list of sizes", len(args.image_size or []) > 1)) if given]
    if onnx_only:
        raise MgdRtError(f"{', '.join(onnx_only)}: for ONNX graphs, not --aoti packages (--dtype chooses a "
                         "package's precision)")
    if args.batch is not None and (args.min_batch is not None or args.max_batch is not None):
        raise MgdRtError(f"--batch {args.batch} fixes the batch; leave out --min-batch/--max-batch, or --batch")
    from mgd_rt.export.aoti import export_aoti

    options = {"device": args.device, "dtype": args.dtype, "min_batch": args.min_batch, "max_batch": args.max_batch,
               "pixel_input": args.pixel_input or None}
    if args.batch is not None:
        options["min_batch"] = options["max_batch"] = args.batch
    result = export_aoti(checkpoint=args.checkpoint, variant=args.variant,
                         image_size=args.image_size[0] if args.image_size else None,
                         output=args.output or "model.pt2", verify_package=args.verify, images=args.images,
                         **{k: v for k, v in options.items() if v is not None})
    if args.json:
        print(json.dumps({"path": str(result.path), "file_bytes": result.file_bytes, "metadata": result.metadata,
                          "timings": result.timings,
                          "verification": [v.as_dict() for v in result.verification]}, indent=2))
    else:
        print("\n".join(result.lines()))
    if not result.passed:
        raise MgdRtError("verification failed: a comparison exceeds its tolerance (table above)")
    return 0


def _report(args: argparse.Namespace, result) -> None:
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
