"""torch -> ONNX with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``).

Why dynamo: torch.export specialises every size except the batch, so Hiera's window padding,
the view tiling and every reshape resolve to constants at trace time. The legacy TorchScript
exporter records each ``x.shape`` read as Shape/Gather/Mod nodes (4,900 nodes for the tiny
variant against 1,230 here, with 36 Mod), which then need folding.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch

from mgd_rt.contract import BATCH_AXIS_NAME, INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.export.forms import PixelInput, export_form
from mgd_rt.model import MGDSAM2

log = logging.getLogger("mgd_rt")

# 20: GELU (two per Hiera block: the MLP and the adapter) exports as one Gelu node instead of
# five (Div, Erf, Add, Mul, Mul), 190 fewer nodes for B+. ONNX Runtime and TensorRT-RTX 1.7
# parse it; pass --opset 18 for TensorRT releases whose parser predates opset 20.
DEFAULT_OPSET = 20
# 23, the CPU graph (export --opset 23): the exporter writes each scaled_dot_product_attention as one
# ONNX Attention node (opset 23's op; MatMul, Mul, Softmax, MatMul and their layout ops before), which
# ONNX Runtime and OpenVINO run as one CPU kernel (B+ at 1024: 2,351 -> 1,868 nodes, 3-6% faster on
# ONNX Runtime, 2-3% on OpenVINO; with export_form's head-major attention 1,679 nodes, 5% more on ONNX
# Runtime, 1,661 with its cropped window projection, 2,276 without the window padding (6-10% faster on
# both runtimes, more with the runs cut before their projections), 2,483 with q, k, v projected apart (no Split,
# 4% faster), 2,581 with export_form's CPU layouts (pooling and layer norms on tokens, no concatenation
# into a 1x1 convolution); README "ONNX export"). TensorRT-RTX 1.7 builds
# Attention in FP16 but in FP32 only for a fixed batch, so the default stays DEFAULT_OPSET.
CPU_OPSET = 23  # also the first opset that has Attention
# the batch range torch.export may assume; any B in it gives the same graph
MAX_BATCH = 256


def used_parameter_bytes(model: MGDSAM2) -> tuple[int, int, list[str]]:
    """FP32 bytes of the parameters the forward reads, all parameter bytes, and the skipped prefixes.

    Skipped: the adapters the authors create but never run (``mpadapter.unused_prefixes``) and
    the decoder heads only the auxiliary output or SAM2's prompt path uses.
    """
    trunk = model.image_encoder.trunk
    skipped = [f"image_encoder.trunk.mpadapter.{name}." for name in trunk.mpadapter.unused_prefixes]
    skipped += [
        "sam_mask_decoder.iou_prediction_head.",
        "sam_mask_decoder.pred_obj_score_head.",
        "sam_mask_decoder.output_hypernetworks_mlps.",
    ]
    total = used = 0
    for name, param in model.named_parameters():
        size = param.numel() * 4
        total += size
        if not any(name.startswith(prefix) for prefix in skipped):
            used += size
    return used, total, skipped


def example_input(side: int, batch: int | None, pixel_input: bool = False) -> torch.Tensor:
    """A seeded traced input: float32 (B, 3, S, S), or uint8 (B, S, S, 3) for a pixel input.

    B=2 when the batch is dynamic: a batch of 1 would be specialised by torch.export.
    """
    generator = torch.Generator().manual_seed(0)
    if pixel_input:
        return torch.randint(0, 256, (batch or 2, side, side, 3), dtype=torch.uint8, generator=generator)
    return torch.randn(batch or 2, 3, side, side, generator=generator)


def torch_to_onnx(
    model: MGDSAM2, batch: int | None, opset: int = DEFAULT_OPSET, pixel_input: bool = False
) -> onnx.ModelProto:
    """Export ``model`` in its export form: image (B, 3, S, S) -> mask_logits (B, 1, S, S).

    ``batch`` None keeps B dynamic (named contract.BATCH_AXIS_NAME); an int fixes it.
    ``pixel_input``: the input is uint8 (B, S, S, 3) RGB, normalised inside the graph (PixelInput).
    """
    example = example_input(model.image_size, batch, pixel_input)
    dynamic_shapes = None
    if batch is None:
        dynamic_shapes = {"image": {0: torch.export.Dim(BATCH_AXIS_NAME, min=1, max=MAX_BATCH)}}
    cpu_graph = opset >= CPU_OPSET
    with export_form(model, attention_op=cpu_graph, cpu_graph=cpu_graph), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                PixelInput(model) if pixel_input else model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; name the opset when it is the cause
            if "opset" in str(exc).lower():
                raise MgdRtError(f"ONNX export failed for opset {opset}: {exc}") from exc
            raise
    proto = program.model_proto
    if opset >= CPU_OPSET:
        fused = sum(node.op_type == "Attention" for node in proto.graph.node)
        log.info("opset %d: %d attention ops as ONNX Attention nodes, the CPU graph (ONNX Runtime, OpenVINO); "
                 "for TensorRT export with --opset %d", opset, fused, DEFAULT_OPSET)
    # the dynamo exporter names the batch axis after the Dim or "s0": use the contract's name
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if batch is None:
            dim.dim_param = BATCH_AXIS_NAME
    return proto
