"""What stays in higher precision: the default exclusions (the one place they live) and user patterns.

Decided by measurement with ``mgd_rt.calibration.sensitivity`` on the tiny fixture (held-out
scikit-image photos chelsea, coins, colorwheel; README "INT8 calibration"): with every
quantizable op in INT8 the top-10% mask IoU was 0.776 (sigmoid MAE 5.7e-3). Putting back in FP32
- single layers or 16-layer blocks anywhere in the encoder or decoder: no block moved it by more
  than 0.01, except the full-resolution convolutions of the DRM and the mask head;
- those convolutions (output side >= S/4): 0.893; plus the inputs of Add (residual sums) and
  Resize (the multi-view tiling and the FPN upsampling): 0.976, sigmoid MAE 4.1e-4.
Seeded B+ at S=1024 (tensorrt placement, max ranges, held-out photo "retina", the worst of six):
top-10% IoU 0.9696 with the S/4 rule; restoring any 16-node block moved it by < 0.005 except
the last one, the DRM / mask-head convolutions at S/8 and S/16 (0.9742); keeping every
convolution with an output side >= S/8 in FP32 (9 more nodes, the local views' patch embedding
among them) gave 0.9741.
So by default: Add and Resize are not quantized, nor is any Conv/ConvTranspose whose output is
at S/8 resolution or more. MatMul/Gemm (58% of B+'s CPU time) and the encoder's other
convolutions stay INT8.
"""

from __future__ import annotations

import re

from mgd_rt.errors import MgdRtError

# op types whose inputs get no Q/DQ (ModelOpt's op_types_to_exclude)
DEFAULT_EXCLUDE_OP_TYPES: tuple[str, ...] = ("Add", "Resize")
# Conv/ConvTranspose with an output side >= S / FULL_RESOLUTION_DIVISOR stay FP32
FULL_RESOLUTION_DIVISOR = 8
CONV_OPS = ("Conv", "ConvTranspose")


def _output_sides(model) -> dict[str, int]:
    """tensor name -> last (width) dimension, from the graph's shape information."""
    import onnx

    inferred = model if len(model.graph.value_info) else onnx.shape_inference.infer_shapes(model)
    sides = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[-1].HasField("dim_value"):
            sides[info.name] = dims[-1].dim_value
    return sides


def default_excluded_nodes(model, image_size: int) -> list[str]:
    """Names of the Conv/ConvTranspose nodes whose output (B, C, h, w) has w >= S / FULL_RESOLUTION_DIVISOR."""
    sides = _output_sides(model)
    limit = image_size // FULL_RESOLUTION_DIVISOR
    return [n.name for n in model.graph.node if n.op_type in CONV_OPS and sides.get(n.output[0], 0) >= limit]


def match_patterns(model, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Node names matching any user pattern: a regex searched in node names, or ``op:TYPE``.

    A pattern that matches nothing is an error (a typo would otherwise quantize what the
    user meant to keep).
    """
    names: list[str] = []
    for pattern in patterns:
        if pattern.startswith("op:"):
            found = [n.name for n in model.graph.node if n.op_type == pattern[3:]]
        else:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise MgdRtError(f"--exclude {pattern!r}: not a valid regular expression ({exc})") from None
            found = [n.name for n in model.graph.node if regex.search(n.name)]
        if not found:
            ops = sorted({n.op_type for n in model.graph.node})
            raise MgdRtError(
                f"--exclude {pattern!r} matches no node of the graph: use a regex on node names "
                f"(e.g. 'node_Conv_30') or op:TYPE with one of {', '.join(ops)}"
            )
        names.extend(n for n in found if n not in names)
    return names
