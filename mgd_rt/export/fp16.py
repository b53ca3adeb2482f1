"""FP32 graph -> FP16 graph with FP32 input and output (onnxconverter-common's converter).

TensorRT 11 and TensorRT-RTX are strongly typed, so the precision is decided here, in the
graph. Ops whose FP16 error measurably hurts the logits stay FP32 (``KEEP_FP32_OPS``), and so
do the DRM's convolutions at full image resolution (``full_resolution_convs``).

The sweep that decided it (tiny fixture, 3 photos + 1 random input, ONNX Runtime CPU, worst
case over the inputs): with only ``KEEP_FP32_OPS`` kept, IoU@0.5 0.9955, top-10% IoU 0.9915,
sigmoid MAE 1.1e-4. Keeping one more op type FP32: only Conv matters (top-10% IoU 0.9990);
MatMul, Add, Mul, Gelu, Relu, BatchNormalization, ConvTranspose change nothing. Among the convs,
grouped by output size, only the 10 at full resolution S x S matter (top-10% IoU 0.99935,
IoU@0.5 0.9996, MAE 2.0e-5); no single one of them does (0.988-0.995): the error accumulates
through the DRM's full-resolution head, so the whole group stays FP32.
"""

from __future__ import annotations

import onnx

# Kept in FP32, decided by measurement on the tiny fixture and seeded B+ (README "ONNX export"):
# - Resize: onnxconverter-common's default block list has it (ONNX Runtime's CPU Resize has no
#   FP16 kernel), and the multi-view tiling is exact in FP32;
# - LayerNormalization / ReduceMean / Pow / Sqrt / Div: the statistics of LayerNorm and
#   LayerNorm2d, whose variance overflows or loses bits in FP16;
# - Softmax: attention over 1,024+ tokens sums many small FP16 terms.
KEEP_FP32_OPS: tuple[str, ...] = (
    "Resize",
    "LayerNormalization",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Div",
    "Softmax",
)


def full_resolution_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose output has the input image's spatial size (the DRM's)."""
    from mgd_rt.contract import OUTPUT_NAME
    from mgd_rt.export.graph import tensor_shapes

    shapes = tensor_shapes(model)
    side = shapes[OUTPUT_NAME][-1]  # the logits are (B, 1, S, S) whatever the input's layout
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and shapes.get(node.output[0], [None])[-1] == side
    ]


def pixel_input_casts(model: onnx.ModelProto) -> list[str]:
    """Names of the Cast nodes that turn a uint8 pixel input into float (export --uint8-input).

    The converter would retype such a Cast's output to FP16 but keep its ``to`` float, an invalid
    graph; blocked, it stays a uint8 -> float32 cast and the normalisation after it stays FP32.
    """
    from mgd_rt.contract import INPUT_NAME

    graph = model.graph
    image = next((i for i in graph.input if i.name == INPUT_NAME), None)
    if image is None or image.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return []
    names, frontier = [], {INPUT_NAME}
    while frontier:  # through the layout ops on the uint8 tensor up to its Casts
        consumers = [n for n in graph.node if frontier & set(n.input)]
        names += [n.name for n in consumers if n.op_type == "Cast"]
        frontier = {out for n in consumers if n.op_type != "Cast" for out in n.output}
    return names


def to_fp16(
    model: onnx.ModelProto,
    keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS,
    keep_full_resolution_convs: bool = True,
) -> onnx.ModelProto:
    """Weights and activations in FP16 except ``keep_fp32_ops`` (and the full-resolution
    convs); graph I/O stays float32."""
    import warnings

    from onnxconverter_common import float16

    keep_nodes = full_resolution_convs(model) if keep_full_resolution_convs else []
    keep_nodes += pixel_input_casts(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the FP32 graph stays as it is
    # stale FP32 value_info would contradict the converted types: let the converter re-infer
    del model.graph.value_info[:]
    with warnings.catch_warnings():
        # it warns once per weight it clamps to FP16's range (tiny weights round to 1e-7)
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,  # contract: image and mask_logits are float32
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops),
            node_block_list=keep_nodes,
            disable_shape_infer=False,
        )
    return _keep_float32_outputs(converted)


def _keep_float32_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo the converter's FP16 cast after a blocked (FP32) node that feeds a graph output.

    onnxconverter-common casts every blocked node's output back to FP16, even when that output
    is a graph output it was told to keep float32 (keep_io_types), so mask_logits would end up
    FLOAT16. Drop such a Cast and let the FP32 node write the output directly.
    """
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    drop = []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and node.output[0] in outputs and to == onnx.TensorProto.FLOAT16:
            producer = next((n for n in graph.node if node.input[0] in n.output), None)
            if producer is not None and producer.op_type != "Cast":
                producer.output[list(producer.output).index(node.input[0])] = node.output[0]
                outputs[node.output[0]].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
                drop.append(node)
    for node in drop:
        graph.node.remove(node)
    return model
