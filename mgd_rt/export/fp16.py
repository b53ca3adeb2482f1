"""FP32 graph -> FP16 graph with FP32 input and output (onnxconverter-common's converter).

TensorRT 11 and TensorRT-RTX are strongly typed, so the precision is decided here, in the
graph. Ops whose FP16 error measurably hurts the logits stay FP32 (``KEEP_FP32_OPS``).
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


def to_fp16(model: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS) -> onnx.ModelProto:
    """Weights and activations in FP16 except ``keep_fp32_ops``; graph I/O stays float32."""
    import warnings

    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())  # the FP32 graph stays as it is
    # stale FP32 value_info would contradict the converted types: let the converter re-infer
    del model.graph.value_info[:]
    with warnings.catch_warnings():
        # it warns once per weight it clamps to FP16's range (tiny weights round to 1e-7)
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(
            model,
            keep_io_types=True,  # contract: image and mask_logits are float32
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops),
            disable_shape_infer=False,
        )
