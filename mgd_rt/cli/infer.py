"""``mgd-rt infer``: segment images, folders and globs with a checkpoint or an .onnx graph."""

from __future__ import annotations

import argparse

from mgd_rt.cli.options import add_torch_options

# the runtime's tables (numpy, Pillow, OpenCV; no torch): choices are read, never copied
from mgd_rt.runtime.backends import BACKEND_CHOICES, DTYPES
from mgd_rt.runtime.compose import DEFAULT_ESTIMATOR, ESTIMATORS
from mgd_rt.runtime.outputs import FORMATS
from mgd_rt.runtime.tta import TTA_MODES
from mgd_rt.runtime.video import VIDEO_FORMATS

_CUTOUT_FORMATS = ("rgba", "background")  # the formats that show the foreground colour


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="segment images with a checkpoint (PyTorch) or an .onnx graph (ONNX Runtime)",
        description="Segment files, folders and globs; outputs mirror the input tree under OUTDIR. "
        "Exit code 1 if any file failed (each problem is one line naming the file).",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint (.pth/.pt/.safetensors), ONNX graph (.onnx), "
                        "engine (.engine) or a Triton model: grpc://HOST:PORT/NAME, http://HOST:PORT/NAME")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image or video files, folders or globs; - reads one image from stdin")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="output directory; - writes the single output image to stdout")
    videos = ", ".join(f"{name} {spec.codec} {spec.suffix}" for name, spec in VIDEO_FORMATS.items())
    parser.add_argument("--format", choices=list(FORMATS), default=None,
                        help="matte: 8-bit probability PNG (default); binary: 0/255 PNG at --threshold; "
                        "rgba: cut-out PNG; overlay: JPEG to judge at a glance; background: JPEG composite "
                        f"onto --background (default when --background is given). Videos: {videos} "
                        "(rgba: ProRes 4444 with alpha; audio copied into overlay and background)")
    cut = parser.add_argument_group("cut-outs and composites")
    cut.add_argument("--foreground", choices=list(ESTIMATORS), default=DEFAULT_ESTIMATOR,
                     help="colour under soft edges for rgba and background: blur-fusion (default, fast), "
                     "multilevel (pymatting, the matting extra; lower error, 2x slower), raw (the photo's colour, "
                     "with the old background's halo)")
    cut.add_argument("--background", metavar="COLOR|blur|IMAGE", default=None,
                     help="composite onto a colour (name or #rrggbb), a blurred copy of the photo, or an image "
                     "(resized to cover); implies --format background")
    cut.add_argument("--invert", action="store_true", help="keep the background instead of the object")
    video = parser.add_argument_group("video")
    video.add_argument("--frames", action="store_true", help="write each clip as a folder of per-frame images")
    video.add_argument("--start", type=float, default=0.0, metavar="SECONDS", help="first time to segment")
    video.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="length to segment")
    video.add_argument("--keep-partial", action="store_true",
                       help="keep a broken clip's output as NAME.partial.EXT (default: removed)")
    watching = parser.add_argument_group("watch")
    watching.add_argument("--watch", action="store_true",
                          help="keep running on the input folders, segmenting files once complete (size stable "
                          "over one poll), until Ctrl-C; a bad file is reported once")
    watching.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                          help="--watch: seconds between folder scans (default: 1)")
    parser.add_argument("--threshold", type=float, default=0.5, help="for binary and overlay (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default: 1)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: CUDA when usable, else cpu; the choice is printed)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="default: picked by the model file's suffix; tensorrt on an .onnx builds its engine "
                        "once (engine cache, $MGD_RT_ENGINE_CACHE)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="torch: autocast precision (default fp32); a graph, engine or served model runs in "
                        "its own precision, which --dtype must match")
    add_torch_options(parser)
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders (and ** in globs)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    parser.add_argument("--tile", action="store_true",
                        help="add high-resolution detail from overlapping S x S windows, guided by the whole image")
    parser.add_argument("--tile-scale", type=float, default=None, metavar="X",
                        help="resize factor before cutting windows (default: native resolution, long side capped "
                        "at 4 x S)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: flip (original + mirror, 2 passes) or paper (the authors' "
                        "flip x scales 0.75/1/1.25, 6 passes; a graph needs <name>.s<size>.onnx per scale)")
    ray = parser.add_argument_group("Ray Data (mgd_rt.ray.segment_dataset)")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run as a Ray Data job: alone, on a local cluster started for it; with ADDRESS (auto, "
                     "ray://HOST:10001), on that cluster (inputs and outputs on a filesystem every node mounts)")
    ray.add_argument("--ray-actors", type=int, default=None, metavar="N",
                     help="inference actors, one loaded model each (default: one per GPU, else 2)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=None, metavar="X",
                     help="CPUs each actor reserves (default: 0.5; a whole CPU per actor starves decoding on "
                     "small machines)")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=None, metavar="X",
                     help="GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0)")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from mgd_rt.runtime.compose import Cutout
    from mgd_rt.runtime.infer import STDIO, infer

    # usage errors exit 2 through argparse, file problems exit 1 through the summary
    if args.format is None:
        args.format = "background" if args.background is not None else "matte"
    elif args.background is not None and args.format != "background":
        args.parser.error(f"--background composites: use it with --format background, not {args.format}")
    if args.foreground != DEFAULT_ESTIMATOR and args.format not in _CUTOUT_FORMATS:
        args.parser.error(f"--foreground applies to --format {' or '.join(_CUTOUT_FORMATS)}")
    if args.start < 0 or (args.duration is not None and args.duration <= 0):
        args.parser.error("--start must be >= 0 and --duration > 0")
    if args.inputs.count(STDIO) > 1:
        args.parser.error("- (stdin) can be given once")
    if args.watch and (args.ray is not None or STDIO in (args.output, *args.inputs)):
        args.parser.error("--watch reads folders and writes files: leave out --ray and -")
    if args.poll <= 0 or (args.poll != 1.0 and not args.watch):
        args.parser.error("--poll needs --watch and a positive number of seconds")
    if args.tile_scale is not None and (not args.tile or args.tile_scale <= 0):
        args.parser.error("--tile-scale needs --tile and a positive factor")
    if args.batch_size < 1:
        args.parser.error("--batch-size must be at least 1")
    if not 0.0 < args.threshold < 1.0:
        args.parser.error("--threshold must lie strictly between 0 and 1")
    if args.ray is not None:
        if (args.tile or args.tta != "none" or args.background or args.invert or args.foreground != DEFAULT_ESTIMATOR
                or STDIO in (args.output, *args.inputs)):
            args.parser.error("--ray runs the whole-image pass on image files only; leave out --tile, --tta, "
                              "--foreground, --background, --invert and -")
        if args.compile is not None or args.tf32:
            args.parser.error("--ray: each actor loads the model itself; leave out --compile and --tf32")
        from mgd_rt.serve.ray_data import DEFAULT_CPUS_PER_ACTOR, segment_dataset

        summary = segment_dataset(
            args.model, args.inputs, args.output, format=args.format, threshold=args.threshold,
            batch_size=args.batch_size, address=None if args.ray == "local" else args.ray, actors=args.ray_actors,
            cpus_per_actor=args.ray_cpus_per_actor or DEFAULT_CPUS_PER_ACTOR, gpus_per_actor=args.ray_gpus_per_actor,
            device=args.device, backend=args.backend, dtype=args.dtype, recursive=args.recursive,
            overwrite=args.overwrite,
        )
        print(summary.line())
        return 1 if summary.failed else 0
    cutout = Cutout(args.foreground, args.background, args.invert)
    if args.watch:
        from mgd_rt.runtime.infer import Outputs
        from mgd_rt.runtime.segmenter import Segmenter
        from mgd_rt.runtime.watch import watch

        with Segmenter(args.model, device=args.device, backend=args.backend, dtype=args.dtype,
                       batch_size=args.batch_size, tile=args.tile, tile_scale=args.tile_scale, tta=args.tta,
                       compile=args.compile, tf32=args.tf32) as seg:
            summary = watch(seg, args.inputs, args.output, Outputs(
                args.format, args.threshold, cutout, args.frames, args.start, args.duration, args.keep_partial),
                recursive=args.recursive, overwrite=args.overwrite, poll=args.poll)
        print(summary.line())
        return 1 if summary.failed else 0
    summary = infer(
        args.model, args.inputs, args.output, format=args.format, threshold=args.threshold,
        batch_size=args.batch_size, device=args.device, backend=args.backend, recursive=args.recursive,
        overwrite=args.overwrite, dtype=args.dtype, tile=args.tile, tile_scale=args.tile_scale,
        tta=args.tta, cutout=cutout, frames=args.frames,
        start=args.start, duration=args.duration, keep_partial=args.keep_partial, compile=args.compile,
        tf32=args.tf32,
    )
    # with -o - stdout carries the image, so the summary goes to stderr
    print(summary.line(), file=sys.stderr if args.output == STDIO else sys.stdout)
    return 1 if summary.failed else 0
