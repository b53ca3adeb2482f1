"""The source graph of a build: :func:`read_graph` checks an mgd-rt ONNX graph and says what it is.

onnx is imported inside the functions, so importing ``mgd_rt.engine`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgd_rt.artifacts import PRECISIONS, file_sha256
from mgd_rt.contract import INPUT_FORMAT_KEY, INPUT_NAME, OUTPUT_NAME, PIXEL_INPUT
from mgd_rt.errors import MgdRtError, first_line

# ONNX TensorProto element types -> the numpy spelling the sidecar uses
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64",
                9: "bool"}


@dataclass
class GraphInfo:
    """What build_engine reads from an ONNX graph before building."""

    path: Path
    sha256: str
    metadata: dict[str, str]
    precision: str  # the graph's own compute precision: fp32, fp16 or int8 (Q/DQ)
    image_size: int
    fixed_batch: int | None  # None: dynamic batch
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]

    @property
    def pixel_input(self) -> bool:
        """True when the input is uint8 (B, S, S, 3) pixels (exported with --uint8-input)."""
        return self.metadata.get(INPUT_FORMAT_KEY) == PIXEL_INPUT

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The input's shape at ``batch``: (B, 3, S, S), or (B, S, S, 3) for a pixel input."""
        s = self.image_size
        return (batch, s, s, 3) if self.pixel_input else (batch, 3, s, s)


def _dims(value_info) -> list[int]:
    # symbolic or unknown dims -> -1, TensorRT's spelling of "dynamic"
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _io(values) -> list[dict[str, Any]]:
    return [{"name": v.name, "shape": _dims(v), "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "?")}
            for v in values]


def read_graph(onnx_path: str | Path) -> tuple[GraphInfo, Any]:
    """(GraphInfo, the loaded ModelProto) of an mgd-rt graph; MgdRtError for anything else.

    The graph must have input ``image`` float32 (B, 3, S, S) (uint8 (B, S, S, 3) when its metadata says
    input_format uint8) and output ``mask_logits``; S comes from the ``image_size`` metadata (and must
    match the static input dims).
    """
    import onnx

    from mgd_rt.export.graph import read_metadata

    path = Path(onnx_path)
    if not path.is_file():
        raise MgdRtError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise MgdRtError(f"{path}: not an ONNX graph ({first_line(exc)})") from None
    if not model.graph.node or not model.graph.input:
        raise MgdRtError(f"{path}: not an ONNX graph (no nodes or inputs); pass a graph from mgd-rt export")
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise MgdRtError(f"{path}: not an mgd-rt graph: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                         f"has {sorted(inputs)} -> {sorted(outputs)}")
    meta = read_metadata(model)
    dims = _dims(inputs[INPUT_NAME])
    pixels = meta.get(INPUT_FORMAT_KEY) == PIXEL_INPUT
    channels, sides = (dims[3:], dims[1:3]) if pixels else (dims[1:2], dims[2:])
    if len(dims) != 4 or channels != [3]:
        layout = "(B, S, S, 3)" if pixels else "(B, 3, S, S)"
        raise MgdRtError(f"{path}: input {INPUT_NAME!r} must be {layout}, has {dims}")
    size = int(meta["image_size"]) if "image_size" in meta else sides[-1]
    if size <= 0 or sides != [size, size]:
        raise MgdRtError(f"{path}: input {INPUT_NAME!r} is {dims}, metadata image_size {meta.get('image_size')}: "
                         "spatial size must be static and match; re-export with mgd-rt export")
    precision = meta.get("precision") or _detect_precision(model)
    if precision not in PRECISIONS:
        raise MgdRtError(f"{path}: metadata precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    info = GraphInfo(path, file_sha256(path), meta, precision, size, dims[0] if dims[0] > 0 else None,
                     _io(model.graph.input), _io(model.graph.output))
    return info, model


def _detect_precision(model) -> str:
    """A graph without our metadata: Q/DQ nodes -> int8, FP16 weights -> fp16, else fp32."""
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


__all__ = ["GraphInfo", "read_graph"]
