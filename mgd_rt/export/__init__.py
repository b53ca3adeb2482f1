"""Export stage: PyTorch model -> model.onnx (FP32 master) [+ model.fp16.onnx], verified.

``export_onnx`` is the one entry point (``mgd-rt export`` and ``python export/to_onnx.py``
are thin over it); ``verify`` compares any exported graph with the PyTorch model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mgd_rt.artifacts import (
    CODE_SIZE_KEY,
    DRM_INPUTS_KEY,
    UNTRAINED,
    atomic_write,
    check_output_path,
    file_sha256,
    format_floats,
    fp16_path,
    sized_path,
)
from mgd_rt.errors import MgdRtError
from mgd_rt.export.verify import VerifyReport, verify
from mgd_rt.machine import peak_rss_mb

log = logging.getLogger("mgd_rt")

__all__ = ["MAX_NODES", "ExportResult", "VerifyReport", "export_onnx", "export_onnx_sizes", "model_metadata",
           "save_graph", "verify"]

# hygiene rule for B+ at S=1024: fewer nodes than this (tests assert it)
MAX_NODES = 2500
# protobuf's hard limit; bigger graphs need external data
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class ExportResult:
    """What export_onnx wrote and measured."""

    path: Path
    fp16_path: Path | None
    variant: str
    image_size: int
    batch: int | None
    opset: int
    checkpoint_sha256: str
    nodes_exported: int = 0
    nodes_final: int = 0
    shape_rewrites: int = 0
    file_bytes: int = 0
    fp16_file_bytes: int = 0
    fp16_nodes: int = 0
    used_param_bytes: int = 0
    all_param_bytes: int = 0
    constant_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    report: object = None
    verification: list[VerifyReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(self.verification)

    def lines(self) -> list[str]:
        mb = 1e6
        r = self.report
        out = [
            f"wrote {self.path} ({self.file_bytes / mb:.1f} MB), variant {self.variant}, S={self.image_size}, "
            f"batch {self.batch or 'dynamic'}, opset {self.opset}",
            f"  input image {r.input_shape} {r.input_dtype} -> mask_logits {r.output_shape} float32",
            f"  nodes: {self.nodes_exported} exported -> {self.nodes_final} final "
            f"({self.shape_rewrites} shape rewrites); Shape nodes {r.shape_nodes} (batch only); "
            f"If/Loop/Mod: {sum(r.forbidden.values())}",
            f"  size: file {self.file_bytes / mb:.2f} MB vs used FP32 parameters {self.used_param_bytes / mb:.2f} MB "
            f"(all {self.all_param_bytes / mb:.2f} MB; unused adapters dropped) + precomputed codes "
            f"{self.constant_bytes / mb:.2f} MB",
        ]
        if self.fp16_path:
            out.append(f"wrote {self.fp16_path} ({self.fp16_file_bytes / mb:.1f} MB, {self.fp16_nodes} nodes)")
        for report in self.verification:
            out.extend("  " + line for line in report.lines())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        out.append(f"time: {steps}; peak memory {self.peak_rss_mb:.0f} MB")
        verdict = "PASS" if self.passed else "FAIL"
        out.append(f"{verdict}: export in {sum(self.timings.values()):.1f} s" if self.verification
                   else f"done (not verified) in {sum(self.timings.values()):.1f} s")
        return out


def model_metadata(model, checkpoint_sha256: str, precision: str) -> dict[str, str]:
    """The metadata every exported artifact of ``model`` carries (artifacts.METADATA_KEYS but the
    format's own, e.g. opset): variant, S, normalisation, ``precision``, mgd-rt version, source hash.
    One place, so an ONNX graph and an AOTInductor package of the same model say the same."""
    from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
    from mgd_rt.version import __version__

    return {
        "variant": model.variant.name,
        "image_size": str(model.image_size),
        "mean": format_floats(IMAGENET_MEAN),
        "std": format_floats(IMAGENET_STD),
        "precision": precision,
        "mgd_rt_version": __version__,
        "checkpoint_sha256": checkpoint_sha256,
    }


def save_graph(model, path: Path) -> int:
    """Write the ONNX ``model`` to ``path`` atomically (mgd_rt.artifacts.atomic_write); returns the size."""
    import onnx

    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise MgdRtError(f"{path}: graph over 2 GB; external-data export is not implemented")
    with atomic_write(path) as tmp:
        onnx.save_model(model, tmp)
    return path.stat().st_size


def export_onnx(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    output: str | Path = "model.onnx",
    fp16: bool = False,
    batch: int | None = None,
    opset: int | None = None,
    verify_graph: bool = True,
    images: str | Path | None = None,
    code_grid_size: int | None = None,
    pixel_input: bool = False,
) -> ExportResult:
    """Export MGD-SAM2 to ``output`` (FP32) and, with ``fp16``, ``fp16_path(output)``.

    The graph: image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S); B dynamic
    unless ``batch`` fixes it. ``pixel_input``: image is uint8 (B, S, S, 3) RGB instead, normalised
    inside the graph (metadata input_format uint8; the runtime then sends pixels).
    Metadata props per artifacts.METADATA_KEYS. Files are written
    under temporary names and renamed, so an error leaves nothing half-written.
    ``code_grid_size``: bake the authors' TTA quirk, MCEM codes derived from that input size's
    grid (recorded as the ``mcem_code_size`` prop; see mgd_rt.runtime.tta).
    """
    import onnx

    from mgd_rt.checkpoint import load_model
    from mgd_rt.contract import INPUT_FORMAT_KEY, INPUT_NAME, PIXEL_INPUT
    from mgd_rt.export import graph as graphs
    from mgd_rt.export.torch_export import DEFAULT_OPSET, torch_to_onnx, used_parameter_bytes
    from mgd_rt.model.mcem import mcem_code_grid
    from mgd_rt.model.mgd_sam2 import DRM_MODULE

    output = Path(output)
    check_output_path(output, ".onnx")
    if batch is not None and batch < 1:
        raise MgdRtError(f"--batch {batch}: use a positive batch size or 'dynamic'")
    opset = opset or DEFAULT_OPSET
    if not 17 <= opset <= 23:
        raise MgdRtError(f"--opset {opset}: use 17..23 (LayerNormalization needs 17)")
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        log.info("%s: %.1f s", name, timings[name])

    t0 = time.perf_counter()
    if code_grid_size is not None and (code_grid_size < 64 or code_grid_size % 64):
        raise MgdRtError(f"code grid size {code_grid_size}: must be a model size (a multiple of 64)")
    model = load_model(checkpoint, variant, image_size)
    sha = file_sha256(checkpoint) if checkpoint is not None else UNTRAINED
    if checkpoint is None:
        log.warning("exporting SEEDED UNTRAINED weights (no --checkpoint): for benchmarks only")
    step("load", t0)
    used, total, _ = used_parameter_bytes(model)
    result = ExportResult(output, fp16_path(output) if fp16 else None, model.variant.name, model.image_size,
                          batch, opset, sha, used_param_bytes=used, all_param_bytes=total)

    t0 = time.perf_counter()
    log.info("exporting %s at S=%d (dynamo exporter, opset %d)...", model.variant.name, model.image_size, opset)
    with mcem_code_grid(model, code_grid_size):  # the authors' TTA quirk, when asked for
        proto = torch_to_onnx(model, batch, opset, pixel_input)
    result.nodes_exported = len(proto.graph.node)
    # read while the exporter's node metadata says which module each node came from (simplify drops it)
    drm_reads = graphs.module_inputs(proto, DRM_MODULE)
    step("export", t0)

    t0 = time.perf_counter()
    proto, result.shape_rewrites = graphs.pin_static_shapes(proto)
    step("rewrite", t0)
    t0 = time.perf_counter()
    proto = graphs.simplify(proto)
    log.info("merged %d duplicate constants", graphs.deduplicate_initializers(proto))
    step("simplify", t0)

    t0 = time.perf_counter()
    props = {**model_metadata(model, sha, "fp32"), "opset": str(opset)}
    if code_grid_size is not None:
        props[CODE_SIZE_KEY] = str(code_grid_size)
    if pixel_input:
        props[INPUT_FORMAT_KEY] = PIXEL_INPUT
    graphs.set_metadata(proto, props)
    # the shapes the passes left behind hold duplicates whose number follows Python's hash seed
    # (1,315 or 1,391 entries for 1,111 tensors on tiny): keep each tensor's first, so every export of
    # the same model is the same file (clearing them would lose shapes ONNX's inference cannot derive)
    graphs.drop_duplicate_shapes(proto)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    drm_cut = [name for name in graphs.float_tensors(proto, drm_reads) if name != INPUT_NAME]
    if drm_cut:
        props[DRM_INPUTS_KEY] = ",".join(drm_cut)
        graphs.set_metadata(proto, {DRM_INPUTS_KEY: props[DRM_INPUTS_KEY]})
    else:  # a later exporter or simplifier may rename them: the graph stays valid, OpenVINO bf16 refuses it
        log.warning("the DRM's inputs (%s) are not tensors of the simplified graph: no %s prop",
                    ", ".join(drm_reads) or "none found", DRM_INPUTS_KEY)
    onnx.checker.check_model(proto, full_check=True)
    result.report = graphs.graph_report(proto)
    result.nodes_final = result.report.nodes
    result.constant_bytes = max(0, result.report.initializer_bytes - used)
    step("check", t0)

    fp16_proto = None
    if fp16:
        from mgd_rt.export.fp16 import to_fp16

        t0 = time.perf_counter()
        fp16_proto = to_fp16(proto)
        graphs.set_metadata(fp16_proto, {**props, "precision": "fp16"})
        onnx.checker.check_model(fp16_proto, full_check=True)
        result.fp16_nodes = len(fp16_proto.graph.node)
        step("fp16", t0)

    t0 = time.perf_counter()
    result.file_bytes = save_graph(proto, output)
    if fp16_proto is not None:
        result.fp16_file_bytes = save_graph(fp16_proto, result.fp16_path)
    step("save", t0)

    if verify_graph:
        t0 = time.perf_counter()
        for path in [output] + ([result.fp16_path] if fp16 else []):
            log.info("verifying %s with ONNX Runtime (CPU)...", path.name)
            with mcem_code_grid(model, code_grid_size):
                result.verification.append(verify(path, checkpoint, images, model=model))
        step("verify", t0)
    result.timings = timings
    result.peak_rss_mb = peak_rss_mb()
    return result


def export_onnx_sizes(
    image_sizes: list[int],
    output: str | Path = "model.onnx",
    paper_codes: bool = False,
    **kwargs,
) -> list[ExportResult]:
    """One graph per size, ``model.s<S>.onnx`` beside ``output`` (what ``--tta paper`` loads).

    ``paper_codes``: every graph's MCEM codes come from the smallest size's grid, as in the
    authors' TTA run (first call at 0.75S). Other arguments as :func:`export_onnx`.
    """
    sizes = sorted(set(image_sizes))
    if paper_codes and len(sizes) < 2:
        raise MgdRtError("--paper-codes needs the list of TTA sizes, e.g. --image-size 768,1024,1280")
    code = sizes[0] if paper_codes else None
    return [export_onnx(image_size=size, output=sized_path(output, size), code_grid_size=code, **kwargs)
            for size in sizes]
