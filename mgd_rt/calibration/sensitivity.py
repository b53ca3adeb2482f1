"""Sensitivity sweep: which quantized layers cost accuracy, found by measurement.

Takes the full INT8 Q/DQ graph and, one group of compute nodes (Conv, MatMul, Gemm) at a time,
puts that group back in FP32 by rewiring its inputs around their QuantizeLinear ->
DequantizeLinear pairs, then runs ONNX Runtime on the CPU and compares with the FP32 graph. No
re-calibration: each step is one graph edit and one inference, so a per-block sweep of the
tiny model takes seconds and the expensive calibration runs once.

Groups are contiguous runs of the quantized nodes in topological order (the exported graph's
node names carry no module path), so group 0 is the image encoder's stem and the last group
the mask head; ``group_size=1`` gives a per-layer sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.numerics import Comparison, compare_logits
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session

log = logging.getLogger("mgd_rt")

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class SweepRow:
    """One group put back in FP32: its nodes and the INT8-vs-FP32 comparison that results."""

    first: int
    nodes: list[str]
    comparison: Comparison

    def as_dict(self) -> dict:
        return {"first": self.first, "nodes": self.nodes, "comparison": self.comparison.as_dict()}


@dataclass
class SweepReport:
    """The all-INT8 baseline and one row per group, most helpful group first."""

    baseline: Comparison
    rows: list[SweepRow] = field(default_factory=list)

    def lines(self, top: int = 10) -> list[str]:
        out = ["all INT8: " + self.baseline.row()]
        for row in self.rows[:top]:
            out.append(f"FP32 nodes {row.first}..{row.first + len(row.nodes) - 1} ({row.nodes[0]}..): "
                       + row.comparison.row())
        return out

    def as_dict(self) -> dict:
        return {"baseline": self.baseline.as_dict(), "rows": [r.as_dict() for r in self.rows]}


def quantized_nodes(model) -> list[str]:
    """Names of the compute nodes of an INT8 graph that read a DequantizeLinear output, in graph order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS and any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input
        ):
            names.append(node.name)
    return names


def restore_fp32(model, names: set[str], fp32_model=None):
    """A copy of the Q/DQ ``model`` where nodes ``names`` read the FP32 tensors their Q/DQ pairs wrap.

    Weights stored as INT8 behind a lone DequantizeLinear are replaced by the FP32 weights the
    node of the same name reads in ``fp32_model`` (left INT8 when it is not given).
    """
    import onnx

    out = onnx.ModelProto.FromString(model.SerializeToString())
    producers = {o: n for n in out.graph.node for o in n.output}
    weights = {t.name for t in out.graph.initializer}
    originals = {n.name: n for n in fp32_model.graph.node} if fp32_model is not None else {}
    fp32_weights = {t.name: t for t in fp32_model.graph.initializer} if fp32_model is not None else {}
    for node in out.graph.node:
        if node.name not in names:
            continue
        for k, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]  # the float tensor before Q -> DQ
            elif dq.input[0] in weights and originals.get(node.name) is not None:
                original = originals[node.name].input[k]
                if original not in fp32_weights:
                    continue
                # ModelOpt keeps the weight's name for its INT8 copy: the FP32 one gets a new name
                name = f"{original}__fp32"
                if name not in weights:
                    weight = onnx.TensorProto()
                    weight.CopyFrom(fp32_weights[original])
                    weight.name = name
                    out.graph.initializer.append(weight)
                    weights.add(name)
                node.input[k] = name
    return out


def run_graph(model, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """mask_logits (N, 1, S, S) of the ModelProto ``model`` on ``x`` (N, 3, S, S), one image at a time (ORT CPU)."""
    session = ort_session(model.SerializeToString(), threads, log_severity=3)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))])


def sweep(
    fp32_path: str | Path,
    int8_path: str | Path,
    inputs: np.ndarray,
    group_size: int = 12,
    reference: np.ndarray | None = None,
) -> SweepReport:
    """Per-block sensitivity of ``int8_path`` on ``inputs`` float32 (N, 3, S, S).

    Returns rows sorted by sigmoid MAE after restoring the group (lowest first: the group
    whose quantization costs most). ``reference`` (N, 1, S, S): the FP32 logits, if known.
    """
    import onnx

    fp32_model = onnx.load(str(fp32_path))
    if reference is None:
        reference = run_graph(fp32_model, inputs)
    model = onnx.load(str(int8_path))
    nodes = quantized_nodes(model)
    report = SweepReport(compare_logits(reference, run_graph(model, inputs), "int8", name="all int8"))
    for first in range(0, len(nodes), group_size):
        group = nodes[first : first + group_size]
        candidate = run_graph(restore_fp32(model, set(group), fp32_model), inputs)
        comparison = compare_logits(reference, candidate, "int8", name=f"fp32 {first}..{first + len(group) - 1}")
        log.info("  %s", comparison.row())
        report.rows.append(SweepRow(first, group, comparison))
    report.rows.sort(key=lambda r: r.comparison.sigmoid_mae)
    return report
