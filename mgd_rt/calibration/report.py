"""INT8 vs FP32 on held-out images: the measures of mgd_rt.numerics, ONNX Runtime on the CPU, and the speed.

The report also says what ran: the CPU's ISA class (which decides ONNX Runtime's integer kernels),
the session settings that change integer results, and the op types ONNX Runtime fused the INT8
graph into (``runtime_facts``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import INT8_CHECK_KEY, INT8_CHECKED_ON_KEY, write_json_atomic
from mgd_rt.calibration import data as calib_data
from mgd_rt.calibration.check_backend import CheckBackend
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
from mgd_rt.errors import MgdRtError
from mgd_rt.machine import VNNI_ISAS, cpu_info, cpu_isa
from mgd_rt.numerics import TOLERANCES, Comparison, Tolerance, compare_logits
from mgd_rt.runtime.samples import HOLDOUT_PHOTOS

log = logging.getLogger("mgd_rt")

# the ops of ONNX Runtime's optimized CPU graph the report counts: integer kernels, Q/DQ left
# unfused, and the float compute ops (a quantized node ORT did not fuse runs as one of those)
INTEGER_OPS = ("QLinearConv", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
               "DynamicQuantizeMatMul", "QLinearAdd", "QLinearSoftmax")
KERNEL_OPS = INTEGER_OPS + ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Conv", "FusedConv",
                            "NchwcConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm")
# session config entries that change integer results on some CPUs (read back from the session)
INTEGER_SESSION_KEYS = ("session.x64quantprecision", "session.qdqisint8allowed", "session.disable_quant_qdq")


def runtime_facts(session, model: str | Path | bytes) -> dict:
    """What ONNX Runtime ran ``model`` with: CPU, ISA class, integer-relevant session settings, fused ops.

    ``session``: the InferenceSession that ran ``model``. Its own options are read back and reused
    for one more session that saves ONNX Runtime's optimized graph, whose op types are counted
    (QLinearConv, MatMulIntegerToFloat: integer kernels; MatMul, Conv: float ones), as is the
    number of S8 weights ONNX Runtime turned into U8 for its exact U8 x U8 kernels
    (``*_s8_2_u8`` initializers: where ``session.x64quantprecision`` is 1, which ``ort_session`` sets on CPUs
    without VNNI, and MLAS reports that its U8 x S8 kernels could overflow).
    """
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    cpu = cpu_info()
    isa = cpu_isa(cpu["flags"])
    options = session.get_session_options()
    settings: dict[str, str] = {}
    for key in INTEGER_SESSION_KEYS:
        try:
            settings[key] = options.get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default applies
            settings[key] = "unset"
    with tempfile.TemporaryDirectory(prefix="mgd-rt-ortopt-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # ORT warns that an ENABLE_ALL graph is hardware specific: known
        ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                             providers=session.get_providers())
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    exact = isa in VNNI_ISAS or not isa.startswith("avx")
    return {
        "cpu": cpu["model"], "isa": isa, "cpu_flags": cpu["flags"],
        "u8s8_exact": exact,
        "note": ("VNNI: MLAS's U8 x S8 kernels sum in 32 bits (exact)" if exact and isa != "other" else
                 "no VNNI: MLAS's U8 x S8 kernels can saturate; session.x64quantprecision=1 makes ONNX Runtime "
                 "convert S8 weights to U8 for its exact U8 x U8 kernels" if isa.startswith("avx") else
                 "not an x86 CPU with AVX2: MLAS's integer kernels for this CPU"),
        "onnxruntime": ort.__version__,
        "providers": session.get_providers(),
        "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
        "intra_op_num_threads": options.intra_op_num_threads or None,
        "session_config": settings,
        "optimized_ops": {op: ops[op] for op in KERNEL_OPS if ops[op]},
        # weights only (their per-channel zero points get the same suffix)
        "s8_to_u8_weights": sum(t.name.endswith("_s8_2_u8") and len(t.dims) >= 2 for t in optimized.graph.initializer),
    }


def openvino_facts(description: str) -> dict:
    """What OpenVINO ran an INT8 graph with: CPU, ISA class, and the backend's own description."""
    cpu = cpu_info()
    return {"cpu": cpu["model"], "isa": cpu_isa(cpu["flags"]), "cpu_flags": cpu["flags"], "backend": description}


def runtime_line(facts: dict) -> str:
    """One line for the printed report: ISA, the precision setting, and the integer kernels used."""
    if "onnxruntime" not in facts:
        return f"ran on: {facts['cpu']} ({facts['isa']}), {facts['backend']}"
    ops = facts["optimized_ops"]
    integer = ", ".join(f"{op} x{n}" for op, n in ops.items()
                        if op in INTEGER_OPS) or "no integer kernels"
    return (f"ran on: {facts['cpu']} ({facts['isa']}; U8S8 {'exact' if facts['u8s8_exact'] else 'may saturate'}), "
            f"ONNX Runtime {facts['onnxruntime']}, session.x64quantprecision="
            f"{facts['session_config']['session.x64quantprecision']}, {facts['s8_to_u8_weights']} weights S8->U8; "
            f"kernels: {integer}")


@dataclass
class AccuracyReport:
    """INT8 against FP32 per held-out image, run on ``check_on`` (ONNX Runtime or OpenVINO, CPU); truthy when
    all are within ``tolerance`` (TOLERANCES['int8'])."""

    fp32: str
    int8: str
    metadata: dict[str, str]
    images: list[str]
    comparisons: list[Comparison] = field(default_factory=list)
    fp32_ms: float | None = None
    int8_ms: float | None = None
    threads: int | None = None
    tolerance: Tolerance = field(default_factory=lambda: TOLERANCES["int8"])
    runtime: dict | None = None  # runtime_facts (or openvino_facts) of the INT8 run
    check_on: CheckBackend = field(default_factory=CheckBackend)  # where the INT8 graph ran
    backend: str = "ONNX Runtime CPU"  # and that runtime's own words for it
    # the held-out inputs (N, 3, S, S) and FP32 logits (N, 1, S, S), kept for accuracy recovery (not saved)
    inputs: np.ndarray | None = field(default=None, repr=False)
    references: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(self.comparisons)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def worst(self) -> dict[str, float]:
        """The worst value of each measure over the held-out images."""
        c = self.comparisons
        return {
            "sigmoid_mae": max(x.sigmoid_mae for x in c),
            "iou_top10": min(x.iou_top10 for x in c),
            "iou_05": min(x.iou_05 for x in c),
            "max_rel_std": max(x.max_rel_std for x in c),
        }

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def lines(self) -> list[str]:
        out = [f"INT8 {self.int8} vs FP32 {self.fp32} on {len(self.images)} held-out images, {self.backend} "
               f"(tolerance: {describe_tolerance(self.tolerance)})"]
        out += [c.row() for c in self.comparisons]
        w = self.worst
        out.append(f"worst: sigmoid MAE {w['sigmoid_mae']:.2e}, IoU top10% {w['iou_top10']:.4f}, "
                   f"IoU@0.5 {w['iou_05']:.4f}, max|d|/std {w['max_rel_std']:.3f}")
        if self.speedup:
            out.append(f"speed (batch 1, {self.threads} threads, best of runs): FP32 {self.fp32_ms:.0f} ms, "
                       f"INT8 {self.int8_ms:.0f} ms, {self.speedup:.2f}x")
        if self.runtime:
            out.append(runtime_line(self.runtime))
        out.append("PASS" if self.passed else f"FAIL: a held-out image is outside {describe_tolerance(self.tolerance)} "
                   "(rows above)")
        return out

    def as_dict(self) -> dict:
        return {
            "fp32": self.fp32, "int8": self.int8, "metadata": self.metadata, "images": self.images,
            "tolerance": vars(self.tolerance), "passed": self.passed, "worst": self.worst,
            "comparisons": [c.as_dict() for c in self.comparisons],
            "speed": {"fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms, "speedup": self.speedup,
                      "threads": self.threads, "cpu_count": os.cpu_count()},
            "backend": self.backend, "runtime": self.runtime,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (nothing is left behind on an error)."""
        return write_json_atomic(path, self.as_dict())


def record_check(int8_path: str | Path, report: AccuracyReport) -> None:
    """Write where ``report`` checked the INT8 graph at ``int8_path`` and its verdict into the graph's metadata
    (artifacts.INT8_CHECKED_ON_KEY, INT8_CHECK_KEY), so a runtime that runs it elsewhere can say so."""
    import onnx

    from mgd_rt.export import save_graph
    from mgd_rt.export.graph import set_metadata

    path = Path(int8_path)
    model = onnx.load(str(path))
    set_metadata(model, {INT8_CHECKED_ON_KEY: report.check_on.key, INT8_CHECK_KEY: "pass" if report.passed else "fail"})
    save_graph(model, path)


def describe_tolerance(tol: Tolerance) -> str:
    """``tol`` as the report prints it, e.g. "sigmoid MAE <= 0.01, IoU top10% >= 0.97"."""
    parts = []
    if tol.max_rel_std is not None:
        parts.append(f"max|d|/std <= {tol.max_rel_std}")
    if tol.sigmoid_mae is not None:
        parts.append(f"sigmoid MAE <= {tol.sigmoid_mae}")
    if tol.iou_top10 is not None:
        parts.append(f"IoU top10% >= {tol.iou_top10}")
    return ", ".join(parts) or "none"


def accuracy_report(
    fp32_path: str | Path,
    int8_path: str | Path,
    images: str | Path | None = None,
    num_images: int = 6,
    calibration_images: str | Path | None = None,
    timing_runs: int = 0,
    threads: int | None = None,
    tolerance: Tolerance | None = None,
    runtime: bool = True,
    reuse: AccuracyReport | None = None,
    check_on: CheckBackend | None = None,
) -> AccuracyReport:
    """Compare ``int8_path`` with ``fp32_path`` on held-out images, one (1, 3, S, S) at a time.

    ``images`` None: scikit-image's held-out photos (never in the default calibration set).
    With a folder, files whose content equals a file of ``calibration_images`` are left out.
    ``timing_runs`` > 0 also times both graphs (batch 1, best of that many runs). ``tolerance``:
    what passes (default TOLERANCES['int8']). ``runtime``: record ``runtime_facts`` (one more
    session of the INT8 graph, to read ONNX Runtime's optimized graph). ``reuse``: an earlier
    report on the same FP32 graph whose held-out inputs, FP32 logits and FP32 latency are taken
    as they are (``images`` and ``num_images`` are then ignored): another INT8 graph, checked on
    exactly the same images without running FP32 again. ``check_on``: where the INT8 graph runs (default:
    ONNX Runtime's CPU kernels with ``threads``); the FP32 logits are ONNX Runtime's either way.
    """
    import onnx

    from mgd_rt.artifacts import metadata_floats
    from mgd_rt.export.graph import read_metadata

    for path in (fp32_path, int8_path):
        if not Path(path).is_file():
            raise MgdRtError(f"{path}: no such file")
    meta = read_metadata(onnx.load(str(int8_path), load_external_data=False))
    if meta.get("precision") != "int8":
        raise MgdRtError(f"{int8_path}: metadata precision is {meta.get('precision')!r}, not int8")
    size = int(meta["image_size"])
    mean, std = metadata_floats(meta.get("mean"), IMAGENET_MEAN), metadata_floats(meta.get("std"), IMAGENET_STD)
    if reuse is not None:
        if Path(reuse.fp32).resolve() != Path(fp32_path).resolve() or reuse.inputs is None or reuse.references is None:
            raise ValueError(f"reuse: a report made by accuracy_report on {fp32_path}")
        names, inputs, references = reuse.images, reuse.inputs, reuse.references
    else:
        if images is None:
            held = calib_data.skimage_set(HOLDOUT_PHOTOS, size, mean, std, num_images)
        else:
            exclude = calib_data.content_hashes(calibration_images) if calibration_images else None
            held = calib_data.prepare(images, num_images, size, mean, std, exclude=exclude)
        names, inputs, references = held.names, held.tensors, None
    check_on = check_on or CheckBackend(threads=threads)
    candidate = check_on.open(int8_path)
    reference = CheckBackend(threads=check_on.threads).open(fp32_path) if references is None else None
    tolerance = tolerance or TOLERANCES["int8"]
    report = AccuracyReport(str(fp32_path), str(int8_path), meta, list(names),
                            threads=check_on.threads or os.cpu_count(), tolerance=tolerance, inputs=inputs,
                            check_on=check_on, backend=candidate.description)
    refs = []
    for k, (name, x) in enumerate(zip(names, inputs, strict=True)):
        x = x[None]  # (3, S, S) -> (1, 3, S, S)
        ref = reference.infer(x) if reference is not None else references[k][None]
        out = candidate.infer(x)
        refs.append(ref[0])  # (1, S, S)
        report.comparisons.append(compare_logits(ref, out, tolerance, name=name))
        log.debug("  %s", report.comparisons[-1].row())
    report.references = np.stack(refs)  # (N, 1, S, S) float32
    if runtime:
        report.runtime = (runtime_facts(candidate.session, int8_path) if candidate.session is not None
                          else openvino_facts(candidate.description))
    if timing_runs:
        x = inputs[:1]
        if reuse is not None and reuse.fp32_ms is not None:
            report.fp32_ms = reuse.fp32_ms  # measured earlier in the same process
        else:
            same = reference is not None and check_on.backend == "onnxruntime"  # FP32 is timed where INT8 runs
            report.fp32_ms = (reference if same else check_on.open(fp32_path, reference=True)).best_ms(x, timing_runs)
        report.int8_ms = candidate.best_ms(x, timing_runs)
    return report
