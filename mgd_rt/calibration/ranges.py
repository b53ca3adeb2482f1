"""Activation ranges of an FP32 graph over calibration images, in memory bounded by one image.

Quantizers that keep every calibrated tensor as a graph output (ONNX Runtime's histogram
calibrators, which ModelOpt's entropy mode uses) hold one image's whole activation set at once:
past 17 GB for B+ at S=1024. Here the graph itself reduces each tensor before it leaves the
session: ReduceMin / ReduceMax give the exact range, and a strided sample of at most
``SAMPLE_SIZE`` values feeds a per-tensor histogram of |x| for the entropy and percentile
methods. ONNX Runtime frees each activation as soon as its consumers (ours included) have run,
so peak memory is one forward pass plus the samples.

``collect_ranges`` is the one entry point; thresholds follow the usual definitions:
``max`` the largest |x| seen, ``percentile`` the PERCENTILE-th percentile of |x|, ``entropy``
the clipping threshold whose 128-level quantized histogram is closest (KL divergence) to the
measured one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mgd_rt.contract import INPUT_NAME
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session

log = logging.getLogger("mgd_rt")

METHODS = ("entropy", "max", "percentile")
# values sampled per tensor per image for the histogram methods (the range itself is exact)
SAMPLE_SIZE = 1 << 15
HISTOGRAM_BINS = 2048
# |x| percentile kept by --method percentile
PERCENTILE = 99.99
# levels of one sign of a symmetric INT8 tensor: the entropy search compares 2^7-level histograms
QUANTIZED_LEVELS = 128
# entropy candidates: every ENTROPY_STRIDE-th bin edge from QUANTIZED_LEVELS to HISTOGRAM_BINS
ENTROPY_STRIDE = 16


@dataclass
class TensorStats:
    """Running statistics of one tensor: exact min / max, and a histogram of sampled |x| on [0, top]."""

    low: float = np.inf
    high: float = -np.inf
    top: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.float64))

    def add(self, low: float, high: float, sample: np.ndarray | None) -> None:
        self.low, self.high = min(self.low, low), max(self.high, high)
        if sample is None:
            return
        absmax = max(abs(self.low), abs(self.high))
        if absmax > self.top:
            self._widen(absmax)
        if self.top > 0:
            scaled = np.abs(sample.ravel()) * (HISTOGRAM_BINS / self.top)
            index = np.minimum(scaled.astype(np.int64), HISTOGRAM_BINS - 1)
            self.counts += np.bincount(index, minlength=HISTOGRAM_BINS)

    def _widen(self, top: float) -> None:
        """Re-bin the counts onto [0, top] (each old bin moves whole, by its centre)."""
        if self.top > 0 and self.counts.any():
            centres = (np.arange(HISTOGRAM_BINS) + 0.5) * (self.top / HISTOGRAM_BINS)
            index = np.minimum((centres * (HISTOGRAM_BINS / top)).astype(np.int64), HISTOGRAM_BINS - 1)
            self.counts = np.bincount(index, weights=self.counts, minlength=HISTOGRAM_BINS)
        self.top = top

    def threshold(self, method: str) -> float:
        """The |x| clipping threshold for ``method`` (max, percentile, entropy)."""
        absmax = max(abs(self.low), abs(self.high))
        if method == "max" or self.top == 0 or not self.counts.any():
            return absmax
        width = self.top / HISTOGRAM_BINS
        if method == "percentile":
            cdf = np.cumsum(self.counts) / self.counts.sum()
            return min(absmax, float(np.searchsorted(cdf, PERCENTILE / 100) + 1) * width)
        return min(absmax, entropy_bins(self.counts) * width)

    def clipped_range(self, method: str) -> tuple[float, float]:
        """(low, high) with both ends clipped at the method's threshold."""
        limit = self.threshold(method)
        return max(self.low, -limit), min(self.high, limit)


def entropy_bins(counts: np.ndarray) -> int:
    """Number of histogram bins to keep: the cut whose QUANTIZED_LEVELS-level copy loses least.

    For each candidate cut i, P is counts[:i] with everything beyond folded into its last bin,
    Q is counts[:i] merged into QUANTIZED_LEVELS groups and spread back over each group's
    non-empty bins; the cut with the smallest KL(P || Q) wins.
    """
    counts = np.asarray(counts, np.float64)
    best, best_kl = len(counts), np.inf
    for cut in range(QUANTIZED_LEVELS, len(counts) + 1, ENTROPY_STRIDE):
        kept = counts[:cut]
        reference = kept.copy()
        reference[-1] += counts[cut:].sum()
        if reference.sum() == 0:
            continue
        group = np.arange(cut) * QUANTIZED_LEVELS // cut
        occupied = kept > 0
        group_sum = np.bincount(group, weights=kept, minlength=QUANTIZED_LEVELS)
        group_size = np.bincount(group, weights=occupied, minlength=QUANTIZED_LEVELS)
        quantized = np.where(occupied, group_sum[group] / np.maximum(group_size[group], 1), 0.0)
        p = reference / reference.sum()
        q = quantized / max(quantized.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = cut, kl
    return best


def _ranks(model) -> dict[str, int]:
    """tensor name -> rank, from shape inference (ranks are known even where sizes are symbolic)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    return {i.name: len(i.type.tensor_type.shape.dim) for i in infos if i.type.tensor_type.HasField("shape")}


def _sample_steps(shape: list[int] | tuple[int, ...], axes: int) -> np.ndarray:
    """Prime strides for the last ``axes`` axes that leave about SAMPLE_SIZE elements.

    Prime, so that a stride never lines up with a channel count and samples one channel only.
    """
    ratio = int(np.prod(shape)) / SAMPLE_SIZE
    if ratio <= 1:
        return np.ones(axes, np.int64)
    step = _prime_at_least(int(np.ceil(ratio ** (1 / axes))))
    return np.array([min(step, dim) for dim in shape[-axes:]], np.int64)


def _prime_at_least(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def statistics_graph(model, names: list[str], sample: bool):
    """A copy of ``model`` whose outputs are, per tensor, its min and max and, with ``sample``, its
    shape and a strided sample (Slice of the last one or two axes, strides fed as the input
    ``calib__<i>_steps``, since the exported graph's symbolic sizes leave shapes to run time).

    Returns the graph and {name: number of sampled axes}.
    """
    import onnx
    from onnx import TensorProto, helper

    ranks = _ranks(model) if sample else {}
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    del graph.graph.output[:]
    # each tensor's statistics go right after its producer, and the session runs nodes in
    # PRIORITY_BASED order, which follows the graph's order: the activation is freed at once.
    # (ONNX Runtime's default order ran them last and kept every activation: 15.9 GB for one
    # B+ 1024 image instead of 3.6 GB.)
    after: dict[str, list] = {}
    outputs, sampled_axes = [], {}
    for i, name in enumerate(names):
        nodes = after.setdefault(name, [])
        for op in ("ReduceMin", "ReduceMax"):
            out = f"calib__{i}_{op}"
            nodes.append(helper.make_node(op, [name], [out], name=out, keepdims=0))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
        if sample:
            axes = min(2, ranks.get(name, 1)) or 1
            sampled_axes[name] = axes
            consts = {"starts": [0] * axes, "ends": [np.iinfo(np.int64).max] * axes, "axes": list(range(-axes, 0))}
            for key, value in consts.items():
                graph.graph.initializer.append(
                    helper.make_tensor(f"calib__{i}_{key}", TensorProto.INT64, [axes], value))
            graph.graph.input.append(helper.make_tensor_value_info(f"calib__{i}_steps", TensorProto.INT64, [axes]))
            nodes.append(helper.make_node("Shape", [name], [f"calib__{i}_shape"]))
            nodes.append(helper.make_node("Slice", [name] + [f"calib__{i}_{key}" for key in consts] + [
                f"calib__{i}_steps"], [f"calib__{i}_sample"]))
            outputs.append(helper.make_tensor_value_info(f"calib__{i}_shape", TensorProto.INT64, None))
            outputs.append(helper.make_tensor_value_info(f"calib__{i}_sample", TensorProto.FLOAT, None))
    ordered = [node for graph_input in model.graph.input for node in after.pop(graph_input.name, [])]
    for node in model.graph.node:
        ordered.append(node)
        for produced in node.output:
            ordered.extend(after.pop(produced, []))
    if after:
        raise ValueError(f"collect_ranges: no such tensors in the graph: {', '.join(sorted(after))}")
    del graph.graph.node[:]
    graph.graph.node.extend(ordered)
    graph.graph.output.extend(outputs)
    return graph, sampled_axes


def collect_ranges(
    model,
    names: list[str],
    tensors: Iterable[np.ndarray] | np.ndarray,
    method: str,
) -> dict[str, tuple[float, float]]:
    """Clipped (low, high) of each tensor in ``names`` over ``tensors`` (each (3, S, S) float32).

    ``model``: the FP32 ``onnx.ModelProto`` (not modified); ``method``: max, percentile or
    entropy (see the module docstring). One forward pass per image, plus one on the first
    image to learn the tensors' sizes when sampling.
    """

    names = list(dict.fromkeys(names))
    sample = method != "max"
    augmented, sampled_axes = statistics_graph(model, names, sample)
    session = ort_session(augmented.SerializeToString(), priority_order=True)
    del augmented
    # the first run samples one element per tensor and reads the shapes the real strides need
    steps = {f"calib__{i}_steps": np.full(sampled_axes[name], np.iinfo(np.int32).max, np.int64)
             for i, name in enumerate(names) if sample}
    width = 4 if sample else 2
    stats = {name: TensorStats() for name in names}
    start, done = time.perf_counter(), 0
    for done, image in enumerate(tensors, 1):
        feed = {INPUT_NAME: np.ascontiguousarray(image[None], np.float32)}
        values = session.run(None, {**feed, **steps})
        if sample and done == 1:
            steps = {f"calib__{i}_steps": _sample_steps(values[i * width + 2], sampled_axes[name])
                     for i, name in enumerate(names)}
            values = session.run(None, {**feed, **steps})
        for i, name in enumerate(names):
            row = values[i * width:(i + 1) * width]
            stats[name].add(float(row[0]), float(row[1]), row[3] if sample else None)
        log.info("calibration image %d: %d tensors measured (%.1f s)", done, len(names), time.perf_counter() - start)
    if not done:
        raise ValueError("collect_ranges: no calibration images")
    return {name: s.clipped_range(method) for name, s in stats.items()}
