"""Option groups several subcommands share, defined once."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(parser: argparse.ArgumentParser, checkpoint_flag: bool = True) -> argparse.Action:
    """--checkpoint, --variant, --image-size: what load_model takes.

    Returns the --image-size action, for a command that takes more than one size to widen
    (export: a comma list).
    """
    from mgd_rt.model.variants import VARIANTS, Variant  # the variant table: plain data, no torch

    group = parser.add_argument_group("model")
    if checkpoint_flag:
        group.add_argument(
            "--checkpoint", metavar="CKPT",
            help="MGD-SAM2 (or SAM2.1) checkpoint: .pth/.pt/.safetensors; "
            "without it, seeded UNTRAINED weights",
        )
    group.add_argument(
        "--variant", choices=list(VARIANTS),
        help="model size; detected from the checkpoint when left out (b+ without one)",
    )
    own_sizes = "".join(f", {name} {v.default_image_size}" for name, v in VARIANTS.items()
                        if v.default_image_size != Variant.default_image_size)
    return group.add_argument(
        "--image-size", type=int, metavar="S",
        help=f"side of the square model input, S/2 a multiple of 32 (default: {Variant.default_image_size}"
        f"{own_sizes})",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _compile_modes(text: str) -> list[str | None]:
    """bench's --compile: comma-separated modes, ``eager`` (None) for the uncompiled run beside them."""
    from mgd_rt.runtime.backends.torch_compile import COMPILE_MODES  # plain data, no torch

    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v != "eager" and v not in COMPILE_MODES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from eager, {', '.join(COMPILE_MODES)} (comma-separated)")
    return [None if v == "eager" else v for v in dict.fromkeys(values)]


def add_torch_options(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """The "PyTorch" group: --compile MODE (torch.compile with inductor) and --tf32, for checkpoints.

    ``several``: --compile takes a comma list, ``eager`` among the modes (bench runs each).
    """
    from mgd_rt.runtime.backends.torch_compile import COMPILE_MODES  # plain data, no torch

    group = parser.add_argument_group("PyTorch (checkpoints)")
    what = ("torch.compile modes to run each checkpoint in, comma-separated; eager is the uncompiled run (default: "
            "eager)" if several else "run the checkpoint through torch.compile in this mode (default: eager)")
    group.add_argument(
        "--compile", metavar="MODE[,MODE]" if several else "MODE", default=None,
        type=_compile_modes if several else None, choices=None if several else COMPILE_MODES,
        help=f"{what}: {', '.join(COMPILE_MODES)}; inductor, static shapes (a new batch size compiles again), "
        "kernels cached in $TORCHINDUCTOR_CACHE_DIR (default ~/.cache/mgd-rt/inductor); reduce-overhead and "
        "max-autotune capture CUDA graphs on CUDA (reduce-overhead is CUDA only)",
    )
    group.add_argument("--tf32", action="store_true",
                       help="CUDA: let FP32 matmuls and convolutions use TF32 tensor cores (default off: fp32 means "
                       "FP32)")


def calibration_defaults() -> dict[str, Any]:
    """mgd_rt.calibration.calibrate's own defaults, read from its signature (one place states them):
    shown in --help, and what ``build`` compares with to tell calibration flags given without
    --calib-images."""
    import inspect

    from mgd_rt.calibration.quantize import calibrate

    return {name: p.default for name, p in inspect.signature(calibrate).parameters.items()
            if p.default is not inspect.Parameter.empty}


def add_calibration_options(
    parser: argparse.ArgumentParser,
    images_flag: str = "--images",
    images_help: str = "calibration images (folder, searched recursively; any size or format); "
    "default: the photos scikit-image ships",
    placement: bool = True,
) -> None:
    """The "calibration" group: ``images_flag`` DIR and what mgd_rt.calibration.calibrate takes besides
    the graph and the output (read back with :func:`calibration_options`).

    ``placement`` False leaves out --target (Q/DQ placement tensorrt or cpu): an engine build needs
    the tensorrt placement, and ``build`` has its own --target (compute capabilities).
    """
    from mgd_rt.calibration.quantize import AUTO_TARGET, METHODS, TARGETS, TENSORRT_PLACEMENT_MAX_OPSET

    defaults = calibration_defaults()

    group = parser.add_argument_group("calibration")
    group.add_argument(images_flag, metavar="DIR", help=images_help)
    group.add_argument("-n", "--num-images", type=int, default=defaults["num_images"], metavar="N",
                       help=f"images to sample (seeded) from {images_flag} (default: 64)")
    group.add_argument("--method", choices=METHODS, default=defaults["method"],
                       help="activation range method (default: max, the most accurate on the seeded and "
                       "fixture weights; entropy and percentile clip outliers, which trained weights may have)")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="keep matching nodes in FP32: a regex on node names, or op:TYPE; repeatable "
                       "(added to the measured defaults)")
    group.add_argument("--no-default-exclusions", dest="default_exclusions", action="store_false",
                       help="quantize the layers the sensitivity sweep keeps in FP32 too")
    if placement:
        group.add_argument("--target", choices=(AUTO_TARGET, *TARGETS), default=defaults["target"],
                           help="Q/DQ placement: tensorrt (ModelOpt, for TensorRT) or cpu (ONNX Runtime's "
                           "quantizer, for its CPU integer kernels) (default: auto, tensorrt for graphs up to "
                           f"opset {TENSORRT_PLACEMENT_MAX_OPSET} and cpu for the CPU graph, --opset 23)")
    group.add_argument("--seed", type=int, default=defaults["seed"], help="sampling seed (default: 0)")
    group.add_argument("--no-cache", dest="cache", action="store_false",
                       help="prepare the images again instead of reading the cache")


def calibration_options(args: argparse.Namespace, placement: bool = True) -> dict[str, Any]:
    """The parsed calibration group as keyword arguments of mgd_rt.calibration.calibrate, the images
    and the output aside; ``placement`` as given to :func:`add_calibration_options`."""
    options: dict[str, Any] = {
        "num_images": args.num_images, "method": args.method, "exclude": tuple(args.exclude), "seed": args.seed,
        "default_exclusions": args.default_exclusions, "cache": args.cache,
    }
    if placement:
        options["target"] = args.target
    return options
