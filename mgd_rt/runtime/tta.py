"""Test-time augmentation: one implementation for ``Segmenter`` (so ``mgd-rt infer --tta``) and ``evaluate``.

Modes (``TTA_MODES``):
- ``none``: one pass.
- ``flip``: the batch and its horizontal flip in one batch of 2B, logits averaged after the
  flipped half is flipped back. Any backend, one model size.
- ``paper``: the authors' test protocol (their test.py with ttach): horizontal
  flip {no, yes} x scale {0.75, 1, 1.25} of the normalised S x S tensor, resized bilinearly with
  align_corners=False and no antialias, so the model runs at 0.75S, S and 1.25S; each output is
  resized back to S x S the same way and unflipped; the six logit maps are averaged.

The MCEM position-code quirk the paper's numbers depend on: the authors' MCEM computes its sine
code at the size of its first call and bicubic-resizes that code for every later size; in their
TTA run the first call is (no flip, 0.75), so at every scale the code comes from the 0.75S grid.
- PyTorch reproduces it: every MCEM's ``code_grid`` is set to the 0.75S grid for the six passes
  (and restored afterwards, so a plain run still computes the code at S).
- Graphs and engines have static sizes, so ``paper`` needs one artifact per scale, found beside
  the model file as ``<name>.s<size><suffix>`` (``mgd-rt export --image-size 384,512,640
  --paper-codes`` writes them). Whether the quirk is baked in is read from each graph's
  ``mcem_code_size`` metadata prop and reported by :meth:`TTA.describe`; artifacts exported
  without ``--paper-codes`` compute the code at their own size (NOT the paper's numbers).

Resizing is numpy (the light runtime never imports torch) with PyTorch's bilinear taps.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import CODE_SIZE_KEY, sized_path, unsized_name
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend
from mgd_rt.runtime.processing import source_coords

TTA_MODES = ("none", "flip", "paper")
# the authors' ttach scales, in their order; the first one's grid gives MCEM its code
PAPER_SCALES = (0.75, 1.0, 1.25)
# the network needs S/2 divisible by this (Hiera's windows at stride 32 of each view)
_SIZE_MULTIPLE = 64

Runner = Callable[[np.ndarray], np.ndarray]


def paper_sizes(image_size: int) -> tuple[int, int, int]:
    """The model input sizes of the paper protocol for S: (0.75S, S, 1.25S), e.g. 384, 512, 640."""
    sizes = []
    for scale in PAPER_SCALES:
        size = image_size * scale
        if size != int(size) or int(size) % _SIZE_MULTIPLE:
            raise MgdRtError(
                f"--tta paper at S={image_size}: {scale} x S = {size:g} is not a model size (S/2 must be a "
                f"multiple of 32 at every scale); use S divisible by 256, e.g. 512 or 1024"
            )
        sizes.append(int(size))
    return tuple(sizes)  # type: ignore[return-value]


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., h, w) float32 -> (..., height, width) float32: ``F.interpolate(bilinear, align_corners=False)``.

    No antialias (what the authors' ttach calls do); same taps as PyTorch, separable (x, then y).
    A resize to the same size returns the input unchanged.
    """
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    x0, x1, fx = source_coords(width, w)
    along_x = x[..., x0] * (1.0 - fx) + x[..., x1] * fx  # (..., h, width)
    y0, y1, fy = source_coords(height, h)
    fy = fy[:, None]
    return np.ascontiguousarray(along_x[..., y0, :] * (1.0 - fy) + along_x[..., y1, :] * fy, dtype=np.float32)


def hflip(x: np.ndarray) -> np.ndarray:
    """(..., h, w) -> the same, mirrored left-right (contiguous copy)."""
    return np.ascontiguousarray(x[..., ::-1])


def flip_logits(run: Runner, batch: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) -> (B, 1, S, S): mean of the logits of the batch and of its mirror (one call, 2B)."""
    b = batch.shape[0]
    out = run(np.concatenate([batch, hflip(batch)]))  # (2B, 1, S, S)
    return (out[:b] + hflip(out[b:])) * np.float32(0.5)


def paper_logits(runs: dict[int, Runner], batch: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) -> (B, 1, S, S): the authors' six-pass average; ``runs[size]`` runs the model at size.

    Each scale is one call on 2B images (the batch and its mirror). The sum follows ttach's order
    (no flip at 0.75, 1, 1.25, then flipped), then divides by 6, as ttach's mean merge does.
    """
    b, _, s, _ = batch.shape
    plain, flipped = [], []
    for size in paper_sizes(s):
        x = resize_bilinear(batch, size, size)  # (B, 3, size, size)
        out = runs[size](np.concatenate([x, hflip(x)]))  # (2B, 1, size, size)
        plain.append(resize_bilinear(out[:b], s, s))
        flipped.append(hflip(resize_bilinear(out[b:], s, s)))
    total = np.zeros_like(plain[0])
    for term in plain + flipped:
        total += term
    return total / np.float32(len(plain) + len(flipped))


class TTA:
    """Run (B, 3, S, S) normalised batches through ``backend`` with augmentation ``mode``.

    ``model_path``: the file ``backend`` was loaded from; ``paper`` on a graph or engine loads
    the other scales from its siblings (``sized_path``) with the same ``device``/``dtype``.
    Calling returns float32 (B, 1, S, S) logits, as ``backend.infer`` does.
    """

    def __init__(
        self,
        mode: str,
        backend: Backend,
        model_path: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        if mode not in TTA_MODES:
            raise MgdRtError(f"--tta {mode}: choose from {', '.join(TTA_MODES)}")
        self.mode = mode
        self.backend = backend
        self.codes = ""  # how MCEM's codes are computed in paper mode, for describe()
        self._owned: list[Backend] = []  # sibling backends this object loaded (closed by close())
        self._runs: dict[int, Runner] = {}
        self._grid = nullcontext
        if mode != "paper":
            return
        sizes = paper_sizes(backend.image_size)
        if getattr(backend, "model", None) is not None and backend.name == "torch":
            self._setup_torch(sizes)
        else:
            self._setup_siblings(sizes, model_path, device, dtype)

    # paper on PyTorch: every scale in the one model, the quirk reproduced ------------------
    def _setup_torch(self, sizes: tuple[int, ...]) -> None:
        from mgd_rt.model.mcem import mcem_code_grid

        backend = self.backend
        # run_unchecked skips the (B, 3, S, S) shape check: the module runs at any size (the batch
        # was checked at S before scaling)
        for size in sizes:
            self._runs[size] = backend.run_unchecked
        self._grid = lambda: mcem_code_grid(backend.model, sizes[0])  # type: ignore[attr-defined]
        self.codes = f"MCEM codes from the {sizes[0]} grid (the authors' quirk)"

    # paper on graphs / engines: one artifact per scale -------------------------------------
    def _setup_siblings(
        self, sizes: tuple[int, ...], model_path: str | Path | None, device: str | None, dtype: str | None
    ) -> None:
        from mgd_rt.runtime.backends import load_backend

        base = self.backend
        if model_path is None:
            raise MgdRtError("--tta paper on a graph or engine needs the model's file name to find its other scales")
        found: dict[int, Backend] = {}
        for size in sizes:
            if size == base.image_size:
                found[size] = base
                continue
            path = sized_path(model_path, size)
            if not path.is_file():
                plain = unsized_name(model_path)
                raise MgdRtError(
                    f"--tta paper: {Path(model_path).name} needs a graph per scale ({', '.join(map(str, sizes))}); "
                    f"{path} is missing. Export them with: mgd-rt export --image-size "
                    f"{','.join(map(str, sizes))} --paper-codes -o {plain}"
                )
            other = load_backend(path, base.name, device, dtype, base.check_inputs)
            self._owned.append(other)
            if other.image_size != size:
                raise MgdRtError(f"{path}: its image_size is {other.image_size}, its name says {size}")
            if (other.variant, other.precision) != (base.variant, base.precision):
                raise MgdRtError(f"{path}: {other.variant} {other.precision}, but {model_path} is "
                                 f"{base.variant} {base.precision}; export every scale from the same model")
            found[size] = other
        metas = {size: b.metadata for size, b in found.items()}
        shas = {m.get("checkpoint_sha256") for m in metas.values()}
        if len(shas) > 1:
            raise MgdRtError(f"--tta paper: the per-scale artifacts of {model_path} come from different checkpoints")
        code_sizes = {m.get(CODE_SIZE_KEY) for m in metas.values()}
        if code_sizes == {str(sizes[0])}:
            self.codes = f"MCEM codes from the {sizes[0]} grid (the authors' quirk, baked at export)"
        elif code_sizes == {None}:
            # recorded, not hidden: these artifacts give per-size codes, not the paper's numbers
            self.codes = "MCEM codes at each scale's own size (NOT the authors' quirk: export with --paper-codes)"
        else:
            raise MgdRtError(f"--tta paper: the per-scale artifacts of {model_path} disagree on {CODE_SIZE_KEY} "
                             f"({sorted(map(str, code_sizes))}); re-export them together")
        for size, b in found.items():
            # each graph checks its own (B, 3, size, size) input
            self._runs[size] = b.infer

    # running -------------------------------------------------------------------------------
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 normalised -> (B, 1, S, S) float32 logits."""
        if self.mode == "none":
            return self.backend.infer(batch)
        if self.mode == "flip":
            return flip_logits(self.backend.infer, batch)
        if self.backend.check_inputs:
            self.backend.check(batch)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._grid():
            return paper_logits(self._runs, batch)

    def passes(self) -> int:
        """Model passes per image: 1, 2 or 6."""
        return {"none": 1, "flip": 2, "paper": 6}[self.mode]

    def describe(self) -> str:
        if self.mode == "none":
            return "no TTA"
        if self.mode == "flip":
            return "TTA flip (original + mirror, 2 passes)"
        sizes = ", ".join(map(str, sorted(self._runs)))
        return f"TTA paper (flip x scales {sizes}, 6 passes; {self.codes})"

    def close(self) -> None:
        for b in self._owned:
            b.close()
        self._owned.clear()


__all__ = ["PAPER_SCALES", "TTA", "TTA_MODES", "flip_logits", "hflip", "paper_logits", "paper_sizes",
           "resize_bilinear"]
