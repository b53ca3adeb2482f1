"""ONNX graph passes: pin static shapes, simplify, metadata, and the hygiene report.

Operates on ``onnx.ModelProto`` in memory; nothing here imports torch.
"""

from __future__ import annotations

import ast
import collections
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mgd_rt.contract import INPUT_NAME

# ops a static, plugin-free graph must not contain (control flow and shape arithmetic)
FORBIDDEN_OPS = ("If", "Loop", "Mod", "Scan")


def _static_shape(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Dims of a tensor, None where symbolic (the batch)."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's dims after shape inference (graph inputs, intermediates, outputs), None where symbolic."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = inferred.graph
    out = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = _static_shape(vi)
    return out


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def pin_static_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace shape arithmetic on static dims with constants; only the batch stays dynamic.

    The exporter reads shapes at run time where a tensor has a dynamic batch: Resize takes
    its output ``sizes`` from Shape(x)[:2] (batch, channels), and reshapes take Shape(x)[:-2].
    (1) A Resize whose input and output are static except for the batch, with exact ratios,
    gets constant ``scales`` instead (ONNX Runtime and TensorRT then derive the same sizes).
    (2) Shape -> Slice with constant bounds becomes one Shape with start/end. (3) A Shape whose
    range holds static dims only becomes a Constant, and one that starts at the batch becomes
    Concat(Shape(x)[0:1], static dims). Returns the model and the number of rewrites.
    """
    graph = model.graph
    shapes = tensor_shapes(model)
    consts = _constants(graph)
    rewrites = 0
    new_inits: list[onnx.TensorProto] = []

    # (1) Resize(sizes from Shape) -> Resize(scales)
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] in consts:
            continue
        src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not src or not dst or None in src[1:] or None in dst[1:]:
            continue
        scales = np.array([1.0] + [o / i for i, o in zip(src[1:], dst[1:], strict=True)], dtype=np.float32)
        # the runtime computes floor(in * scale): keep only ratios that give the sizes exactly
        if any(int(np.floor(np.float32(i) * s)) != o for i, o, s in zip(src[1:], dst[1:], scales[1:], strict=True)):
            continue
        name = f"{node.name or node.output[0]}_scales"
        new_inits.append(numpy_helper.from_array(scales, name))
        node.input[2] = name
        del node.input[3]
        rewrites += 1

    # (2) Shape -> Slice(constant starts/ends, axis 0, step 1) folds into the Shape's range
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "Slice":
            continue
        shape = producers.get(node.input[0])
        if shape is None or shape.op_type != "Shape" or len(consumers[shape.output[0]]) != 1:
            continue
        args = [consts.get(name) if name else None for name in node.input[1:]]
        starts, ends = args[0], args[1]
        axes = args[2] if len(args) > 2 else None
        steps = args[3] if len(args) > 3 else None
        if starts is None or ends is None or starts.size != 1 or (steps is not None and int(steps[0]) != 1):
            continue
        if axes is not None and int(axes[0]) != 0:
            continue
        rank = len(shapes.get(shape.input[0], []))
        attrs = {a.name: a.i for a in shape.attribute}
        lo, hi = attrs.get("start", 0), attrs.get("end", rank)
        lo, hi = (lo + rank if lo < 0 else lo), (hi + rank if hi < 0 else hi)
        length = hi - lo
        s, e = int(starts[0]), int(ends[0])
        s = max(0, min(length, s + length if s < 0 else s))
        e = max(0, min(length, e + length if e < 0 else e))
        merged = helper.make_node("Shape", [shape.input[0]], [node.output[0]], start=lo + s, end=lo + e)
        node.CopyFrom(merged)
        rewrites += 1
    # the old Shape nodes that fed those slices are now dead; onnxslim removes them

    # (3) Shapes of static dims -> constants
    out_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        dims = shapes.get(node.input[0]) if node.op_type == "Shape" else None
        if not dims:
            out_nodes.append(node)
            continue
        rank = len(dims)
        attrs = {a.name: a.i for a in node.attribute}
        lo, hi = attrs.get("start", 0), attrs.get("end", rank)
        lo, hi = (lo + rank if lo < 0 else lo), (hi + rank if hi < 0 else hi)
        picked = dims[lo:hi]
        static = picked[1:] if lo == 0 else picked
        if None in static or (lo == 0 and hi == 1):
            out_nodes.append(node)
            continue
        tail = np.array(static, dtype=np.int64)
        if lo > 0 or picked[0] is not None:
            values = tail if lo > 0 else np.array(picked, dtype=np.int64)
            new_inits.append(numpy_helper.from_array(values, node.output[0]))
        else:
            batch = f"{node.output[0]}_batch"
            tail_name = f"{node.output[0]}_static"
            new_inits.append(numpy_helper.from_array(tail, tail_name))
            out_nodes.append(helper.make_node("Shape", [node.input[0]], [batch], start=0, end=1))
            out_nodes.append(helper.make_node("Concat", [batch, tail_name], [node.output[0]], axis=0))
        rewrites += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    graph.initializer.extend(new_inits)
    return model, rewrites


def deduplicate_initializers(model: onnx.ModelProto) -> int:
    """Merge byte-identical initializers (constant folding copies a folded position code once
    per consumer, e.g. six copies of the decoder's dense code); returns how many were dropped."""
    graph = model.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), init.raw_data or init.SerializeToString())
        if init.raw_data and key in first:
            rename[init.name] = first[key]
            continue
        first.setdefault(key, init.name)
        kept.append(init)
    if rename:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return len(rename)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-node removal, common-subexpression elimination.

    Chosen over onnxsim because it keeps the symbolic batch while folding (onnxsim needs
    fixed input shapes to fold much) and is pure Python, fast on a 2-core machine.
    """
    import onnxslim

    return onnxslim.slim(model)


def drop_duplicate_shapes(model: onnx.ModelProto) -> int:
    """Keep the first value_info entry of each tensor; returns how many were dropped."""
    seen: set[str] = set()
    kept = []
    for info in model.graph.value_info:
        if info.name not in seen:
            seen.add(info.name)
            kept.append(info)
    dropped = len(model.graph.value_info) - len(kept)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return dropped


# the dynamo exporter's node metadata: the module path a node was traced in (the simplifier drops it)
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def _in_module(node: onnx.NodeProto, module: str) -> bool:
    for prop in node.metadata_props:
        if prop.key == _NAME_SCOPES:
            return any(scope == module or scope.endswith("." + module) for scope in ast.literal_eval(prop.value))
    return False


def module_inputs(model: onnx.ModelProto, module: str) -> list[str]:
    """The tensors that the nodes traced in submodule ``module`` (e.g. "detail_enhance") read from the rest of
    the graph: graph inputs and other nodes' outputs, not initializers or Constant nodes; in graph order.

    Needs the exporter's node metadata, so call it on the exporter's graph, before :func:`simplify`. An empty
    list when no node carries ``module``'s scope.
    """
    graph = model.graph
    inside = [n for n in graph.node if _in_module(n, module)]
    produced_inside = {o for n in inside for o in n.output}
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                         for o in n.output}
    names: list[str] = []
    for node in inside:
        for name in node.input:
            if name and name not in produced_inside and name not in constants and name not in names:
                names.append(name)
    return names


def float_tensors(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Those of ``names`` that are float32 tensors of ``model`` (graph inputs or values with a known type)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.value_info)}
    return [name for name in names if types.get(name) == onnx.TensorProto.FLOAT]


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Write ``props`` (artifacts.METADATA_KEYS) as ONNX metadata_props, replacing old values."""
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=str(value))


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@dataclass
class GraphReport:
    """Facts about a graph that the hygiene rules and the README quote."""

    nodes: int
    op_counts: dict[str, int]
    forbidden: dict[str, int]
    shape_nodes: int
    non_batch_shape_nodes: int
    initializer_bytes: int
    opset: int
    input_shape: list
    output_shape: list
    input_dtype: str = "float32"
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def graph_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset ``model`` imports (0 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def graph_report(model: onnx.ModelProto, max_nodes: int | None = None) -> GraphReport:
    """Count nodes and op types; a Shape node is allowed only if it reads the batch alone."""
    graph = model.graph
    ops = collections.Counter(node.op_type for node in graph.node)
    shape_nodes = [n for n in graph.node if n.op_type == "Shape"]
    non_batch = 0
    for node in shape_nodes:
        attrs = {a.name: a.i for a in node.attribute}
        if not (attrs.get("start", 0) == 0 and attrs.get("end") == 1):
            non_batch += 1
    forbidden = {op: ops[op] for op in FORBIDDEN_OPS if ops.get(op)}
    init_bytes = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            init_bytes += numpy_helper.to_array(node.attribute[0].t).nbytes
    opset = graph_opset(model)

    def dims(vi: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    image = next(i for i in graph.input if i.name == INPUT_NAME)
    report = GraphReport(
        nodes=len(graph.node),
        op_counts=dict(ops.most_common()),
        forbidden=forbidden,
        shape_nodes=len(shape_nodes),
        non_batch_shape_nodes=non_batch,
        initializer_bytes=init_bytes,
        opset=opset,
        input_shape=dims(image),
        output_shape=dims(graph.output[0]),
        input_dtype=onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type).name,
    )
    if forbidden:
        report.violations.append(f"forbidden ops {forbidden}")
    if non_batch:
        report.violations.append(f"{non_batch} Shape nodes read more than the batch dimension")
    if max_nodes is not None and report.nodes >= max_nodes:
        report.violations.append(f"{report.nodes} nodes >= {max_nodes}")
    return report
