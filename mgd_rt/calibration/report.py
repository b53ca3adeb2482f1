"""INT8 vs FP32 on held-out images: the measures of mgd_rt.numerics, ONNX Runtime on the CPU, and the speed."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import write_json_atomic
from mgd_rt.calibration import data as calib_data
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import TOLERANCES, Comparison, compare_logits
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session
from mgd_rt.runtime.samples import HOLDOUT_PHOTOS

log = logging.getLogger("mgd_rt")


@dataclass
class AccuracyReport:
    """INT8 against FP32 per held-out image (ORT CPU); truthy when all are within TOLERANCES['int8']."""

    fp32: str
    int8: str
    metadata: dict[str, str]
    images: list[str]
    comparisons: list[Comparison] = field(default_factory=list)
    fp32_ms: float | None = None
    int8_ms: float | None = None
    threads: int | None = None

    @property
    def passed(self) -> bool:
        return all(self.comparisons)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def worst(self) -> dict[str, float]:
        """The worst value of each measure over the held-out images."""
        c = self.comparisons
        return {
            "sigmoid_mae": max(x.sigmoid_mae for x in c),
            "iou_top10": min(x.iou_top10 for x in c),
            "iou_05": min(x.iou_05 for x in c),
            "max_rel_std": max(x.max_rel_std for x in c),
        }

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def lines(self) -> list[str]:
        tol = TOLERANCES["int8"]
        out = [f"INT8 {self.int8} vs FP32 {self.fp32} on {len(self.images)} held-out images, ONNX Runtime CPU "
               f"(tolerance: sigmoid MAE <= {tol.sigmoid_mae}, IoU top10% >= {tol.iou_top10})"]
        out += [c.row() for c in self.comparisons]
        w = self.worst
        out.append(f"worst: sigmoid MAE {w['sigmoid_mae']:.2e}, IoU top10% {w['iou_top10']:.4f}, "
                   f"IoU@0.5 {w['iou_05']:.4f}, max|d|/std {w['max_rel_std']:.3f}")
        if self.speedup:
            out.append(f"speed (batch 1, {self.threads} threads, best of runs): FP32 {self.fp32_ms:.0f} ms, "
                       f"INT8 {self.int8_ms:.0f} ms, {self.speedup:.2f}x")
        out.append("PASS" if self.passed else "FAIL: a held-out image exceeds TOLERANCES['int8'] (rows above)")
        return out

    def as_dict(self) -> dict:
        return {
            "fp32": self.fp32, "int8": self.int8, "metadata": self.metadata, "images": self.images,
            "tolerance": vars(TOLERANCES["int8"]), "passed": self.passed, "worst": self.worst,
            "comparisons": [c.as_dict() for c in self.comparisons],
            "speed": {"fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms, "speedup": self.speedup,
                      "threads": self.threads, "cpu_count": os.cpu_count()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (nothing is left behind on an error)."""
        return write_json_atomic(path, self.as_dict())


def _best_ms(sess, x: np.ndarray, runs: int) -> float:
    sess.run([OUTPUT_NAME], {INPUT_NAME: x})  # warm-up: first run allocates and packs weights
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def accuracy_report(
    fp32_path: str | Path,
    int8_path: str | Path,
    images: str | Path | None = None,
    num_images: int = 6,
    calibration_images: str | Path | None = None,
    timing_runs: int = 0,
    threads: int | None = None,
) -> AccuracyReport:
    """Compare ``int8_path`` with ``fp32_path`` on held-out images, one (1, 3, S, S) at a time.

    ``images`` None: scikit-image's held-out photos (never in the default calibration set).
    With a folder, files whose content equals a file of ``calibration_images`` are left out.
    ``timing_runs`` > 0 also times both graphs (batch 1, best of that many runs).
    """
    import onnx

    from mgd_rt.artifacts import metadata_floats
    from mgd_rt.export.graph import read_metadata

    for path in (fp32_path, int8_path):
        if not Path(path).is_file():
            raise MgdRtError(f"{path}: no such file")
    meta = read_metadata(onnx.load(str(int8_path), load_external_data=False))
    if meta.get("precision") != "int8":
        raise MgdRtError(f"{int8_path}: metadata precision is {meta.get('precision')!r}, not int8")
    size = int(meta["image_size"])
    mean, std = metadata_floats(meta.get("mean"), IMAGENET_MEAN), metadata_floats(meta.get("std"), IMAGENET_STD)
    if images is None:
        held = calib_data.skimage_set(HOLDOUT_PHOTOS, size, mean, std, num_images)
    else:
        exclude = calib_data.content_hashes(calibration_images) if calibration_images else None
        held = calib_data.prepare(images, num_images, size, mean, std, exclude=exclude)
    # CPU, full graph optimisation (what the runtime uses), ONNX Runtime's errors only
    reference, candidate = (ort_session(p, threads, log_severity=3) for p in (fp32_path, int8_path))
    report = AccuracyReport(str(fp32_path), str(int8_path), meta, held.names, threads=threads or os.cpu_count())
    for name, x in zip(held.names, held.tensors, strict=True):
        x = x[None]  # (3, S, S) -> (1, 3, S, S)
        ref = reference.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        out = candidate.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        report.comparisons.append(compare_logits(ref, out, "int8", name=name))
        log.debug("  %s", report.comparisons[-1].row())
    if timing_runs:
        x = held.tensors[:1]
        report.fp32_ms = _best_ms(reference, x, timing_runs)
        report.int8_ms = _best_ms(candidate, x, timing_runs)
    return report
