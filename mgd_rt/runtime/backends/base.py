"""The one interface every backend implements: normalised batch in, logits out.

Callers (Segmenter, tiling, bench) only ever use this class, so adding a backend (TensorRT,
Triton) is one new file and one row in :data:`mgd_rt.runtime.backends.BACKENDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from mgd_rt.artifacts import metadata_floats
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError


class Backend(ABC):
    """A loaded model: ``infer`` maps float32 (B, 3, S, S) to float32 (B, 1, S, S) logits.

    Subclasses set the attributes below in ``__init__`` (the load) and implement ``_run``.
    ``device`` and ``precision`` say what is actually used, never just what was asked.
    """

    name: str = "base"
    image_size: int
    variant: str = "unknown"
    trained: bool | None = None  # None: unknown (e.g. an .onnx without a checkpoint hash)
    device: str = "cpu"  # what runs it, e.g. "cpu", "cuda:0", "CUDAExecutionProvider"
    precision: str = "fp32"
    check_inputs: bool = True
    # the normalisation the model was trained with (an .onnx graph carries its own)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def apply_metadata(self, meta: Mapping[str, str]) -> None:
        """Variant, the weights' origin and the normalisation from an artifact's metadata props
        (artifacts.METADATA_KEYS: ONNX metadata, an engine sidecar's copy, Triton parameters)."""
        self.variant = meta.get("variant", "unknown")
        sha = meta.get("checkpoint_sha256")
        self.trained = None if sha is None else sha != "untrained"
        self.mean = metadata_floats(meta.get("mean"), IMAGENET_MEAN)
        self.std = metadata_floats(meta.get("std"), IMAGENET_STD)

    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """{"image": (B, 3, S, S) float32} or the array itself -> (B, 1, S, S) float32 logits."""
        batch = inputs[INPUT_NAME] if isinstance(inputs, Mapping) else inputs
        if self.check_inputs:
            self.check(batch)
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def check(self, batch: np.ndarray) -> None:
        """Refuse a wrong dtype or shape with a message, before the backend's own crash."""
        s = self.image_size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise MgdRtError(f"{self.name}: input {INPUT_NAME!r} must be a float32 numpy array")
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s) or batch.shape[0] < 1:
            raise MgdRtError(
                f"{self.name}: input {INPUT_NAME!r} must be (B, 3, {s}, {s}), got {tuple(batch.shape)}"
            )

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 C-contiguous -> (B, 1, S, S) float32 ``OUTPUT_NAME`` logits."""

    def close(self) -> None:
        """Release the model (sessions, GPU memory); the backend is unusable afterwards."""
        return None  # nothing to release by default

    def describe(self) -> str:
        """One line: backend, device or execution provider actually used, precision."""
        return f"{self.name} on {self.device}, {self.precision}"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Backend", "INPUT_NAME", "OUTPUT_NAME"]
