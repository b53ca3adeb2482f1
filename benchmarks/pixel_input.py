#!/usr/bin/env python3
"""What the pixel input (mgd-rt export --uint8-input) saves, end to end: file in, matte out.

Exports the same weights twice at one size (float32 input; uint8 pixel input), then runs both
through the runtime over the same photos, interleaved, and reports per image: the host's
pre-processing (resize, plus normalisation for the float graph), the model call (on a GPU, the
host-to-device copy of the request included), the whole file-to-matte time, and the bytes one
request carries. Also checks the two mattes agree.

    python3 benchmarks/pixel_input.py                          # tiny, S=512, 12 photos, 3 rounds, ONNX graphs
    python3 benchmarks/pixel_input.py --variant b+ --image-size 1024 --rounds 1
    python3 benchmarks/pixel_input.py --format pt2 --device cuda --dtype fp16   # .pt2 packages on a GPU

Writes benchmarks/results/pixel_input-<format>-<variant>-<S>-<machine>.json. Ratios only hold within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # an uninstalled checkout runs too

from mgd_rt.machine import cpu_info, environment, load_average, machine_tag, slug  # noqa: E402


def _time_paths(segmenter, paths: list[Path]) -> dict[str, float]:
    """Median seconds per image of each stage, and of file -> matte in all."""
    stages: dict[str, list[float]] = {"decode": [], "resize": [], "model": [], "matte": [], "total": []}
    for path in paths:
        t0 = time.perf_counter()
        (result,) = segmenter.stream([path])
        t1 = time.perf_counter()
        result.matte()
        t2 = time.perf_counter()
        for key in ("decode", "resize", "model"):
            stages[key].append(result.seconds[key])
        stages["matte"].append(t2 - t1)
        stages["total"].append(t2 - t0)
    return {key: statistics.median(values) for key, values in stages.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="weights (default: the tiny fixture for tiny, else seeded)")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--photos", type=int, default=12, help="scikit-image photos to run (default: 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per graph (default: 3)")
    parser.add_argument("--format", choices=("onnx", "pt2"), default="onnx",
                        help="artifacts to compare: ONNX graphs (ONNX Runtime) or AOTInductor .pt2 packages")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for .pt2 packages (default: cpu)")
    parser.add_argument("--dtype", default="fp32", help=".pt2 precision: fp32, bf16, fp16 on CUDA (default: fp32)")
    parser.add_argument("--output", type=Path, help="JSON to write (default: benchmarks/results/...)")
    args = parser.parse_args()
    if args.format == "onnx" and (args.device != "cpu" or args.dtype != "fp32"):
        parser.error("--device and --dtype apply to --format pt2 (the ONNX graphs run in FP32 on ONNX Runtime's CPU)")

    from PIL import Image

    from mgd_rt.export import export_onnx
    from mgd_rt.export.aoti import export_aoti
    from mgd_rt.runtime.samples import CALIBRATION_PHOTOS, sample_photos
    from mgd_rt.runtime.segmenter import Segmenter

    checkpoint = args.checkpoint
    fixture = HERE.parent / "tests" / "fixtures" / "official_tiny_state_dict.pth"
    if checkpoint is None and args.variant == "tiny" and fixture.is_file():
        checkpoint = str(fixture)
    cpu = cpu_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graphs = {}
        variant = args.variant if checkpoint is None else None
        for name, pixels in (("float32", False), ("uint8", True)):
            if args.format == "pt2":
                graphs[name] = export_aoti(checkpoint, variant, args.image_size, output=work / f"{name}.pt2",
                                           device=args.device, dtype=args.dtype, pixel_input=pixels,
                                           verify_package=False).path
            else:
                graphs[name] = export_onnx(checkpoint, variant, args.image_size, output=work / f"{name}.onnx",
                                           pixel_input=pixels, verify_graph=False).path
        photos = sample_photos(CALIBRATION_PHOTOS)[: args.photos]
        paths = []
        for name, rgb in photos:
            paths.append(work / f"{name}.png")
            Image.fromarray(rgb).save(paths[-1])
        seg = {name: Segmenter(path, device=args.device if args.format == "pt2" else None)
               for name, path in graphs.items()}
        for s in seg.values():
            _time_paths(s, paths[:1])  # warm-up: the first run allocates and packs weights
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in seg}
        for _ in range(args.rounds):
            for name, s in seg.items():
                rounds[name].append(_time_paths(s, paths))
        mattes = {name: [r.matte() for r in s.stream(paths)] for name, s in seg.items()}
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max())
                   for a, b in zip(mattes["float32"], mattes["uint8"], strict=True))
        for s in seg.values():
            s.close()
    s_ = args.image_size
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in rounds.items()}
    record = {
        "what": "pixel input vs float32 input, file -> matte, median seconds per image",
        "variant": args.variant, "image_size": s_, "photos": len(paths), "rounds": args.rounds,
        "request_bytes": {"float32": 3 * s_ * s_ * 4, "uint8": 3 * s_ * s_},
        "seconds": summary, "rounds_raw": rounds,
        "max_matte_difference_levels": diff,
        "format": args.format, "device": args.device, "dtype": args.dtype,
        "cpu": cpu, "environment": environment(args.device), "load_average": load_average(),
    }
    out = args.output or HERE / "results" / (f"pixel_input-{args.format}-{slug(args.variant)}-{s_}-"
                                             f"{machine_tag(args.device)}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    flags = ", ".join(cpu.get("flags", []))
    print(f"{args.variant} S={s_}, {len(paths)} photos x {args.rounds} rounds, {args.format} on {args.device} "
          f"({args.dtype if args.format == 'pt2' else 'fp32'}), {cpu['model']} ({flags})")
    print(f"{'input':<8} {'decode':>8} {'resize+norm':>12} {'model':>8} {'matte':>8} {'total':>8}  request")
    for name, row in summary.items():
        print(f"{name:<8} {row['decode'] * 1e3:7.1f}ms {row['resize'] * 1e3:10.1f}ms {row['model'] * 1e3:7.1f}ms "
              f"{row['matte'] * 1e3:7.1f}ms {row['total'] * 1e3:7.1f}ms  {record['request_bytes'][name] / 1e6:.2f} MB")
    print(f"mattes differ by at most {diff} level(s) of 255; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
