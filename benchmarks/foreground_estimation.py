#!/usr/bin/env python3
"""Foreground colour estimation for cut-outs: which estimator removes the halo, and at what cost.

Composites with a known answer are built from scikit-image's photos: the foreground F is one
photo, the background B another, and alpha a soft silhouette (scikit-image's horse, scaled to
the frame) whose edge is 2 to 40 px wide and broken up by fine noise, so the soft region is
large and irregular, like hair and motion blur. I = alpha F + (1 - alpha) B. Each estimator
(:data:`mgd_rt.runtime.compose.ESTIMATORS`) sees only I and alpha and returns F'. Reported, in the
soft region 0 < alpha < 1 (8-bit levels, RGB mean):

- F error: mean |F' - F|;
- halo: mean |alpha (F' - F)|, the error a cut-out shows once composited onto a new background;
- seconds for one 4000x3000 photo (best of ``--repeats``; pymatting's JIT compile excluded).

    python3 benchmarks/foreground_estimation.py            # needs scikit-image (the demo extra)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # an uninstalled checkout runs too

from mgd_rt.runtime.compose import ESTIMATORS  # noqa: E402

PAIRS = (("astronaut", "coffee"), ("chelsea", "rocket"), ("coffee", "astronaut"), ("rocket", "chelsea"))


def soft_alpha(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width) float32 alpha: the horse silhouette with a 2-40 px soft, noisy edge."""
    from skimage import data

    horse = (~data.horse()).astype(np.uint8)  # the horse is dark on white in the file
    mask = cv2.resize(horse, (width, height), interpolation=cv2.INTER_NEAREST)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    signed = inside - outside  # > 0 inside
    rng = np.random.default_rng(seed)
    scale = max(width, height) / 1000.0
    # edge width varies slowly along the outline: 2..40 px at 1000 px, scaled with the frame
    slow = cv2.resize(rng.random((8, 8)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    edge = (2.0 + 38.0 * np.clip(slow, 0, 1)) * scale
    fine = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 1.5 * scale)
    alpha = 0.5 + signed / edge + 0.6 * fine  # fine noise: strands rather than a clean ramp
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def composite_case(fg_name: str, bg_name: str, width: int, height: int, seed: int = 0):
    """(image uint8, alpha uint8, true F float32 0..255) at width x height."""
    from skimage import data

    def photo(name: str) -> np.ndarray:
        return cv2.resize(getattr(data, name)(), (width, height), interpolation=cv2.INTER_CUBIC)

    fg, bg = photo(fg_name).astype(np.float32), photo(bg_name).astype(np.float32)
    alpha8 = np.rint(soft_alpha(width, height, seed) * 255).astype(np.uint8)
    a = alpha8.astype(np.float32)[:, :, None] / 255.0  # the alpha the estimator sees, exactly
    image = np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
    return image, alpha8, fg


def errors(estimate: np.ndarray, alpha8: np.ndarray, fg: np.ndarray) -> tuple[float, float]:
    soft = (alpha8 > 0) & (alpha8 < 255)
    diff = np.abs(estimate.astype(np.float32) - fg)[soft]  # (n, 3)
    a = alpha8[soft].astype(np.float32)[:, None] / 255.0
    return float(diff.mean()), float((a * diff).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1000x750", help="accuracy cases, WxH (default: 1000x750)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs at 4000x3000 (default: 2)")
    parser.add_argument("--methods", default=",".join(ESTIMATORS), help="comma list (default: all)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    methods = args.methods.split(",")
    cases = [composite_case(f, b, width, height, seed) for seed, (f, b) in enumerate(PAIRS)]
    big_image, big_alpha, _ = composite_case(*PAIRS[0], 4000, 3000)
    rows = []
    for name in methods:
        estimator = ESTIMATORS[name]
        estimator(cases[0][0][:64, :64], cases[0][1][:64, :64])  # warm-up: numba compiles pymatting here
        errs = [errors(estimator(image, alpha), alpha, fg) for image, alpha, fg in cases]
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            estimator(big_image, big_alpha)
            times.append(time.perf_counter() - t0)
        rows.append((name, np.mean([e[0] for e in errs]), np.mean([e[1] for e in errs]), min(times)))
        print(f"{name}: done", file=sys.stderr)
    soft = np.mean([((a > 0) & (a < 255)).mean() for _, a, _ in cases])
    print(f"{len(cases)} composites at {width}x{height} (soft region {100 * soft:.0f}% of the pixels); "
          f"time at 4000x3000, best of {args.repeats}\n")
    print("| estimator | F error (0<a<1) | halo a·|F'-F| | s at 4000x3000 |")
    print("|---|---:|---:|---:|")
    for name, f_err, halo, seconds in rows:
        print(f"| {name} | {f_err:.1f} | {halo:.2f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
