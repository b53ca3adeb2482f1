"""Small real ONNX graphs that satisfy the network contract, for testing backend mechanics fast.

The graph: mask_logits = Conv1x1(image) with fixed weights, (B, 3, S, S) -> (B, 1, S, S),
metadata props as the exporter writes them. numpy reference: ``toy_logits``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgd_rt.artifacts import DRM_INPUTS_KEY
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_FORMAT_KEY, INPUT_NAME, OUTPUT_NAME, PIXEL_INPUT

TOY_WEIGHTS = np.array([1.5, -1.0, 0.5], dtype=np.float32)
TOY_BIAS = np.float32(0.25)


def toy_logits(batch: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) -> (B, 1, S, S): what the toy graph computes."""
    return (np.tensordot(TOY_WEIGHTS, batch, axes=([0], [1])) + TOY_BIAS)[:, None].astype(np.float32)


def make_toy_onnx(
    path: Path,
    size: int = 32,
    batch: int | str = "batch",
    precision: str = "fp32",
    input_name: str = INPUT_NAME,
    metadata: bool = True,
    drm_cut: bool = False,
) -> Path:
    """Write a contract-conforming toy graph to ``path`` and return it. ``drm_cut``: the Conv writes
    "toy_features", a Mul by 1 the output, and the metadata names "toy_features" as the DRM's input
    (artifacts.DRM_INPUTS_KEY), where a bf16 run cuts the graph in two."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(TOY_WEIGHTS.reshape(1, 3, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([TOY_BIAS], dtype=np.float32), "b")
    nodes = [helper.make_node("Conv", [input_name, "w", "b"], ["toy_features" if drm_cut else OUTPUT_NAME])]
    initializers = [weight, bias]
    if drm_cut:
        nodes.append(helper.make_node("Mul", ["toy_features", "one"], [OUTPUT_NAME]))
        initializers.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, 1, size, size])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {
            "variant": "toy", "image_size": str(size), "precision": precision,
            "mean": ",".join(map(str, IMAGENET_MEAN)), "std": ",".join(map(str, IMAGENET_STD)),
            "checkpoint_sha256": "untrained",
        }
        if drm_cut:
            props[DRM_INPUTS_KEY] = "toy_features"
        for k, v in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_pixel_toy_onnx(path: Path, size: int = 32) -> Path:
    """The toy graph with a pixel input: uint8 (B, S, S, 3) -> Cast -> (B, 3, S, S) -> the toy Conv, metadata
    input_format uint8 (the graph computes toy_logits of the raw 0..255 values)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", [INPUT_NAME], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["chw"], perm=[0, 3, 1, 2]),  # (B, S, S, 3) -> (B, 3, S, S)
             helper.make_node("Conv", ["chw", "w", "b"], [OUTPUT_NAME])]
    graph = helper.make_graph(
        nodes, "pixel_toy",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, size, size])],
        initializer=[numpy_helper.from_array(TOY_WEIGHTS.reshape(1, 3, 1, 1), "w"),
                     numpy_helper.from_array(np.array([TOY_BIAS], dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"variant": "toy", "image_size": str(size), "precision": "fp32", INPUT_FORMAT_KEY: PIXEL_INPUT,
                 "mean": ",".join(map(str, IMAGENET_MEAN)), "std": ",".join(map(str, IMAGENET_STD)),
                 "checkpoint_sha256": "untrained"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def make_int8_toy_onnx(path: Path, size: int = 32, metadata: dict[str, str] | None = None) -> Path:
    """A Q/DQ graph in the CPU placement ONNX Runtime fuses into QLinearConv: image -> Q/DQ (U8) -> Conv 3->16
    (S8 per-channel weights) -> Q/DQ -> Conv 16->1 (S8) -> Q/DQ -> mask_logits, metadata precision int8. The
    weights are near +-127 and the activations near 255: the U8 x S8 products whose pair sums pass 16 bits.
    ``metadata``: more props (or other values)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    first = rng.choice([-127, -120, 118, 127], size=(16, 3, 1, 1)).astype(np.int8)
    second = rng.choice([-127, 96, 127], size=(1, 16, 1, 1)).astype(np.int8)
    initializers = [
        numpy_helper.from_array(first, "w1"), numpy_helper.from_array(np.full(16, 1e-3, np.float32), "w1_scale"),
        numpy_helper.from_array(np.zeros(16, np.int8), "w1_zp"),
        numpy_helper.from_array(second, "w2"), numpy_helper.from_array(np.full(1, 1e-3, np.float32), "w2_scale"),
        numpy_helper.from_array(np.zeros(1, np.int8), "w2_zp"),
    ]
    def qdq(tensor: str, scale: float, zero: int, out: str) -> list[onnx.NodeProto]:
        initializers.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_scale"),
                             numpy_helper.from_array(np.array(zero, np.uint8), f"{tensor}_zp")])
        return [helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zp"], [f"{tensor}_q"]),
                helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zp"], [out])]

    nodes = [helper.make_node("DequantizeLinear", ["w1", "w1_scale", "w1_zp"], ["w1_f"], axis=0),
             helper.make_node("DequantizeLinear", ["w2", "w2_scale", "w2_zp"], ["w2_f"], axis=0),
             *qdq(INPUT_NAME, 0.02, 0, "x_dq"),
             helper.make_node("Conv", ["x_dq", "w1_f"], ["h"]),
             *qdq("h", 0.02, 128, "h_dq"),
             helper.make_node("Conv", ["h_dq", "w2_f"], ["y"]),
             *qdq("y", 0.002, 128, OUTPUT_NAME)]
    graph = helper.make_graph(
        nodes, "int8_toy",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, size, size])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"variant": "toy", "image_size": str(size), "precision": "int8",
                 "mean": ",".join(map(str, IMAGENET_MEAN)), "std": ",".join(map(str, IMAGENET_STD)),
                 "checkpoint_sha256": "untrained", **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
