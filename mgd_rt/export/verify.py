"""Verification: run a graph with ONNX Runtime on the CPU and compare with the PyTorch model.

Inputs: real photos (scikit-image's sample data, or a folder of images) resized to S x S and
normalised like the runtime does, plus seeded random input. Measures and tolerances are
``mgd_rt.numerics``'s, per the graph's precision (metadata ``precision``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import metadata_floats
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_FORMAT_KEY, INPUT_NAME, OUTPUT_NAME, PIXEL_INPUT
from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import Comparison, compare_logits
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session
from mgd_rt.runtime.processing import normalise_batch, to_pixels
from mgd_rt.runtime.samples import VERIFY_PHOTOS, network_inputs, sample_photos

log = logging.getLogger("mgd_rt")

@dataclass
class VerifyReport:
    """Every comparison of one artifact against the PyTorch model; truthy when all pass."""

    artifact: str
    precision: str
    comparisons: list[Comparison] = field(default_factory=list)
    seconds: float = 0.0
    runner: str = "ONNX Runtime CPU"

    @property
    def passed(self) -> bool:
        return all(self.comparisons)

    def __bool__(self) -> bool:
        return self.passed

    def lines(self) -> list[str]:
        head = f"verify {self.artifact} ({self.precision}) against PyTorch FP32, {self.runner}"
        verdict = "PASS" if self.passed else "FAIL"
        return [head, *(c.row() for c in self.comparisons), f"{verdict} in {self.seconds:.1f} s"]

    def as_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "precision": self.precision,
            "passed": self.passed,
            "comparisons": [c.as_dict() for c in self.comparisons],
        }


def verify(
    artifact: str | Path,
    checkpoint: str | Path | None = None,
    images: str | Path | None = None,
    model=None,
    random_batch: int = 2,
) -> VerifyReport:
    """Compare ``artifact`` (.onnx, .engine on the TensorRT backend, or an AOTInductor .pt2 package on the
    device it was compiled for) with the PyTorch model.

    Inputs: photos and random input. The variant, size and precision come from the graph's
    metadata (an engine's: its sidecar, which carries the source graph's; a package's: its own); ``checkpoint`` must be
    the one the graph was exported from (its sha256 is checked), None for seeded weights.
    ``model`` skips loading when the caller already has the eager model. Photos run one at a
    time; the random input is (random_batch, 3, S, S), or the graph's fixed batch.
    """
    import onnx
    import torch

    from mgd_rt.artifacts import file_sha256
    from mgd_rt.checkpoint import load_model
    from mgd_rt.export.graph import read_metadata

    start = time.perf_counter()
    path = Path(artifact)
    if path.suffix not in (".onnx", ".engine", ".pt2"):
        raise MgdRtError(f"{path}: verify takes an .onnx graph, a TensorRT .engine (with its sidecar) or an "
                         "AOTInductor .pt2 package")
    if not path.is_file():
        raise MgdRtError(f"{path}: no such file")
    if path.suffix == ".engine":
        from mgd_rt.artifacts import read_sidecar

        sidecar = read_sidecar(path)
        meta = {**sidecar["source"].get("metadata", {}), "precision": sidecar["precision"]}
    elif path.suffix == ".pt2":
        from mgd_rt.runtime.backends.aoti_backend import read_package_metadata

        meta = read_package_metadata(path)
    else:
        try:
            meta = read_metadata(onnx.load(str(path), load_external_data=False))
        except Exception as exc:
            raise MgdRtError(f"{path}: not a readable ONNX graph ({exc})") from exc
    for key in ("variant", "image_size", "precision", "checkpoint_sha256"):
        if key not in meta:
            raise MgdRtError(f"{path}: metadata '{key}' missing; export it with mgd-rt export")
    size, precision = int(meta["image_size"]), meta["precision"]
    expected = meta["checkpoint_sha256"]
    if checkpoint is None and expected != "untrained":
        raise MgdRtError(f"{path} was exported from a checkpoint (sha256 {expected[:12]}...): pass --checkpoint")
    if checkpoint is not None and expected != (actual := file_sha256(checkpoint)):
        raise MgdRtError(
            f"{checkpoint} (sha256 {actual[:12]}...) is not the checkpoint {path.name} was exported from "
            f"({expected[:12]}...)"
        )
    if model is None:
        model = load_model(checkpoint, meta["variant"], size)
    pixels = meta.get(INPUT_FORMAT_KEY) == PIXEL_INPUT
    mean, std = metadata_floats(meta.get("mean"), IMAGENET_MEAN), metadata_floats(meta.get("std"), IMAGENET_STD)

    def feed(x: np.ndarray) -> np.ndarray:  # what the graph's input takes: the pixels x was made from, or x
        return to_pixels(x, mean, std) if pixels else x

    engine = None
    if path.suffix == ".engine":
        from mgd_rt.runtime.backends.tensorrt_backend import TensorRTBackend

        engine = TensorRTBackend(path)
        fixed_batch = engine.max_batch if engine.min_batch == engine.max_batch else None
        run, runner = engine.infer, engine.describe()
    elif path.suffix == ".pt2":
        from mgd_rt.runtime.backends.aoti_backend import AOTIBackend

        engine = AOTIBackend(path)  # on the device it was compiled for; refuses another torch or machine
        fixed_batch = engine.max_batch if engine.min_batch == engine.max_batch else None
        run, runner = engine.infer, engine.describe()
    else:
        session = ort_session(path, log_severity=3)  # errors only: ORT warns about FP16 Cast placement
        fixed_batch = session.get_inputs()[0].shape[0]
        fixed_batch = fixed_batch if isinstance(fixed_batch, int) else None
        run, runner = (lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: feed(x)})[0]), "ONNX Runtime CPU"

    if images is not None:
        inputs = network_inputs(images, size)
    else:
        inputs = network_inputs(sample_photos(VERIFY_PHOTOS, hint="install the dev extra (pip install -e "
                                              "'.[dev]') or pass --images DIR"), size)
    rng = np.random.default_rng(0)
    n_random = fixed_batch or random_batch
    if pixels:  # a pixel input takes 8-bit values only: random pixels, normalised for the PyTorch model
        random_input = normalise_batch(rng.integers(0, 256, (n_random, size, size, 3), dtype=np.uint8), mean, std)
    else:
        random_input = rng.standard_normal((n_random, 3, size, size)).astype(np.float32)
    inputs.append((f"random x{n_random}", random_input))
    report = VerifyReport(path.name, precision, runner=runner)
    for name, x in inputs:
        batch = x
        if fixed_batch and x.shape[0] != fixed_batch:
            batch = np.repeat(x, fixed_batch, axis=0)  # a fixed-batch graph: repeat the photo
        with torch.no_grad():
            reference = model(torch.from_numpy(batch)).numpy()
        candidate = run(batch)
        comparison = compare_logits(reference, candidate, tolerance=precision, name=name)
        log.info("  %s", comparison.row())
        report.comparisons.append(comparison)
    if engine is not None:
        engine.close()
    report.seconds = time.perf_counter() - start
    return report
