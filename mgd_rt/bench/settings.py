"""What one bench run is asked to do (:class:`BenchSettings`, validated by :func:`mgd_rt.bench.bench`)
and the fixed warm-up rule it records beside them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgd_rt.bench.report import BenchResult

# warm-up on CUDA continues until this many consecutive calls agree within STABLE_SPREAD
STABLE_WINDOW = 3
STABLE_SPREAD = 0.05
MAX_WARMUP_SECONDS = 60.0
MAX_WARMUP_ITERS = 200


@dataclass(frozen=True)
class BenchSettings:
    """The arguments of :func:`mgd_rt.bench.bench` after validation.

    Exactly one of ``iters`` (timed calls per result) and ``seconds`` (time calls for this long)
    is set; ``device`` is resolved (``cpu``, ``cuda`` or ``cuda:N``), never None.
    """

    models: Sequence[str | Path]
    batches: list[int]
    warmup: int
    iters: int | None
    seconds: float | None
    device: str
    dtypes: Sequence[str] | None = None
    end_to_end: Sequence[str | Path] | None = None
    reference: str | Path | None = None
    output: str | Path | None = None
    chart: str | Path | None = None
    image_size: int | None = None
    compile: Sequence[str | None] = (None,)  # torch.compile modes per PyTorch run; None: eager
    photos: int = 4
    holdout: bool = False  # accuracy on each held-out photo at batch 1 instead of the timed batch's photos
    unavailable: Sequence[dict[str, str]] = ()
    on_result: Callable[[BenchResult], None] | None = None  # called with each result as it is recorded
    tf32: bool = False
    backend: str = "auto"  # what runs the model files: by suffix, or the backend named
    # passes over every model: the timed calls of each result are spread over the whole run, so a machine whose
    # speed drifts (a shared VM) slows every result alike instead of the ones timed while it was slow
    rounds: int = 1

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def until_stable(self) -> bool:
        """Whether warm-up goes on until the timings settle: on CUDA only, since a CPU forward of B+ takes
        seconds and warm-up there stays at the count asked for."""
        return self.on_cuda

    def as_dict(self) -> dict[str, Any]:
        """The JSON's ``settings`` entry."""
        return {"models": [str(m) for m in self.models], "batches": self.batches, "warmup": self.warmup,
                "iters": self.iters, "seconds": self.seconds, "device": self.device,
                "dtypes": list(self.dtypes or ["fp32"]), "backend": self.backend,
                "end_to_end": [str(p) for p in self.end_to_end] if self.end_to_end else None,
                "reference": str(self.reference) if self.reference is not None else None,
                "image_size": self.image_size, "compile": [m or "eager" for m in self.compile],
                "holdout": self.holdout, "rounds": self.rounds,
                "warmup_until_stable": self.until_stable,
                "tf32": self.tf32 if self.on_cuda else None,
                "stable_rule": f"{STABLE_WINDOW} consecutive calls within {STABLE_SPREAD:.0%} of their median, "
                               f"at most {MAX_WARMUP_ITERS} calls / {MAX_WARMUP_SECONDS:.0f} s",
                "latency_includes": "host->device copy of the input, the model, device->host copy of the logits "
                                    "(the runtime Backend contract: numpy in, numpy out)",
                "argv": sys.argv}
