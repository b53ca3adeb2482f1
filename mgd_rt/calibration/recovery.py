"""Accuracy-aware INT8: put the layers that cost accuracy back in FP32, most accuracy per compute first.

``recover_accuracy`` takes a calibrated Q/DQ graph and its held-out check
(``report.accuracy_report``: the same images and measures) and, while an image is outside the
tolerance:

1. sweep: the quantized nodes (every node that reads a DequantizeLinear output, in graph order:
   Conv, MatMul, and the Add or Resize a ``--no-default-exclusions`` graph quantizes too) are cut
   into runs of at most ``group_size`` (``make_groups``: a heavy node alone). For each group every
   *other* quantized node is put back in FP32 by graph edit (``sensitivity.restore_fp32``: no
   re-calibration) and the failing images are run: the group's own damage, as ``distance`` (how
   far from FP32, in units of the tolerance). Why this way round: the opposite sweep (one group in
   FP32, the rest INT8) measures what is left when one group is removed, and when the error is
   spread over many groups no single removal moves it by more than noise (tiny, seed 1,
   --no-default-exclusions: 20 of 21 groups moved the failing images' error by at most 1%, 18 of
   them upwards), so the order was noise; a group alone against FP32 is measured from zero (the
   same graph: 0.05 to 64.1, three groups above 9, most under 0.6);
2. rank: by damage per compute, i.e. accuracy gained per compute put back in FP32. Compute is the
   group's share of the quantized nodes' multiply-accumulates (MACs, from the FP32 graph's shapes;
   one per output element for the other ops). MACs, not a latency measured per group: a latency
   needs warm-up and repeated runs of every candidate (B+ at 1024: ~3.4 s a run, 30+ groups), and
   on a shared CPU its noise is larger than most groups' share, while MACs are exact and the same
   on every machine. The latency of each step actually taken is measured (``timing_runs``);
3. restore a prefix of that ranking, checking every held-out image at each step: step 1 puts back
   every group the budget's compute share admits (best first); if that fails, nothing within the
   budget passes and recovery stops there. Otherwise each next step bisects between the longest
   prefix known to fail and the shortest known to pass, until they are one group apart or the
   step budget is spent; the shortest passing prefix is written. A step-by-step greedy walk needs
   a check per group (29 for tiny without exclusions); bisection needs 1 + log2(groups), and a
   budget that cannot be met is known after one check. A speed-up floor (``speedup``, measured)
   is applied to the graph that would be written.

The last graph (Q/DQ nodes and INT8 weights nothing reads any more removed, metadata naming what
was restored) is written atomically and checked again as a file: the verdict is that check's.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgd_rt.artifacts import check_output_path
from mgd_rt.calibration.check_backend import CheckBackend
from mgd_rt.calibration.report import AccuracyReport, accuracy_report, describe_tolerance
from mgd_rt.calibration.sensitivity import restore_fp32
from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import TOLERANCES, Comparison, Tolerance, compare_logits

log = logging.getLogger("mgd_rt")

MATRIX_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# ---------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class RecoveryBudget:
    """How much recovery may spend: ``steps`` (graphs tried, undone ones included; None: no limit),
    ``fp32`` (largest share of the quantized compute put back in FP32, 0..1) and ``speedup`` (the
    smallest INT8 / FP32 speed-up allowed; needs timing). Defaults: 10 steps (each is one held-out
    check: ~25 s for B+ at 1024 on 2 cores), half the compute (past that, INT8's 1.47x on B+ is
    mostly gone), no speed floor."""

    steps: int | None = 10
    fp32: float = 0.5
    speedup: float | None = None

    @classmethod
    def parse(cls, text: str) -> RecoveryBudget:
        """``steps=N,fp32=F,speedup=X`` (any subset; the rest keep their defaults) -> RecoveryBudget."""
        values: dict[str, float | int | None] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in ("steps", "fp32", "speedup"):
                raise MgdRtError(f"--recover-budget {text!r}: use steps=N, fp32=FRACTION and/or speedup=X, "
                                 "comma-separated (e.g. steps=5,fp32=0.3)")
            try:
                number = int(value) if key == "steps" else float(value)
            except ValueError:
                raise MgdRtError(f"--recover-budget {item!r}: {key} takes a number") from None
            values[key] = number
        budget = cls(**values)  # type: ignore[arg-type]
        if budget.steps is not None and budget.steps < 1:
            raise MgdRtError(f"--recover-budget steps={budget.steps}: allow at least 1 step (or --no-recover)")
        if not 0 < budget.fp32 <= 1:
            raise MgdRtError(f"--recover-budget fp32={budget.fp32}: a share of the quantized compute, in (0, 1]")
        if budget.speedup is not None and budget.speedup <= 0:
            raise MgdRtError(f"--recover-budget speedup={budget.speedup}: a speed-up over FP32, e.g. 1.2")
        return budget

    def __str__(self) -> str:
        parts = [f"steps={self.steps}" if self.steps is not None else "steps=unlimited", f"fp32={self.fp32:g}"]
        if self.speedup is not None:
            parts.append(f"speedup={self.speedup:g}")
        return ",".join(parts)


def target_tolerance(iou_top10: float | None) -> Tolerance:
    """TOLERANCES['int8'] with its top-10% IoU raised to ``iou_top10`` (None: unchanged).

    Never loosened: a looser target would let PASS mean less than the project's INT8 tolerance.
    """
    base = TOLERANCES["int8"]
    if iou_top10 is None:
        return base
    if not base.iou_top10 <= iou_top10 < 1:
        raise MgdRtError(f"--target-accuracy {iou_top10}: a top-10% IoU in [{base.iou_top10}, 1) "
                         f"(TOLERANCES['int8'] asks >= {base.iou_top10}; 1 would mean FP32: use the FP32 graph)")
    return Tolerance(max_rel_std=base.max_rel_std, sigmoid_mae=base.sigmoid_mae, iou_top10=iou_top10)


# ------------------------------------------------------------------------------- accuracy scores
def image_error(c: Comparison, tol: Tolerance) -> float:
    """How far one image is from FP32 relative to what ``tol`` allows: the largest of
    (1 - IoU top10%) / (1 - bound), sigmoid MAE / bound and max|d|/std / bound; <= 1 within ``tol``."""
    terms = [0.0]
    if tol.iou_top10 is not None:
        terms.append((1.0 - c.iou_top10) / (1.0 - tol.iou_top10))
    if tol.sigmoid_mae is not None:
        terms.append(c.sigmoid_mae / tol.sigmoid_mae)
    if tol.max_rel_std is not None:
        terms.append(c.max_rel_std / tol.max_rel_std)
    return max(terms)


def distance(comparisons: list[Comparison], tol: Tolerance) -> float:
    """Summed ``image_error`` of ``comparisons``: how far from FP32 they are, in units of ``tol``."""
    return float(sum(image_error(c, tol) for c in comparisons))


def worst_image(comparisons: list[Comparison], tol: Tolerance) -> Comparison:
    """The image furthest from FP32 relative to ``tol``."""
    return max(comparisons, key=lambda c: image_error(c, tol))


def describe_image(c: Comparison) -> str:
    return f"{c.name} at IoU top10% {c.iou_top10:.4f}, sigmoid MAE {c.sigmoid_mae:.2e}"


# ------------------------------------------------------------------------------- graph structure
def recoverable_nodes(model) -> list[str]:
    """Names of the nodes of a Q/DQ graph that read a DequantizeLinear output, in graph order."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type not in QDQ_OPS and any(producers.get(i) == "DequantizeLinear" for i in n.input)]


def _shapes(model) -> dict[str, list[int]]:
    """tensor name -> dims (a symbolic dim, the batch, counts 1), from value_info, I/O and initializers."""
    import onnx

    if not len(model.graph.value_info):
        model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def node_costs(fp32_model, names: list[str]) -> dict[str, float]:
    """Multiply-accumulates of one image through each node of ``names`` (found by name in the FP32 graph).

    Conv: output elements x (C_in / groups) x kernel; ConvTranspose: input elements x (C_out /
    groups) x kernel; MatMul / Gemm: output elements x K; any other op: its output elements.
    A node whose shapes are unknown costs 0 (logged).
    """
    shapes = _shapes(fp32_model)
    nodes = {n.name: n for n in fp32_model.graph.node}
    costs: dict[str, float] = {}
    for name in names:
        node = nodes.get(name)
        out = shapes.get(node.output[0]) if node is not None else None
        try:
            if node is None or out is None:
                raise KeyError(name)
            if node.op_type == "Conv":
                cost = math.prod(out[1:]) * math.prod(shapes[node.input[1]][1:])
            elif node.op_type == "ConvTranspose":
                cost = math.prod(shapes[node.input[0]][1:]) * math.prod(shapes[node.input[1]][1:])
            elif node.op_type == "MatMul":
                cost = math.prod(out) * shapes[node.input[0]][-1]
            elif node.op_type == "Gemm":
                trans_a = any(a.name == "transA" and a.i for a in node.attribute)
                a = shapes[node.input[0]]
                cost = math.prod(out) * (a[0] if trans_a else a[-1])
            else:
                cost = math.prod(out)
        except (KeyError, IndexError):
            log.debug("no shapes for %s: its compute counts 0", name)
            cost = 0
        costs[name] = float(cost)
    return costs


def make_groups(units: list[str], costs: dict[str, float], group_size: int) -> list[list[str]]:
    """Consecutive runs of at most ``group_size`` of ``units``, except that a node heavier than half an
    average group (total compute / ceil(len / group_size) / 2) is a group of its own: one step never has
    to put a costly layer back in FP32 because a cheap neighbour matters, nor the reverse."""
    limit = sum(costs.get(n, 0.0) for n in units) / max(1, math.ceil(len(units) / group_size)) / 2
    groups: list[list[str]] = []
    for name in units:
        heavy = costs.get(name, 0.0) > limit > 0
        last = groups[-1] if groups else None
        if last is None or heavy or len(last) == group_size or costs.get(last[-1], 0.0) > limit > 0:
            groups.append([name])
        else:
            last.append(name)
    return groups


def prune_unused(model) -> None:
    """Remove, in place, nodes whose outputs nothing reads (the Q/DQ a restored node left) and unused initializers."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = {i for n in model.graph.node for i in n.input} | graph_outputs
    for tensor in [t for t in model.graph.initializer if t.name not in read]:
        model.graph.initializer.remove(tensor)


# ------------------------------------------------------------------------------------ evaluation
def _evaluate(
    data: bytes,
    inputs: np.ndarray,
    references: np.ndarray,
    names: list[str],
    tol: Tolerance,
    check_on: CheckBackend,
    timing_runs: int = 0,
) -> tuple[list[Comparison], float | None]:
    """Per-image comparisons of the serialized graph ``data``, run on ``check_on``, on ``inputs`` (N, 3, S, S)
    against ``references`` (N, 1, S, S), and its best latency (batch 1) when ``timing_runs`` > 0."""
    runner = check_on.open(data)
    comparisons = []
    for name, x, ref in zip(names, inputs, references, strict=True):
        out = runner.infer(x[None])  # (1, 1, S, S)
        comparisons.append(compare_logits(ref[None], out, tol, name=name))
    ms = runner.best_ms(inputs[:1], timing_runs) if timing_runs else None
    return comparisons, ms


def _candidate(int8_model, fp32_model, restored: list[str]):
    """The Q/DQ graph with ``restored`` read from FP32 tensors and weights, left-over Q/DQ pruned."""
    model = restore_fp32(int8_model, set(restored), fp32_model)
    prune_unused(model)
    return model


def _op_counts(model, names: list[str]) -> dict[str, int]:
    types = {n.name: n.op_type for n in model.graph.node}
    return dict(collections.Counter(types.get(n, "?") for n in names))


# --------------------------------------------------------------------------------------- results
@dataclass
class Candidate:
    """One group of the sweep: its nodes, compute share, and the failing images' distance from FP32
    with only this group quantized (its damage)."""

    first: int
    nodes: list[str]
    op_types: dict[str, int]
    share: float  # of the quantized compute
    damage: float

    @property
    def ratio(self) -> float:
        """Damage per compute: what restoring the group gains per share of the compute it costs."""
        return self.damage / max(self.share, 1e-12)

    def as_dict(self) -> dict:
        return {"first": self.first, "nodes": self.nodes, "op_types": self.op_types, "share": self.share,
                "damage": self.damage, "damage_per_share": self.ratio}


@dataclass
class Step:
    """One held-out check: the ``count`` best-ranked groups in FP32 (a prefix of the ranking), and the result."""

    index: int
    count: int
    groups: list[Candidate]
    comparisons: list[Comparison]
    error: float  # distance of all held-out images from FP32
    note: str = ""
    int8_ms: float | None = None
    speedup: float | None = None

    @property
    def passed(self) -> bool:
        return all(self.comparisons)

    @property
    def nodes(self) -> list[str]:
        return [n for g in self.groups for n in g.nodes]

    @property
    def share(self) -> float:
        return sum(g.share for g in self.groups)

    def line(self, tol: Tolerance) -> str:
        worst = worst_image(self.comparisons, tol)
        speed = f", INT8 {self.int8_ms:.0f} ms ({self.speedup:.2f}x FP32)" if self.int8_ms and self.speedup else ""
        added = self.groups[-1] if self.groups else None
        last = f", the lowest ranked: nodes {added.first}..{added.first + len(added.nodes) - 1}" if added else ""
        passed = sum(bool(x) for x in self.comparisons)
        return (f"step {self.index}: {self.count} best group(s) in FP32 ({len(self.nodes)} nodes{last}; "
                f"{self.share:.1%} of the quantized compute): {passed}/{len(self.comparisons)} images pass, worst "
                f"{describe_image(worst)}, distance {self.error:.3f}{speed}{': ' + self.note if self.note else ''}")

    def as_dict(self) -> dict:
        tol = self.comparisons[0].tolerance or TOLERANCES["int8"]
        return {"step": self.index, "groups": self.count, "restored": self.nodes,
                "op_types": dict(sum((collections.Counter(g.op_types) for g in self.groups), collections.Counter())),
                "fp32_share": self.share, "passed": self.passed, "note": self.note, "error": self.error,
                "images_passed": sum(bool(c) for c in self.comparisons),
                "worst": worst_image(self.comparisons, tol).as_dict(),
                "comparisons": [c.as_dict() for c in self.comparisons],
                "int8_ms": self.int8_ms, "speedup": self.speedup}


@dataclass
class RecoveryResult:
    """The whole recovery: the check it started from, the sweep, every step, and the final check."""

    fp32: str
    int8: str
    tolerance: Tolerance
    budget: RecoveryBudget
    group_size: int
    initial: AccuracyReport
    final: AccuracyReport
    candidates: list[Candidate] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)  # the images the sweep ran on
    units: int = 0  # quantized nodes (recoverable) in the calibrated graph
    chosen: Step | None = None  # the step whose graph was written
    reason: str = ""  # why recovery stopped short (empty on pass)
    written: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.final.passed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def restored(self) -> list[str]:
        return self.chosen.nodes if self.chosen else []

    @property
    def fp32_share(self) -> float:
        return self.chosen.share if self.chosen else 0.0

    def verdict(self) -> str:
        """The last line: PASS with the graph, or FAIL with why (which budget) and the worst image."""
        worst = worst_image(self.final.comparisons, self.tolerance)
        if self.passed:
            what = (f"{len(self.restored)} nodes restored to FP32 ({self.fp32_share:.1%} of the quantized compute) "
                    f"in {len(self.steps)} step(s)" if self.chosen else "no layer restored")
            speed = f", {self.final.speedup:.2f}x FP32" if self.final.speedup else ""
            return (f"PASS: {self.final.int8} within {describe_tolerance(self.tolerance)} on all "
                    f"{len(self.final.images)} held-out images, {what}{speed}; worst {describe_image(worst)}")
        need = describe_tolerance(self.tolerance)
        left = f"{self.final.int8} left as calibrated (worst {describe_image(worst)})"
        if not self.steps:
            return f"FAIL: {self.reason}; {left}; need {need}"
        closest = min(self.steps, key=lambda s: s.error)
        return (f"FAIL: {self.reason}; closest, step {closest.index}: worst image "
                f"{describe_image(worst_image(closest.comparisons, self.tolerance))} (need {need}); {left}")

    def lines(self) -> list[str]:
        out = [f"accuracy recovery (tolerance {describe_tolerance(self.tolerance)}, budget {self.budget}): "
               f"{len(self.failing)} failing image(s) {', '.join(self.failing)}; {self.units} quantized nodes in "
               f"{len(self.candidates)} groups of <= {self.group_size}"]
        for rank, c in enumerate(self.candidates[:8], 1):  # ranked, best first
            out.append(f"  rank {rank}: nodes {c.first}..{c.first + len(c.nodes) - 1} alone in INT8 ({c.share:.1%} "
                       f"of the compute): failing images' distance {c.damage:.3f}")
        out += [s.line(self.tolerance) for s in self.steps]
        out.append(self.verdict())
        return out

    def as_dict(self) -> dict:
        return {
            "tolerance": vars(self.tolerance), "budget": {"steps": self.budget.steps, "fp32": self.budget.fp32,
                                                          "speedup": self.budget.speedup},
            "group_size": self.group_size, "units": self.units, "failing_images": self.failing,
            "initial": {"passed": self.initial.passed, "worst": self.initial.worst, "int8_ms": self.initial.int8_ms,
                        "error": distance(self.initial.comparisons, self.tolerance)},
            "candidates": [c.as_dict() for c in self.candidates],
            "steps": [s.as_dict() for s in self.steps],
            "restored": self.restored, "fp32_share": self.fp32_share,
            "passed": self.passed, "reason": self.reason, "written": self.written, "verdict": self.verdict(),
            "seconds": self.seconds,
        }


# ------------------------------------------------------------------------------------ the search
def recover_accuracy(
    fp32_path: str | Path,
    int8_path: str | Path,
    initial: AccuracyReport | None = None,
    images: str | Path | None = None,
    num_images: int = 6,
    calibration_images: str | Path | None = None,
    tolerance: Tolerance | None = None,
    budget: RecoveryBudget | None = None,
    group_size: int = 12,
    timing_runs: int = 0,
    threads: int | None = None,
    output: str | Path | None = None,
    check_on: CheckBackend | None = None,
) -> RecoveryResult:
    """Put quantized node groups of ``int8_path`` back in FP32 until the held-out images pass ``tolerance``.

    ``initial``: the held-out check of ``int8_path`` (``accuracy_report``; made here when None,
    with ``images``, ``num_images``, ``calibration_images``): its images, FP32 logits and, when
    timed, FP32 latency are reused. ``tolerance``: default ``initial``'s (TOLERANCES['int8']).
    ``timing_runs`` > 0 times every step (batch 1, best of that many runs); a ``budget.speedup``
    needs it. ``output``: where the recovered graph goes (default: over ``int8_path``), written
    (atomically) only when a step passes; on FAIL ``int8_path`` stays as calibrated. Returns the
    RecoveryResult; its ``final`` is the held-out check of the graph as written. ``check_on``: where each
    step's check runs the graph (default: ONNX Runtime's CPU kernels with ``threads``; ``initial`` must have
    been made there); the sweep ranks groups on ONNX Runtime's CPU kernels whatever the backend: which
    layers' quantization costs accuracy is the graph's, and one ONNX Runtime session per group costs a
    fraction of an OpenVINO compilation.
    """
    import onnx

    from mgd_rt.export import save_graph
    from mgd_rt.export.graph import read_metadata, set_metadata

    start = time.perf_counter()
    budget = budget or RecoveryBudget()
    if budget.speedup is not None and not timing_runs:
        raise MgdRtError(f"--recover-budget speedup={budget.speedup:g} needs timing: add --time RUNS (e.g. --time 3)")
    if group_size < 1:
        raise MgdRtError(f"group size {group_size}: restore at least one node per step")
    check_on = check_on or CheckBackend(threads=threads)
    if initial is None:
        initial = accuracy_report(fp32_path, int8_path, images=images, num_images=num_images,
                                  calibration_images=calibration_images, timing_runs=timing_runs,
                                  tolerance=tolerance, runtime=False, check_on=check_on)
    tol = tolerance or initial.tolerance
    if initial.inputs is None or initial.references is None:
        raise ValueError("initial: an AccuracyReport made by accuracy_report (held-out inputs and FP32 logits)")
    if initial.check_on != check_on:
        raise ValueError(f"initial was checked on {initial.check_on}, not {check_on}: pass check_on to accuracy_report")
    if vars(initial.tolerance) != vars(tol):
        raise ValueError(f"initial was checked against {initial.tolerance}, not {tol}: "
                         "pass the tolerance to accuracy_report")
    output = Path(output) if output is not None else Path(int8_path)
    check_output_path(output, ".onnx", fp32_path)
    names, inputs, references = initial.images, initial.inputs, initial.references

    int8_model = onnx.load(str(int8_path))
    fp32_model = onnx.load(str(fp32_path))
    units = recoverable_nodes(int8_model)
    costs = node_costs(fp32_model, units)
    total = sum(costs.values()) or 1.0
    result = RecoveryResult(str(fp32_path), str(int8_path), tol, budget, group_size, initial, initial,
                            units=len(units))
    if initial.passed:
        result.seconds = time.perf_counter() - start
        return result
    if not units:
        result.reason = "the graph has no quantized node to restore"
        result.seconds = time.perf_counter() - start
        return result

    # 1. the sweep, on the failing images only: each group alone in INT8
    failing = [i for i, c in enumerate(initial.comparisons) if not c]
    result.failing = [names[i] for i in failing]
    groups = make_groups(units, costs, group_size)
    log.info("accuracy recovery: %d failing image(s) (%s), distance from FP32 %.3f; sweeping %d groups of <= %d of "
             "%d quantized nodes", len(failing), ", ".join(result.failing),
             distance([initial.comparisons[i] for i in failing], tol), len(groups), group_size, len(units))
    sweep_on = CheckBackend(threads=check_on.threads)
    first = 0
    for k, group in enumerate(groups):
        t0 = time.perf_counter()
        members = set(group)
        others = [n for n in units if n not in members]
        data = _candidate(int8_model, fp32_model, others).SerializeToString()
        comparisons, _ = _evaluate(data, inputs[failing], references[failing], result.failing, tol, sweep_on)
        share = sum(costs[n] for n in group) / total
        result.candidates.append(Candidate(first, group, _op_counts(int8_model, group), share,
                                           distance(comparisons, tol)))
        log.info("  sweep %d/%d: nodes %d..%d alone in INT8 (%.1f%% of the compute): distance %.3f (%.1f s)",
                 k + 1, len(groups), first, first + len(group) - 1, 100 * share,
                 result.candidates[-1].damage, time.perf_counter() - t0)
        first += len(group)

    # 2. rank by damage per compute; the fp32 budget admits the best-ranked groups that fit in it
    ranked = sorted(result.candidates, key=lambda c: c.ratio, reverse=True)
    allowed: list[Candidate] = []
    for c in ranked:
        if sum(g.share for g in allowed) + c.share <= budget.fp32 + 1e-12:
            allowed.append(c)
    result.candidates = ranked

    # 3. restore a prefix of that order: first all the budget admits (if that fails, nothing within the
    # budget passes), then bisect for the fewest groups that pass; each check is one step
    fp32_ms = initial.fp32_ms
    if timing_runs and fp32_ms is None:
        fp32_ms = check_on.open(fp32_path, reference=True).best_ms(inputs[:1], timing_runs)
    models = {}

    def check(count: int) -> Step:
        t0 = time.perf_counter()
        model = _candidate(int8_model, fp32_model, [n for g in allowed[:count] for n in g.nodes])
        comparisons, ms = _evaluate(model.SerializeToString(), inputs, references, names, tol, check_on, timing_runs)
        step = Step(len(result.steps) + 1, count, allowed[:count], comparisons, distance(comparisons, tol),
                    int8_ms=ms, speedup=fp32_ms / ms if ms and fp32_ms else None)
        result.steps.append(step)
        models[count] = model
        log.info("  %s (%.1f s)", step.line(tol), time.perf_counter() - t0)
        return step

    passing: int | None = None  # fewest groups known to pass
    if not allowed:
        result.reason = (f"budget ran out before step 1: fp32={budget.fp32:g} admits no group (the smallest is "
                         f"{min(c.share for c in ranked):.1%} of the quantized compute)")
    elif check(len(allowed)).passed:
        passing = len(allowed)
        result.steps[-1].note = "passes: the most the budget admits"
    else:
        every = len(allowed) == len(ranked)
        result.steps[-1].note = "fails: the most the budget admits"
        result.reason = ("every quantized node in FP32 still fails (the tolerance asks more than FP32 gives)" if every
                         else f"budget ran out at step 1: fp32={budget.fp32:g} admits {len(allowed)} of {len(ranked)} "
                         f"groups ({result.steps[-1].share:.1%} of the quantized compute), and with all of them in "
                         "FP32 an image still fails")
    failing_count = 0  # most groups known to fail (0: the calibrated graph)
    minimal = True
    while passing is not None and passing - failing_count > 1:
        if budget.steps is not None and len(result.steps) >= budget.steps:
            minimal = False
            break
        step = check((failing_count + passing) // 2)
        if step.passed:
            passing, step.note = step.count, "passes"
        else:
            failing_count, step.note = step.count, "fails"

    if passing is not None:
        chosen = next(s for s in result.steps if s.count == passing)
        if budget.speedup is not None and chosen.speedup is not None and chosen.speedup < budget.speedup:
            result.reason = (f"budget ran out at step {len(result.steps)}: speedup={budget.speedup:g} (the fewest "
                             f"groups that pass, {passing}, leave INT8 at {chosen.speedup:.2f}x FP32)")
        else:
            result.chosen = chosen
            chosen.note += "; written"
            if not minimal:
                chosen.note += f" (steps={budget.steps} reached: fewer groups might pass)"
            model = models[passing]
            restored = set(chosen.nodes)
            meta = read_metadata(model)
            fp32_nodes = int(meta.get("int8_fp32_nodes") or 0) + sum(
                1 for n in model.graph.node if n.name in restored and n.op_type in MATRIX_OPS)
            set_metadata(model, {
                "int8_fp32_nodes": str(fp32_nodes),
                "int8_recovered_nodes": ",".join(chosen.nodes),
                "int8_recovery": (f"{len(chosen.nodes)} nodes in FP32 ({chosen.share:.3f} of the quantized compute) "
                                  f"to reach {describe_tolerance(tol)}"),
            })
            onnx.checker.check_model(model)
            save_graph(model, output)
            result.written = True
            # the verdict is the written file's own check, on the same images and FP32 logits
            result.final = accuracy_report(fp32_path, output, tolerance=tol, timing_runs=timing_runs,
                                           reuse=initial, check_on=check_on)
            if not result.final.passed:
                result.reason = "the written graph's own check failed"
    result.seconds = time.perf_counter() - start
    return result
