"""End-to-end timing: image files from disk to written mattes through the Segmenter, split by stage."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.errors import MgdRtError


def time_end_to_end(backend: Any, images: Sequence[str | Path], batch: int) -> dict[str, Any]:
    """Image files -> written mattes through the Segmenter, time split by stage (seconds per image)."""
    from mgd_rt.runtime.infer import collect_inputs
    from mgd_rt.runtime.outputs import write_result
    from mgd_rt.runtime.segmenter import Segmenter

    jobs, problems = collect_inputs(list(images))
    if not jobs:
        raise MgdRtError(f"--end-to-end: no images found ({'; '.join(problems) or 'empty'})")
    seg = Segmenter(backend, batch_size=batch)  # not closed: that would close the shared backend
    stages: dict[str, list[float]] = {"decode": [], "resize": [], "model": [], "write": []}
    failed: list[str] = []
    # one untimed pass first: a last, partial batch is a new input shape, and its first call pays
    # for cuDNN / ONNX Runtime kernel choice, which is warm-up, not the steady state
    t0 = time.perf_counter()
    for _ in seg.stream(job.source for job in jobs):
        pass
    warmup_wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="mgd-rt-bench-") as tmp:
        t0 = time.perf_counter()
        for i, result in enumerate(seg.stream(job.source for job in jobs)):
            if not result.ok:
                failed.append(result.error or "")
                continue
            for k in ("decode", "resize", "model"):
                stages[k].append(result.seconds.get(k, 0.0))
            tw = time.perf_counter()
            # the mask written as the default `mgd-rt infer` output: resize back, sigmoid, PNG encode, rename
            write_result(result, Path(tmp) / f"{i}.png", "matte")
            stages["write"].append(time.perf_counter() - tw)
        wall = time.perf_counter() - t0
    done = len(stages["write"])
    return {
        "images": done, "failed": failed, "batch": batch, "wall_s": wall, "warmup_pass_wall_s": warmup_wall,
        "images_per_s": done / wall if wall > 0 else None,
        "stage_s_per_image": {k: float(np.mean(v)) if v else None for k, v in stages.items()},
        "stage_raw_s": stages,
        "note": "decode and resize run in background threads ahead of the model, so wall time per image "
                "can be below the sum of the stages; write runs in the caller's thread here",
    }


__all__ = ["time_end_to_end"]
