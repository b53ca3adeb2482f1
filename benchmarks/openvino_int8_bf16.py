#!/usr/bin/env python3
"""Would OpenVINO's bf16 on an INT8 graph's float parts reach issue 14's 3x? Speed and held-out accuracy.

The runtime runs an INT8 Q/DQ graph on OpenVINO with its float parts in f32 and offers bf16 for FP32 graphs only
(the DRM kept in f32 by cutting the graph, mgd_rt.runtime.backends.openvino_backend.split_at). This measures the
combination the backend does not offer, per weight set: the FP32 graph in f32 (the reference), the INT8 graph in
f32, the INT8 graph in bf16 whole, and the INT8 graph in bf16 cut at the FP32 graph's drm_inputs (the DRM in f32);
each on scikit-image's six held-out photos against the reference (TOLERANCES["int8"]) and timed at batch 1.

    python3 benchmarks/openvino_int8_bf16.py benchmarks/work/mgd_sam2_b_1024_untrained.opset23.onnx ...

Each FP32 graph needs its INT8 graph beside it (<name>.int8.onnx, e.g. from run_matrix.py). Writes
benchmarks/results/openvino_int8_bf16-<cpu>.json (or -o FILE). Ratios only hold within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # an uninstalled checkout runs too

from mgd_rt.artifacts import DRM_INPUTS_KEY  # noqa: E402
from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from mgd_rt.machine import cpu_info, environment, load_average  # noqa: E402
from mgd_rt.numerics import compare_logits  # noqa: E402
from mgd_rt.runtime.backends.openvino_backend import split_at  # noqa: E402
from mgd_rt.runtime.samples import HOLDOUT_PHOTOS, network_inputs, sample_photos  # noqa: E402

Infer = Callable[[np.ndarray], np.ndarray]


def _compiled(core, graph, precision: str, threads: int):
    return core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                                             "PERFORMANCE_HINT": "LATENCY"})


def _whole(core, path: Path, precision: str, threads: int) -> Infer:
    request = _compiled(core, core.read_model(str(path)), precision, threads).create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        request.infer({INPUT_NAME: x})
        return np.array(request.get_tensor(OUTPUT_NAME).data, copy=True)
    return infer


def _cut(core, path: Path, cut: list[str], threads: int) -> Infer:
    """bf16 up to the tensors ``cut``, f32 from there (the backend's bf16 on an FP32 graph, here on INT8)."""
    head, tail = split_at(core.read_model(str(path)), cut)
    first = _compiled(core, head, "bf16", threads).create_infer_request()
    second = _compiled(core, tail, "f32", threads).create_infer_request()
    reads_image = any(INPUT_NAME in p.output(0).get_names() for p in tail.get_parameters())

    def infer(x: np.ndarray) -> np.ndarray:
        first.infer({INPUT_NAME: x})
        feeds = {name: first.get_tensor(name) for name in cut}
        if reads_image:
            feeds[INPUT_NAME] = x
        second.infer(feeds)
        return np.array(second.get_tensor(OUTPUT_NAME).data, copy=True)
    return infer


def _measure(infer: Infer, inputs: list[tuple[str, np.ndarray]], runs: int) -> tuple[list[np.ndarray], float]:
    """(logits per photo, median seconds of ``runs`` timed calls on the fourth photo after those)."""
    outputs = [infer(x) for _, x in inputs]
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        infer(inputs[3][1])
        seconds.append(time.perf_counter() - t0)
    return outputs, statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    import onnx
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("graphs", nargs="+", type=Path, help="FP32 graphs, each with <name>.int8.onnx beside it")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per row (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="results file (default: benchmarks/results/openvino_int8_bf16-<cpu>.json)")
    args = parser.parse_args(argv)

    core = ov.Core()
    rows = []
    for fp32 in args.graphs:
        int8 = fp32.with_name(fp32.stem + ".int8.onnx")
        props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
        size, cut = int(props["image_size"]), props[DRM_INPUTS_KEY].split(",")
        inputs = network_inputs(sample_photos(HOLDOUT_PHOTOS), size)
        reference, fp32_s = _measure(_whole(core, fp32, "f32", args.threads), inputs, args.runs)
        for name, infer in (("int8, float parts f32", _whole(core, int8, "f32", args.threads)),
                            ("int8, float parts bf16", _whole(core, int8, "bf16", args.threads)),
                            ("int8, float parts bf16, the DRM f32", _cut(core, int8, cut, args.threads))):
            outputs, seconds = _measure(infer, inputs, args.runs)
            checks = [compare_logits(r, o, "int8", photo) for (photo, _), r, o in
                      zip(inputs, reference, outputs, strict=True)]
            row = {"graph": int8.name, "row": name, "seconds": round(seconds, 3),
                   "x_openvino_fp32": round(fp32_s / seconds, 2), "openvino_fp32_seconds": round(fp32_s, 3),
                   "worst_iou_top10": round(min(c.iou_top10 for c in checks), 4),
                   "worst_max_rel_std": float(f"{max(c.max_rel_std for c in checks):.3g}"),
                   "failing": [c.name for c in checks if not c]}
            rows.append(row)
            print(f"{int8.name:<48} {name:<36} {seconds:6.3f} s  x{row['x_openvino_fp32']:.2f} OpenVINO fp32  "
                  f"worst IoU top10% {row['worst_iou_top10']:.4f}  failing: {', '.join(row['failing']) or 'none'}",
                  flush=True)
    cpu = cpu_info()
    out = args.output or HERE / "results" / f"openvino_int8_bf16-{cpu['model'].lower().replace(' ', '-')}.json"
    out.write_text(json.dumps({"environment": environment("cpu"), "load_average_at_end": load_average(),
                               "tolerance": "int8", "photos": list(HOLDOUT_PHOTOS), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
