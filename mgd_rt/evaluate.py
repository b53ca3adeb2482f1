"""``evaluate``: score model files on image / ground-truth folders with the DIS metrics (``mgd-rt eval``).

Every model (checkpoint, .onnx, engine) runs through :class:`~mgd_rt.runtime.Segmenter`, so the
scores are those of the pre- and post-processing users get, with the same test-time
augmentation (:mod:`mgd_rt.runtime.tta`). The metrics are pysodmetrics' own classes
(``pip install 'mgd-rt[eval]'``), never re-written here: S-measure, max / mean E-measure,
max / mean F-measure (beta^2 = 0.3), weighted F-measure, MAE and the DIS benchmark's HCE
(pysodmetrics' ``HumanCorrectionEffortMeasure``, relax 5, epsilon 2). Predictions are the
8-bit mattes ``mgd-rt infer`` writes, at the ground truth's resolution (the image's size: a pair
whose sizes differ is skipped).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mgd_rt.errors import MgdRtError
from mgd_rt.machine import library_version, python_version
from mgd_rt.runtime.image_io import IMAGE_SUFFIXES

# (key, column title, higher is better) in table order; HCE and MAE are errors
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("S", "S-measure", True),
    ("maxE", "max E", True),
    ("meanE", "mean E", True),
    ("maxF", "max F", True),
    ("meanF", "mean F", True),
    ("wF", "weighted F", True),
    ("MAE", "MAE", False),
    ("HCE", "HCE", False),
)
METRIC_KEYS = tuple(k for k, _, _ in METRICS)
# single-channel modes a ground truth may have; 16-bit ones keep their top 8 bits
_MASK_MODES = ("L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I")
# problem kinds a pair can be skipped for, in summary order
SKIP_KINDS = ("unpaired", "unreadable", "bad_mask", "size_mismatch", "duplicate")


def _sod():
    try:
        import py_sod_metrics
    except ImportError:
        raise MgdRtError("mgd-rt eval needs pysodmetrics: pip install 'mgd-rt[eval]' (or pysodmetrics)") from None
    return py_sod_metrics


# ------------------------------------------------------------------------------------------
# pairing
@dataclass
class Pair:
    stem: str
    image: Path
    mask: Path


@dataclass
class Pairs:
    """Image/mask pairs by file stem, and every pair skipped (kind -> lines naming the files)."""

    images: Path
    masks: Path
    pairs: list[Pair] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SKIP_KINDS})

    def skip(self, kind: str, line: str) -> None:
        self.skipped[kind].append(line)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(H, W) after EXIF orientation, as read_image decodes it, without decoding the pixels."""
    width, height = img.size
    if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return height, width


def read_mask(path: str | Path) -> np.ndarray:
    """A single-channel ground truth -> (H, W) uint8 (pysodmetrics binarises it at > 128)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            if img.mode not in _MASK_MODES:
                bands = "+".join(img.getbands())
                raise MgdRtError(f"{path}: ground truth has {len(img.getbands())} channels ({bands}); "
                                 "save it single-channel (8-bit grayscale)")
            if img.mode == "1":
                img = img.convert("L")
            values = np.asarray(img)
    except MgdRtError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as exc:
        raise MgdRtError(f"{path}: unreadable ground truth ({exc})") from None
    if values.dtype != np.uint8:
        top = 65535.0 if values.max() > 255 else 255.0
        values = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return values


def _listing(folder: Path, pairs: Pairs) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() not in IMAGE_SUFFIXES or entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.stem in found:
            pairs.skip("duplicate", f"{entry}: same stem as {found[entry.stem].name}; both skipped")
            found[entry.stem] = Path()  # marks the stem as ambiguous
            continue
        found[entry.stem] = entry
    return found


def find_pairs(images: str | Path, masks: str | Path | None = None) -> Pairs:
    """Pair ``images`` and ``masks`` by file stem and check each pair's headers.

    DIS5K layout: ``images`` holding ``im/`` and ``gt/`` (masks left out). Flat folders: any two
    folders. A pair is skipped (and listed) when one side is missing, unreadable, a mask is not
    single-channel, or the sizes differ (after EXIF orientation).
    """
    images = Path(images)
    if masks is None:
        if not ((images / "im").is_dir() and (images / "gt").is_dir()):
            raise MgdRtError(f"{images}: give --masks DIR, or a DIS5K folder holding im/ and gt/")
        images, masks = images / "im", images / "gt"
    masks = Path(masks)
    for folder, flag in ((images, "--images"), (masks, "--masks")):
        if not folder.is_dir():
            raise MgdRtError(f"{flag} {folder}: no such folder")
    pairs = Pairs(images, masks)
    ims, gts = _listing(images, pairs), _listing(masks, pairs)
    if not ims:
        raise MgdRtError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if not gts:
        raise MgdRtError(f"{masks}: no ground-truth masks ({', '.join(IMAGE_SUFFIXES)})")
    for stem in sorted(set(ims) | set(gts)):
        im, gt = ims.get(stem), gts.get(stem)
        if im == Path() or gt == Path():
            continue  # a duplicate stem, already listed
        if im is None or gt is None:
            have = im or gt
            pairs.skip("unpaired", f"{have}: no {'ground truth' if im else 'image'} named {stem}.* in "
                       f"{masks if im else images}")
            continue
        try:
            with Image.open(im) as img:
                size_im = _oriented_size(img)
        except (OSError, ValueError, SyntaxError) as exc:
            pairs.skip("unreadable", f"{im}: unreadable image ({exc})")
            continue
        try:
            with Image.open(gt) as img:
                size_gt = _oriented_size(img)
                mode, bands = img.mode, img.getbands()
        except (OSError, ValueError, SyntaxError) as exc:
            pairs.skip("unreadable", f"{gt}: unreadable ground truth ({exc})")
            continue
        if mode not in _MASK_MODES:
            pairs.skip("bad_mask", f"{gt}: ground truth has {len(bands)} channels ({'+'.join(bands)}); "
                       "save it single-channel (8-bit grayscale)")
            continue
        if size_im != size_gt:
            pairs.skip("size_mismatch", f"{stem}: image {im.name} is {size_im[1]}x{size_im[0]}, ground truth "
                       f"{gt.name} is {size_gt[1]}x{size_gt[0]}")
            continue
        pairs.pairs.append(Pair(stem, im, gt))
    return pairs


# ------------------------------------------------------------------------------------------
# metrics
class MetricSet:
    """pysodmetrics' accumulators for one model; ``step`` returns that image's own figures.

    Dataset figures follow the DIS / SOD convention: max and mean F and E over the mean
    (over images) curve of 256 thresholds; S, weighted F, MAE and HCE are means over images.
    Per-image maxF / meanF / maxE / meanE are that image's own curve's max and mean.
    """

    def __init__(self) -> None:
        sod = _sod()
        with warnings.catch_warnings():
            # 1.6 nudges towards FmeasureV2; Fmeasure is still the DIS / SOD benchmarks' F-measure
            warnings.simplefilter("ignore", UserWarning)
            self.f = sod.Fmeasure()
        self.s, self.e = sod.Smeasure(), sod.Emeasure()
        self.wf, self.mae, self.hce = sod.WeightedFmeasure(), sod.MAE(), sod.HumanCorrectionEffortMeasure()
        self.count = 0

    def step(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """pred (H, W) uint8 matte, gt (H, W) uint8 -> this image's metrics."""
        for metric in (self.s, self.e, self.f, self.wf, self.mae, self.hce):
            metric.step(pred=pred, gt=gt)
        self.count += 1
        e, f = self.e.changeable_ems[-1], self.f.changeable_fms[-1]
        return {
            "S": float(self.s.sms[-1]), "maxE": float(np.max(e)), "meanE": float(np.mean(e)),
            "maxF": float(np.max(f)), "meanF": float(np.mean(f)), "wF": float(self.wf.weighted_fms[-1]),
            "MAE": float(self.mae.maes[-1]), "HCE": float(self.hce.hces[-1]),
        }

    def results(self) -> dict[str, float]:
        """The dataset figures (NaN when no image was scored)."""
        if not self.count:
            return {k: float("nan") for k in METRIC_KEYS}
        e = self.e.get_results()["em"]["curve"]
        f = self.f.get_results()["fm"]["curve"]
        return {
            "S": float(self.s.get_results()["sm"]), "maxE": float(e.max()), "meanE": float(e.mean()),
            "maxF": float(f.max()), "meanF": float(f.mean()), "wF": float(self.wf.get_results()["wfm"]),
            "MAE": float(self.mae.get_results()["mae"]), "HCE": float(self.hce.get_results()["hce"]),
        }


def score_arrays(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    """Dataset metrics of (H, W) uint8 predictions against (H, W) uint8 ground truths."""
    metrics = MetricSet()
    for pred, gt in zip(preds, gts, strict=True):
        metrics.step(pred, gt)
    return metrics.results()


# ------------------------------------------------------------------------------------------
# the run
@dataclass
class ModelScore:
    """One model's figures on the scored pairs."""

    model: str
    backend: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    difference: dict[str, float] | None = None  # this - reference (the first model); None for it
    scored: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0
    per_image: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "backend": self.backend, "metrics": self.metrics, "difference": self.difference,
            "scored": self.scored, "failed": self.failed, "seconds": self.seconds,
            "model_seconds": self.model_seconds, "images_per_second": self.images_per_second,
        }


@dataclass
class EvalReport:
    """Every figure of a run; ``table()`` for the terminal, ``as_dict()`` for the JSON."""

    pairs: Pairs
    tta: str
    tile: bool
    models: list[ModelScore] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        """Images scored by every model (0 when none could be)."""
        return min((m.scored for m in self.models), default=0)

    def table(self) -> str:
        width = max([len("model")] + [len(Path(m.model).name) + 2 for m in self.models])
        head = f"{'model':<{width}} " + " ".join(f"{k:>8}" for k in METRIC_KEYS) + f" {'images':>6} {'img/s':>7}"
        lines = [head, "-" * len(head)]
        ref = Path(self.models[0].model).name if self.models else ""
        for m in self.models:
            lines.append(f"{Path(m.model).name:<{width}} " + " ".join(f"{m.metrics[k]:8.4f}" for k in METRIC_KEYS[:-1])
                         + f" {m.metrics['HCE']:8.1f} {m.scored:6d} {m.images_per_second:7.3f}")
        if len(self.models) > 1:
            lines.append(f"difference from the reference, {ref} ('- name' rows: that model minus the reference):")
        for m in self.models[1:]:
            d = m.difference or {}
            # the difference from the reference (first row), same units
            lines.append(f"{'- ' + Path(m.model).name:<{width}} "
                         + " ".join(f"{d.get(k, float('nan')):+8.4f}" for k in METRIC_KEYS[:-1])
                         + f" {d.get('HCE', float('nan')):+8.1f}")
        return "\n".join(lines)

    def summary(self) -> str:
        skipped = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in self.pairs.skipped.items() if v) or "none"
        verdict = "ok" if self.scored else "FAILED: nothing scored"
        return (f"{verdict}: {len(self.pairs.pairs)} pair(s), skipped: {skipped}; {len(self.models)} model(s), "
                f"TTA {self.tta}; {self.seconds:.1f} s")

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": str(self.pairs.images), "masks": str(self.pairs.masks), "tta": self.tta, "tile": self.tile,
            "pairs": len(self.pairs.pairs), "skipped": self.pairs.skipped,
            "metrics": {k: title for k, title, _ in METRICS},
            "reference": self.models[0].model if self.models else None,
            "models": [m.as_dict() for m in self.models], "seconds": self.seconds, "environment": self.environment,
        }


def environment() -> dict[str, Any]:
    """What produced the numbers: versions, platform, CPU count (torch only if already imported)."""
    from mgd_rt.version import __version__

    env: dict[str, Any] = {"mgd_rt": __version__, "python": python_version(), "platform": platform.platform(),
                           "machine": platform.machine(), "cpu_count": os.cpu_count(), "numpy": np.__version__}
    # never import torch just to report it (the light runtime has none); a library not installed is left out
    for name in ("pysodmetrics", "onnxruntime", *(("torch",) if "torch" in sys.modules else ())):
        found = library_version(name)
        if found is not None:
            env[name] = found
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


def _progress(stream: TextIO | None, label: str, done: int, total: int, rate: float) -> None:
    if stream is None or not stream.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.2f} images/s ")
    stream.flush()


def evaluate(
    models: Sequence[str | Path | Any],
    images: str | Path,
    masks: str | Path | None = None,
    tta: str = "none",
    tile: bool = False,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    output: str | Path | None = None,
    csv_path: str | Path | None = None,
    progress: TextIO | None = None,
) -> EvalReport:
    """Score each of ``models`` on the pairs of ``images`` / ``masks``; the first is the reference.

    ``models``: checkpoints, .onnx graphs, engines, or open Segmenters. ``output``: JSON with every
    figure and the environment; ``csv_path``: one row per (model, image). ``progress``: a stream
    for the progress bar (shown on terminals only). Raises MgdRtError when nothing can be scored
    (no pairs); a model that scores nothing shows NaN and ``report.scored`` is 0.
    """
    from mgd_rt.runtime import Segmenter

    if not models:
        raise MgdRtError("give at least one MODEL")
    _sod()  # fail before any model loads when the metrics are missing
    start = time.perf_counter()
    pairs = find_pairs(images, masks)
    report = EvalReport(pairs, tta, tile)
    say = (lambda line: print(line, file=progress)) if progress is not None else (lambda line: None)
    for kind, lines in pairs.skipped.items():
        for line in lines:
            say(f"mgd-rt: skipped ({kind.replace('_', ' ')}): {line}")
    if not pairs.pairs:
        raise MgdRtError(f"no image/ground-truth pairs to score in {pairs.images} and {pairs.masks} "
                         f"({pairs.skipped_count} skipped, listed above)")
    by_path = {str(p.image): p for p in pairs.pairs}
    for model in models:
        own = not isinstance(model, Segmenter)
        seg = Segmenter(model, device=device, dtype=dtype, batch_size=batch_size, tile=tile, tta=tta) if own else model
        name = str(model) if own else seg.describe()
        score = ModelScore(name, seg.describe())
        say(f"mgd-rt: scoring {Path(name).name if own else name}: {score.backend}")
        metrics = MetricSet()
        t0 = time.perf_counter()
        try:
            for result in seg.stream(str(p.image) for p in pairs.pairs):
                pair = by_path[str(result.source)]
                if not result.ok:
                    score.failed.append(result.error or "")
                    say(f"mgd-rt: error: {result.error}")
                    continue
                score.model_seconds += result.seconds.get("model", 0.0)
                try:
                    gt = read_mask(pair.mask)
                except MgdRtError as exc:
                    score.failed.append(str(exc))
                    say(f"mgd-rt: error: {exc}")
                    continue
                if gt.shape != result.size:
                    line = f"{pair.stem}: decoded image is {result.size[1]}x{result.size[0]}, ground truth " \
                           f"{gt.shape[1]}x{gt.shape[0]}"
                    score.failed.append(line)
                    say(f"mgd-rt: error: {line}")
                    continue
                row = metrics.step(result.matte(), gt)  # (H, W) uint8 at the ground truth's size
                score.per_image.append({"image": pair.image.name, **row})
                score.scored += 1
                _progress(progress, Path(name).name, score.scored + len(score.failed), len(pairs.pairs),
                          score.scored / max(time.perf_counter() - t0, 1e-9))
        finally:
            if own:
                seg.close()
        if progress is not None and progress.isatty():
            progress.write("\n")
        score.seconds = time.perf_counter() - t0
        score.metrics = metrics.results()
        report.models.append(score)
    reference = report.models[0].metrics
    for m in report.models[1:]:
        m.difference = {k: m.metrics[k] - reference[k] for k in METRIC_KEYS}
    report.environment = environment()
    report.seconds = time.perf_counter() - start
    if output is not None:
        write_json(report, output)
    if csv_path is not None:
        write_csv(report, csv_path)
    return report


def write_json(report: EvalReport, path: str | Path) -> Path:
    """The report as JSON (NaN written as null)."""
    path = Path(path)

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(report.as_dict()), indent=2) + "\n")
    return path


def write_csv(report: EvalReport, path: str | Path) -> Path:
    """One row per (model, image): model, image, then each metric of that image alone."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "image", *METRIC_KEYS])
        for m in report.models:
            for row in m.per_image:
                writer.writerow([m.model, row["image"], *(repr(row[k]) for k in METRIC_KEYS)])
    return path


__all__ = ["METRICS", "EvalReport", "MetricSet", "ModelScore", "Pairs", "evaluate", "find_pairs", "read_mask",
           "score_arrays"]
