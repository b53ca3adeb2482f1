"""Activation ranges measured in bounded memory (mgd_rt.calibration.ranges), on small synthetic graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mgd_rt.calibration import ranges as R
from mgd_rt.contract import INPUT_NAME


def _graph(channels: int = 6, side: int = 64) -> onnx.ModelProto:
    """image (B, 3, side, side) -> Conv 1x1 (channels) = "conv" -> Relu = "relu" -> output."""
    weight = np.random.default_rng(1).standard_normal((channels, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", [INPUT_NAME, "w"], ["conv"], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", channels, side, side])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _reference(model, images):
    """The graph's tensors computed in numpy: {"image", "conv", "relu"} -> list per image."""
    weight = numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0]
    out = {INPUT_NAME: [], "conv": [], "relu": []}
    for image in images:
        conv = np.einsum("oc,chw->ohw", weight, image)
        out[INPUT_NAME].append(image)
        out["conv"].append(conv)
        out["relu"].append(np.maximum(conv, 0))
    return out


def test_max_is_the_exact_range_over_all_images():
    model = _graph()
    images = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32) * [[[1]], [[2]], [[3]]]
    found = R.collect_ranges(model, [INPUT_NAME, "conv", "relu"], images, "max")
    for name, values in _reference(model, images).items():
        low = min(float(v.min()) for v in values)
        high = max(float(v.max()) for v in values)
        assert found[name] == pytest.approx((low, high), rel=1e-5), name
    assert found["relu"][0] == 0.0


def test_percentile_and_entropy_clip_a_rare_outlier():
    """A Gaussian tensor with one huge value: max keeps it, percentile and entropy clip near the bulk."""
    model = _graph()
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    images[2, 1, 5, 7] = 60.0
    found = {m: R.collect_ranges(model, [INPUT_NAME], images, m)[INPUT_NAME] for m in R.METHODS}
    assert found["max"][1] == pytest.approx(60.0)
    bulk = float(np.percentile(np.abs(np.delete(images.ravel(), np.argmax(images))), R.PERCENTILE))
    # the percentile threshold is read off a 2048-bin histogram of [0, 60]: one bin is 0.03 wide
    assert found["percentile"][1] == pytest.approx(bulk, abs=2 * 60 / R.HISTOGRAM_BINS + 0.2)
    assert 2.5 < found["entropy"][1] < 10.0
    # the low end is clipped at the same threshold, or is the true minimum when that is closer to 0
    assert found["entropy"][0] == pytest.approx(max(float(images.min()), -found["entropy"][1]))


def test_entropy_keeps_a_uniform_range_whole():
    """Uniform |x| has no tail to cut: KL is smallest keeping (nearly) every bin."""
    counts = np.full(R.HISTOGRAM_BINS, 1000.0)
    assert R.entropy_bins(counts) >= R.HISTOGRAM_BINS - R.ENTROPY_STRIDE
    tail = np.exp(-np.arange(R.HISTOGRAM_BINS) / 40.0) * 1e6  # exponential: most mass in the first bins
    assert R.entropy_bins(tail) < R.HISTOGRAM_BINS // 4


def test_samples_spread_over_every_channel():
    """The strided sample of a (1, C, H, W) tensor whose value is its channel index sees every channel."""
    channels, side = 6, 256
    model = _graph(channels, side)
    graph, axes = R.statistics_graph(model, ["conv"], sample=True)
    assert axes == {"conv": 2}
    # the statistics sit right after their producer (the order the session runs them in)
    order = [n.op_type for n in graph.graph.node]
    assert order[:5] == ["Conv", "ReduceMin", "ReduceMax", "Shape", "Slice"]
    steps = R._sample_steps([1, channels, side, side], 2)
    assert all(R._prime_at_least(int(s)) == s for s in steps)
    sampled = channels * -(-side // int(steps[0])) * -(-side // int(steps[1]))
    assert R.SAMPLE_SIZE / 4 <= sampled <= R.SAMPLE_SIZE * 2
    stats = R.TensorStats()
    channel_values = np.broadcast_to(np.arange(channels, dtype=np.float32)[:, None, None], (channels, side, side))
    stats.add(0.0, channels - 1.0, channel_values[:, ::steps[0], ::steps[1]])
    occupied = np.nonzero(stats.counts)[0]
    assert len(occupied) == channels  # one histogram bin per channel value


def test_histogram_rebins_when_the_range_grows():
    stats = R.TensorStats()
    stats.add(-1.0, 1.0, np.linspace(-1, 1, 1000, dtype=np.float32))
    stats.add(-4.0, 4.0, np.array([4.0], np.float32))
    assert stats.top == 4.0
    assert stats.counts.sum() == 1001
    # the first 1000 values now fill the lowest quarter of the bins
    assert stats.counts[: R.HISTOGRAM_BINS // 4 + 1].sum() == 1000


def test_unknown_tensor_is_an_error():
    with pytest.raises(ValueError, match="no such tensors"):
        R.statistics_graph(_graph(), ["nope"], sample=False)
