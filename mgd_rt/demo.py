"""``demo``: the whole pipeline offline on the photos scikit-image ships.

Load (a checkpoint, or seeded UNTRAINED weights), export to ONNX, verify ONNX Runtime against
PyTorch on a real photo, segment the photos with ONNX Runtime and write overlays, then print
the parity and latency table. Needs the ``export`` extra (torch) and scikit-image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.image_io import save_image
from mgd_rt.runtime.samples import DEMO_PHOTOS, sample_photos

log = logging.getLogger("mgd_rt")


@dataclass
class DemoReport:
    onnx_path: Path
    outputs: list[Path]
    parity: object  # mgd_rt.numerics.Comparison
    torch_seconds: float  # per image, model + pre/post, batch 1
    ort_seconds: float
    export_seconds: float
    describe: str
    lines: list[str] = field(default_factory=list)


def demo(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    outdir: str | Path = "mgd-rt-demo",
    photos: int = len(DEMO_PHOTOS),
) -> DemoReport:
    """Run the demo into ``outdir`` (model.onnx, photos/, overlays/) and return its report."""
    names = DEMO_PHOTOS[: max(1, photos)]
    samples = sample_photos(names, hint="the demo's photos come from it")
    try:
        from mgd_rt.export import export_onnx
    except ImportError as exc:
        raise MgdRtError(f"the demo exports to ONNX, which needs the export extra ({exc})") from None
    from mgd_rt.checkpoint import load_model
    from mgd_rt.numerics import compare_logits
    from mgd_rt.runtime.infer import infer
    from mgd_rt.runtime.segmenter import Segmenter

    outdir = Path(outdir)
    (outdir / "photos").mkdir(parents=True, exist_ok=True)
    for name, rgb in samples:
        save_image(Image.fromarray(rgb), outdir / "photos" / f"{name}.png", "PNG")

    t0 = time.perf_counter()
    exported = export_onnx(checkpoint, variant, image_size, output=outdir / "model.onnx", verify_graph=False)
    export_seconds = time.perf_counter() - t0

    model = load_model(checkpoint, variant=variant, image_size=exported.image_size)
    torch_seg = Segmenter(model, device="cpu")
    ort_seg = Segmenter(exported.path, device="cpu")
    photo = samples[0][1]
    for seg in (torch_seg, ort_seg):  # warm-up: first calls pay for allocation and kernel choice
        next(iter(seg.stream([photo])))
    t0 = time.perf_counter()
    (ref,) = torch_seg.stream([photo])
    torch_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    (cand,) = ort_seg.stream([photo])
    ort_seconds = time.perf_counter() - t0
    parity = compare_logits(ref.logits, cand.logits, "fp32", f"onnxruntime vs torch ({names[0]})")

    summary = infer(ort_seg, [outdir / "photos"], outdir / "overlays", format="overlay", overwrite=True)
    if summary.failed:
        raise MgdRtError(f"segmenting the demo photos failed: {summary.failed[0]}")
    weights = "trained checkpoint" if checkpoint else "UNTRAINED seeded weights: masks are meaningless"
    lines = [
        f"model      MGD-SAM2 {exported.variant} at {exported.image_size} ({weights})",
        f"export     {exported.path} in {export_seconds:.1f} s",
        f"parity     {parity.row()}",
        "latency    per image, batch 1, CPU, after one warm-up, resize + model:",
        f"             torch FP32        {torch_seconds:7.2f} s",
        f"             onnxruntime FP32  {ort_seconds:7.2f} s  ({ort_seg.backend.describe()})",
        f"overlays   {len(summary.written)} in {outdir / 'overlays'} ({summary.images_per_second:.2f} images/s)",
    ]
    return DemoReport(exported.path, summary.written, parity, torch_seconds, ort_seconds, export_seconds,
                      ort_seg.describe(), lines)
