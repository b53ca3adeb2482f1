"""``segment_dataset``: ``mgd-rt infer`` as a Ray Data pipeline, for folders too big for one process.

Stages (streaming, so memory stays bounded however many images there are)::

    paths --map(prepare: decode + resize + normalise, CPU tasks)--> (3, S, S) float32 rows
          --map_batches(_SegmentActor: one loaded backend per actor, GPUs per actor when present)--> (S, S) logits
          --map(write: resize + sigmoid + encode, temporary file + rename, CPU tasks)--> one status row per image

The same functions as ``mgd-rt infer`` run in every stage (read_image, preprocess, the backend,
write_result), so the outputs are the same files. A file that cannot be decoded becomes a row
with an error, is reported and skipped; nothing is written for it. Paths are resolved on the
driver: on a multi-node cluster inputs and outputs must be on a filesystem every node mounts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.image_io import read_image
from mgd_rt.runtime.infer import InferSummary, start_job
from mgd_rt.runtime.outputs import FORMATS, write_failure

log = logging.getLogger("mgd_rt")

# On 2 cores, actors each holding a whole CPU starve Ray Data's read tasks and the job never
# finishes (measured); fractions leave room for the decode and write tasks.
DEFAULT_CPUS_PER_ACTOR = 0.5
DEFAULT_CPUS_PER_TASK = 0.25
DEFAULT_ACTORS_CPU = 2  # without GPUs; with GPUs, one actor per GPU


def _prepare_row(row: dict[str, Any], size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """{source, target} -> + tensor (3, S, S) float32, height, width, error ("" when decoded)."""
    from mgd_rt.runtime.processing import preprocess

    try:
        image = read_image(row["source"])
        tensor = preprocess(image, size, mean, std)
        return {**row, "tensor": tensor, "height": image.shape[0], "width": image.shape[1], "error": ""}
    except MgdRtError as exc:
        # every row needs the same columns: a zero tensor rides along and is never run
        return {**row, "tensor": np.zeros((3, size, size), np.float32), "height": 0, "width": 0, "error": str(exc)}
    except MemoryError:
        return {**row, "tensor": np.zeros((3, size, size), np.float32), "height": 0, "width": 0,
                "error": f"{row['source']}: out of memory while decoding"}


class _SegmentActor:
    """One loaded backend per actor; ``__call__`` maps a batch of prepared rows to logits (S, S)."""

    def __init__(self, model: str, backend: str, device: str | None, dtype: str | None) -> None:
        from mgd_rt.runtime.backends import load_backend

        self.backend = load_backend(model, backend, device, dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        tensors = batch.pop("tensor")  # (B, 3, S, S): dropped here, the write stage needs only logits
        s = tensors.shape[-1]
        logits = np.zeros((len(ok), s, s), np.float32)
        if ok.any():
            logits[ok] = self.backend.infer(np.ascontiguousarray(tensors[ok]))[:, 0]  # (b, 1, S, S) -> (b, S, S)
        return {**batch, "logits": logits}


def _write_row(row: dict[str, Any], format: str, threshold: float) -> dict[str, Any]:
    """Write one output via a temporary file; returns {source, target, error}."""
    from mgd_rt.runtime.outputs import write_result
    from mgd_rt.runtime.segmenter import Result

    out = {"source": row["source"], "target": row["target"], "error": row["error"]}
    if row["error"]:
        return out
    try:
        h, w = int(row["height"]), int(row["width"])
        if format in ("rgba", "overlay"):
            image = read_image(row["source"])  # these formats show the photo: decode it again here
        else:
            # matte and binary need only the size: a zero-stride (H, W, 3) view costs no memory
            image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, w, 3))
        result = Result(row["source"], image, np.asarray(row["logits"], np.float32))
        target = Path(row["target"])
        target.parent.mkdir(parents=True, exist_ok=True)
        write_result(result, target, format, threshold)
    except MgdRtError as exc:
        out["error"] = str(exc)
    except OSError as exc:
        out["error"] = write_failure(row["source"], row["target"], exc)
    return out


def segment_dataset(
    model: str | Path,
    inputs: list[str | Path],
    outdir: str | Path,
    format: str = "matte",
    threshold: float = 0.5,
    batch_size: int = 1,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    gpus_per_actor: float | None = None,
    cpus_per_task: float = DEFAULT_CPUS_PER_TASK,
    device: str | None = None,
    backend: str = "auto",
    dtype: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    progress: TextIO | None = None,
) -> InferSummary:
    """Segment ``inputs`` into ``outdir`` on a Ray cluster; same outputs and summary as :func:`infer`.

    ``address`` None: start a local Ray cluster for this call (stopped afterwards); "auto" or
    "ray://HOST:10001": use that cluster. ``gpus_per_actor`` None: 1 when the cluster has GPUs
    (and ``device`` is not cpu), else 0. ``actors`` None: one per GPU, or 2 without GPUs.
    """
    if format not in FORMATS:
        raise MgdRtError(f"--format {format}: choose from {', '.join(FORMATS)}")
    if not 0.0 < threshold < 1.0:
        raise MgdRtError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    if batch_size < 1:
        raise MgdRtError(f"--batch-size {batch_size}: must be at least 1")
    if actors is not None and actors < 1:
        raise MgdRtError(f"--ray-actors {actors}: must be at least 1")
    if cpus_per_actor <= 0 or cpus_per_task <= 0:
        raise MgdRtError("CPUs per actor and per task must be positive (fractions such as 0.5 are fine)")
    try:
        import ray
    except ImportError:
        raise MgdRtError("mgd-rt infer --ray needs Ray Data: pip install 'mgd-rt[ray]'") from None
    def say(text: str) -> None:
        print(text, file=progress or sys.stderr)

    start = time.perf_counter()
    outdir = Path(outdir)
    todo, summary, fail = start_job(inputs, outdir, recursive, format, overwrite, say, videos=False)

    from mgd_rt.runtime.backends import load_backend
    from mgd_rt.runtime.backends.triton_backend import is_triton_url

    # the model is loaded once here: a bad model fails before any cluster starts, and the
    # driver learns S and the normalisation the prepare tasks need
    model_ref = str(model) if is_triton_url(str(model)) else str(Path(model).resolve())
    probe = load_backend(model_ref, backend, device, dtype)
    try:
        size, mean, std = probe.image_size, tuple(probe.mean), tuple(probe.std)
        summary.backend, summary.precision = probe.describe(), probe.precision
    finally:
        probe.close()
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary

    started_here = not ray.is_initialized()
    if started_here:
        # "local" forces a fresh cluster for this job rather than joining one found on the machine
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    try:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = (progress or sys.stderr).isatty()
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if cluster_gpus > 0 and device != "cpu" and not is_triton_url(model_ref) else 0.0
        if actors is None:
            actors = max(1, int(cluster_gpus // gpus_per_actor)) if gpus_per_actor > 0 else DEFAULT_ACTORS_CPU
        summary.backend += (f"; Ray Data, {actors} actor(s) x {cpus_per_actor:g} CPU"
                            f"{f' + {gpus_per_actor:g} GPU' if gpus_per_actor else ''}, batch {batch_size}")
        say(f"mgd-rt: {len(todo)} image(s) to segment with {summary.backend}")

        items = [{"source": str(job.source.resolve()), "target": str(target.resolve())} for job, target in todo]
        ds = ray.data.from_items(items)
        ds = ds.map(_prepare_row, fn_kwargs={"size": size, "mean": mean, "std": std}, num_cpus=cpus_per_task)
        ds = ds.map_batches(
            _SegmentActor,
            fn_constructor_kwargs={"model": model_ref, "backend": backend, "device": device, "dtype": dtype},
            batch_size=batch_size, batch_format="numpy", concurrency=actors,
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        )
        ds = ds.map(_write_row, fn_kwargs={"format": format, "threshold": threshold}, num_cpus=cpus_per_task)
        seen: set[str] = set()
        lost = "no result came back"
        try:
            for row in ds.iter_rows():  # streaming: results arrive as images finish, in no fixed order
                seen.add(row["target"])
                if row["error"]:
                    fail(row["error"])
                else:
                    summary.done += 1
                    summary.written.append(Path(row["target"]))
        except ray.exceptions.RayError as exc:  # e.g. an actor that died more often than Ray retries
            lost = f"the Ray job failed ({first_line(exc)})"
        # Ray retries a killed actor's work; whatever still has no row must not leave the summary
        # silently short: each missing image is one line, and a second run finishes only those
        for item in items:
            if item["target"] not in seen:
                fail(f"{item['source']}: {lost}; its output {item['target']} was not written (run again to finish)")
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary


def _quiet_ray_env() -> None:
    """Ray's usage-stats prompt and its metrics exporter are noise for a batch job."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


_quiet_ray_env()

__all__ = ["segment_dataset"]
