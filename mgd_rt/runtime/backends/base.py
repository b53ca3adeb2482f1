"""The one interface every backend implements: normalised batch in, logits out.

Callers (Segmenter, tiling, TTA, bench) only ever use this class. The checks every backend
needs live here once: the input check, the I/O contract of the loaded artifact, the refusal of
a ``--dtype`` other than the artifact's own precision, and the splitting of a batch into what
the artifact takes. A backend is one file (a subclass that loads the artifact and implements
:meth:`Backend.run_exact`) plus one row in :data:`mgd_rt.runtime.backends.BACKENDS`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import INT8_CHECK_KEY, INT8_CHECKED_ON_KEY, metadata_floats
from mgd_rt.contract import (
    FLOAT_INPUT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_FORMAT_KEY,
    INPUT_FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    PIXEL_INPUT,
)
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.processing import normalise_batch, to_pixels

log = logging.getLogger("mgd_rt")


class Backend(ABC):
    """A loaded model: ``infer`` maps float32 (B, 3, S, S) to float32 (B, 1, S, S) logits.

    An artifact exported with a pixel input (``input_format`` "uint8", from its metadata) runs on
    uint8 (B, S, S, 3) RGB: :meth:`infer_pixels` sends it those directly, and :meth:`infer` turns
    normalised input back into the pixels it came from (exact for input made from 8-bit pixels).
    Subclasses call ``super().__init__(check_inputs)``, set the attributes below while loading
    and implement :meth:`run_exact`. ``device`` and ``precision`` say what is actually used,
    never just what was asked.
    """

    name: str = "base"
    kind: str = "model"  # what the artifact is called in messages: graph, engine, ...
    image_size: int
    variant: str = "unknown"
    trained: bool | None = None  # None: unknown (e.g. an .onnx without a checkpoint hash)
    device: str = "cpu"  # what runs it, e.g. "cpu", "cuda:0", "CUDAExecutionProvider"
    precision: str = "fp32"
    check_inputs: bool = True
    # the normalisation the model was trained with (an .onnx graph carries its own)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_format: str = FLOAT_INPUT  # what run_exact takes: contract.FLOAT_INPUT or PIXEL_INPUT
    # the batch sizes the artifact takes (None: any): a static batch dimension, or a largest batch
    # (an engine profile's maximum, a server's max_batch_size); run_unchecked splits to fit them
    fixed_batch: int | None = None
    max_batch: int | None = None

    def __init__(self, check_inputs: bool = True) -> None:
        self.check_inputs = check_inputs
        self.metadata: dict[str, str] = {}  # the artifact's metadata props, as apply_metadata got them

    # loading -------------------------------------------------------------------------------
    @staticmethod
    def model_file(model: str | Path, what: str) -> Path:
        """``model`` as a Path; MgdRtError naming ``what`` ("ONNX", "engine") when no such file exists."""
        path = Path(model)
        if not path.is_file():
            raise MgdRtError(f"{path}: no such {what} file")
        return path

    def apply_metadata(self, meta: Mapping[str, str]) -> None:
        """Variant, the weights' origin and the normalisation from an artifact's metadata props
        (artifacts.METADATA_KEYS: ONNX metadata, an engine sidecar's copy, Triton parameters)."""
        self.metadata = dict(meta)
        self.variant = meta.get("variant", "unknown")
        sha = meta.get("checkpoint_sha256")
        self.trained = None if sha is None else sha != "untrained"
        self.mean = metadata_floats(meta.get("mean"), IMAGENET_MEAN)
        self.std = metadata_floats(meta.get("std"), IMAGENET_STD)
        fmt = meta.get(INPUT_FORMAT_KEY, FLOAT_INPUT)
        if fmt not in INPUT_FORMATS:
            raise MgdRtError(f"{INPUT_FORMAT_KEY} {fmt!r} in the {self.kind}'s metadata: this mgd-rt knows "
                             f"{', '.join(INPUT_FORMATS)}; upgrade mgd-rt or re-export")
        self.input_format = fmt

    def warn_int8_check(self, source: str, runs_on: str) -> None:
        """Log a warning when the INT8 graph just loaded failed mgd-rt calibrate's held-out check, or passed it on
        another runtime than ``runs_on`` (CheckBackend.key's spelling: onnxruntime, openvino, openvino-bf16): the
        runtimes' integer kernels differ, and a B+ graph that passed on ONNX Runtime missed on OpenVINO (one of
        three seeded sets). Graphs without the props (not checked by mgd-rt calibrate) pass silently."""
        checked_on = self.metadata.get(INT8_CHECKED_ON_KEY)
        if self.metadata.get("precision") != "int8" or checked_on is None:
            return
        if self.metadata.get(INT8_CHECK_KEY) != "pass":
            log.warning("%s: this INT8 graph failed mgd-rt calibrate's held-out check (on %s): its masks can be off "
                        "the FP32 graph's; see its .report.json", source, checked_on)
        elif checked_on != runs_on:
            backend, _, dtype = runs_on.partition("-")
            remedy = (f"check it where it runs (mgd-rt calibrate FP32_GRAPH --backend {backend}"
                      f"{' --dtype ' + dtype if dtype else ''})" if backend in ("onnxruntime", "openvino")
                      else "mgd-rt calibrate checks on the CPU runtimes only")
            log.warning("%s: this INT8 graph's accuracy was checked on %s, and %s runs it here: integer kernels "
                        "differ between runtimes; %s", source, checked_on, runs_on, remedy)

    def check_image_size(self, source: str, sides: list[int | None], shape: object) -> int:
        """S from the metadata's image_size (applied first), else the input's static side; refused when
        the two disagree (such a graph fails on every image: refuse it before any is read).
        ``sides``: the input's two spatial dims, None where symbolic; ``shape``: the input shape, for
        the message."""
        static = [d for d in sides if d is not None]
        size = self.metadata.get("image_size") or (static[-1] if static else None)
        if size is None:
            raise MgdRtError(f"{source}: neither an image_size metadata prop nor a static input size")
        if not str(size).isdigit() or any(d != int(size) for d in static):
            raise MgdRtError(f"{source}: its image_size metadata ({size}) does not match its input "
                             f"{INPUT_NAME!r} of shape {shape}; re-export the graph")
        return int(size)

    @property
    def takes_pixels(self) -> bool:
        """True when the artifact's input is uint8 (B, S, S, 3) pixels (normalised inside it)."""
        return self.input_format == PIXEL_INPUT

    def check_io(self, inputs: Iterable[str], outputs: Iterable[str], source: str, only: bool = False) -> None:
        """Refuse an artifact without the contract's input ``image`` and output ``mask_logits``
        (``only``: without exactly those, for runners that bind every I/O tensor)."""
        have_in, have_out = sorted(inputs), sorted(outputs)
        if only:
            fits = (have_in, have_out) == ([INPUT_NAME], [OUTPUT_NAME])
        else:
            fits = INPUT_NAME in have_in and OUTPUT_NAME in have_out
        if not fits:
            raise MgdRtError(
                f"{source}: not an mgd-rt {self.kind}: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
                f"{' only' if only else ''}, has inputs {have_in} and outputs {have_out}"
            )

    def check_io_types(self, source: str, dtypes: Mapping[str, object], float32: object, uint8: object) -> None:
        """Refuse I/O tensors (``dtypes``: name -> the runner's type, given its ``float32`` and ``uint8``)
        of another type than the contract's: float32 output, float32 input or uint8 for a pixel input."""
        expected = {name: uint8 if name == INPUT_NAME and self.takes_pixels else float32 for name in dtypes}
        wrong = [f"{name!r} is {dtype}" for name, dtype in dtypes.items() if dtype != expected[name]]
        if wrong:
            what = "uint8 pixels in, float32 out" if self.takes_pixels else "float32"
            raise MgdRtError(f"{source}: {', '.join(wrong)}; the contract's I/O is {what} "
                             f"(metadata {INPUT_FORMAT_KEY} {self.input_format})")

    def check_dtype(self, dtype: str | None, source: str, remedy: str = "") -> None:
        """Refuse ``--dtype`` other than ``self.precision``: an artifact's precision is its own, and running
        something else silently would report numbers of another precision. ``remedy``: how to get one,
        e.g. "export a fp16 graph and pass that file"."""
        if dtype is not None and dtype != self.precision:
            fix = f"{remedy}, or leave --dtype out" if remedy else "leave --dtype out"
            raise MgdRtError(f"--dtype {dtype}: {source} is a {self.precision} {self.kind}; {fix}")

    # running -------------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """{"image": (B, 3, S, S) float32} or the array itself -> (B, 1, S, S) float32 logits."""
        batch = inputs[INPUT_NAME] if isinstance(inputs, Mapping) else inputs
        if self.check_inputs:
            self.check(batch)
        if self.takes_pixels:
            return self.run_unchecked(to_pixels(batch, self.mean, self.std))
        return self.run_unchecked(np.ascontiguousarray(batch, dtype=np.float32))

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB, resized to S -> (B, 1, S, S) float32 logits.

        A pixel-input artifact gets the bytes as they are; any other is sent them normalised."""
        if self.check_inputs:
            s = self.image_size
            if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape[1:] != (s, s, 3) \
                    or pixels.shape[0] < 1:
                raise MgdRtError(f"{self.name}: pixels must be uint8 (B, {s}, {s}, 3), got "
                                 f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '')}")
        if self.takes_pixels:
            return self.run_unchecked(np.ascontiguousarray(pixels))
        return self.run_unchecked(normalise_batch(pixels, self.mean, self.std))

    def check(self, batch: np.ndarray) -> None:
        """Refuse a wrong dtype or shape with a message, before the backend's own crash."""
        s = self.image_size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise MgdRtError(f"{self.name}: input {INPUT_NAME!r} must be a float32 numpy array")
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s) or batch.shape[0] < 1:
            raise MgdRtError(
                f"{self.name}: input {INPUT_NAME!r} must be (B, 3, {s}, {s}), got {tuple(batch.shape)}"
            )

    def run_unchecked(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, s, s) float32 (or, for a pixel input, (B, s, s, 3) uint8) C-contiguous -> (B, 1, s, s)
        float32, without :meth:`check`.

        For callers that checked the batch themselves or run a model at another size than S
        (TTA's scales on PyTorch). The batch goes in chunks the artifact takes: one image at a
        time for a static batch-1 artifact, at most ``max_batch`` images otherwise.
        """
        n = batch.shape[0]
        step = self.max_batch or n
        if self.fixed_batch is not None and n != self.fixed_batch:
            if self.fixed_batch != 1:
                raise MgdRtError(f"this {self.kind} takes batches of exactly {self.fixed_batch}; "
                                 f"pass --batch-size {self.fixed_batch}")
            step = 1
        if n <= step:
            return self.run_exact(batch)
        return np.concatenate([self.run_exact(batch[i : i + step]) for i in range(0, n, step)])

    @abstractmethod
    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        """(b, 3, s, s) float32 C-contiguous (uint8 (b, s, s, 3) for a pixel input), b a batch the artifact
        takes -> (b, 1, s, s) float32 logits."""

    # lifetime ------------------------------------------------------------------------------
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
