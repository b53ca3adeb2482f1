"""FP32 graph + calibration images -> INT8 Q/DQ graph, with NVIDIA ModelOpt's ONNX PTQ on the CPU."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mgd_rt.artifacts import check_output_path, int8_path, metadata_floats
from mgd_rt.calibration import data as calib_data
from mgd_rt.calibration.exclusions import DEFAULT_EXCLUDE_OP_TYPES, default_excluded_nodes, match_patterns
from mgd_rt.calibration.ranges import METHODS, collect_ranges
from mgd_rt.contract import FLOAT_INPUT, IMAGENET_MEAN, IMAGENET_STD, INPUT_FORMAT_KEY, INPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.samples import CALIBRATION_PHOTOS

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("mgd_rt")

# tensorrt: ModelOpt's Q/DQ placement (Q/DQ on compute inputs; TensorRT fuses and picks output
# precision); cpu: ONNX Runtime's quantize_static QDQ placement (Q/DQ on convolution outputs too,
# int32 bias), which ORT's CPU optimizer fuses into QLinearConv / MatMulIntegerToFloat
TARGETS = ("tensorrt", "cpu")
# calibrate's default: the placement the graph's opset calls for (resolve_target)
AUTO_TARGET = "auto"
# above this opset (the CPU graph, export --opset 23) ONNX Runtime 1.32's optimizer refuses to load ModelOpt's
# placement (its Q/DQ propagation and S8->U8 passes disagree; tests/test_cpu_graph.py tracks it), and TensorRT,
# which that placement is for, builds from the opset-20 graph: there auto is cpu
TENSORRT_PLACEMENT_MAX_OPSET = 20
# op types quantized for the cpu target (ORT's quantizer; Add / Resize stay FP32 as for tensorrt)
CPU_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# of those, the ones whose output stays float: a MatMul with a float output fuses into
# MatMulIntegerToFloat; a quantized one became QLinearMatMul plus a DequantizeLinear before its
# float bias Add (B+ 1024: 909 + 496 ms against MatMulIntegerToFloat's 857 ms for the same products)
CPU_FLOAT_OUTPUT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")
# ops that mean a graph is already quantized
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                 "ConvInteger", "DynamicQuantizeLinear"}
# metadata written beside artifacts.METADATA_KEYS (precision becomes "int8")
CALIBRATION_KEYS: dict[str, str] = {
    "calibration_method": "entropy, max or percentile",
    "calibration_images": "number of images calibrated on, decimal",
    "calibration_images_sha256": "sha256 of the sorted (name, content sha256) list of those images",
    "calibration_source": "the folder given, or 'scikit-image' for the default photos",
    "int8_fp32_nodes": "number of compute nodes kept in FP32 (default exclusions + --exclude)",
    "calibration_target": "tensorrt (ModelOpt's placement) or cpu (ONNX Runtime's QDQ placement)",
}


def resolve_target(target: str, opset: int) -> str:
    """The placement calibrate uses for ``target`` on a graph of ``opset``: auto is tensorrt up to
    TENSORRT_PLACEMENT_MAX_OPSET (the graph TensorRT builds) and cpu above it (the CPU graph)."""
    if target not in (AUTO_TARGET, *TARGETS):
        raise MgdRtError(f"--target {target}: use one of {', '.join((AUTO_TARGET, *TARGETS))}")
    if target != AUTO_TARGET:
        return target
    return "cpu" if opset > TENSORRT_PLACEMENT_MAX_OPSET else "tensorrt"


def onnxruntime_cannot_load(target: str, opset: int) -> bool:
    """Whether the INT8 graph ``target``'s placement makes of an opset-``opset`` graph is one ONNX Runtime refuses."""
    return target == "tensorrt" and opset > TENSORRT_PLACEMENT_MAX_OPSET


def refuse_unloadable_placement(onnx_path: str | Path, target: str) -> None:
    """MgdRtError, before any calibration, when ``target`` asks for ModelOpt's placement on a graph whose opset
    ONNX Runtime cannot load it at (the held-out check runs the INT8 graph there)."""
    import onnx

    from mgd_rt.export.graph import graph_opset

    if target != "tensorrt" or not Path(onnx_path).is_file():
        return  # calibrate names a missing file itself
    try:
        opset = graph_opset(onnx.load(str(onnx_path), load_external_data=False))
    except Exception:  # noqa: BLE001 - calibrate says what is wrong with an unreadable graph
        return
    if onnxruntime_cannot_load(target, opset):
        raise MgdRtError(f"{onnx_path}: --target tensorrt on an opset-{opset} graph gives an INT8 graph ONNX Runtime "
                         f"cannot load (above opset {TENSORRT_PLACEMENT_MAX_OPSET}), so its held-out check cannot "
                         "run: use --target cpu (auto picks it for this graph), --no-report, or calibrate the graph "
                         f"exported with --opset {TENSORRT_PLACEMENT_MAX_OPSET} (the one TensorRT builds)")


def load_fp32_graph(onnx_path: Path):
    """The FP32 master graph and its metadata; FP16, quantized or unreadable graphs are refused."""
    import onnx

    from mgd_rt.export.graph import read_metadata

    if onnx_path.suffix != ".onnx":
        raise MgdRtError(f"{onnx_path}: calibrate takes the FP32 .onnx graph from mgd-rt export")
    if not onnx_path.is_file():
        raise MgdRtError(f"{onnx_path}: no such file (export one with mgd-rt export)")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:
        raise MgdRtError(f"{onnx_path}: not a readable ONNX graph ({exc})") from None
    meta = read_metadata(model)
    quantized = sorted({n.op_type for n in model.graph.node} & QUANTIZED_OPS)
    if quantized or meta.get("precision") == "int8":
        raise MgdRtError(
            f"{onnx_path}: already quantized ({', '.join(quantized) or 'precision int8'}): "
            "calibrate the FP32 graph mgd-rt export wrote"
        )
    if meta.get(INPUT_FORMAT_KEY, FLOAT_INPUT) != FLOAT_INPUT:
        raise MgdRtError(f"{onnx_path}: a pixel-input graph (exported with --uint8-input); calibrate the float32-input "
                         "graph (mgd-rt export without --uint8-input)")
    halves = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    if meta.get("precision") == "fp16" or halves:
        raise MgdRtError(
            f"{onnx_path}: an FP16 graph; INT8 ranges must be measured on FP32: calibrate the FP32 "
            "graph (model.onnx, not model.fp16.onnx)"
        )
    return model, meta


def calibrate(
    onnx_path: str | Path,
    images: str | Path | list[str | Path] | None = None,
    num_images: int = 64,
    method: str = "max",
    exclude: tuple[str, ...] | list[str] = (),
    output: str | Path | None = None,
    seed: int = 0,
    default_exclusions: bool = True,
    cache: bool = True,
    target: str = AUTO_TARGET,
) -> Path:
    """Quantize ``onnx_path`` (FP32, image (B, 3, S, S) -> mask_logits (B, 1, S, S)) to INT8 Q/DQ.

    ``images``: a folder (searched recursively), a file or a list of files, sampled with
    ``seed``; None takes scikit-image's sample photos (at most their 12). Every image goes
    through the runtime's ``preprocess``. Weights: per-channel INT8; activations: per-tensor,
    ranges by ``method``; the rest of the graph stays FP32 (ONNX Runtime's CPU kernels run
    FP16 slowly, and TensorRT fuses Q/DQ the same way either way). ``exclude``: extra
    patterns (regex on node names, or ``op:TYPE``) kept in FP32, on top of the measured
    defaults (``exclusions.py``) unless ``default_exclusions`` is False. Ranges are measured by
    ``ranges.collect_ranges`` (memory bounded by one forward pass) for both targets. ``target``:
    ``auto`` (``resolve_target``: tensorrt for the opset-20 graph, cpu for the CPU graph),
    ``tensorrt`` (ModelOpt's TensorRT placement, symmetric INT8 activations) or ``cpu`` (ONNX
    Runtime's own QDQ quantizer: Q/DQ on convolution outputs too, so ORT's CPU optimizer fuses
    them into integer kernels; same exclusions plus the activation x activation MatMuls, U8
    activations, per-channel S8 weights). Returns the path written (default
    ``<name>.int8.onnx``); the input is never modified.
    """
    import onnx

    from mgd_rt.export import save_graph
    from mgd_rt.export.graph import graph_opset, set_metadata

    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    if method not in METHODS:
        raise MgdRtError(f"--method {method}: use one of {', '.join(METHODS)}")
    resolve_target(target, 0)  # a wrong name is refused before the graph is read
    model, meta = load_fp32_graph(onnx_path)
    opset = graph_opset(model)
    if target == AUTO_TARGET:
        target = resolve_target(target, opset)
        log.info("placement: %s (--target auto, opset %d)", target, opset)
    elif onnxruntime_cannot_load(target, opset):
        log.warning("%s: opset %d: ONNX Runtime cannot load ModelOpt's placement above opset %d (OpenVINO, and ONNX "
                    "Runtime with basic optimizations only, can); --target cpu is the placement for this graph",
                    onnx_path, opset, TENSORRT_PLACEMENT_MAX_OPSET)
    output = Path(output) if output is not None else int8_path(onnx_path)
    check_output_path(output, ".onnx", onnx_path)
    size = int(meta.get("image_size") or model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
    mean = metadata_floats(meta.get("mean"), IMAGENET_MEAN)
    std = metadata_floats(meta.get("std"), IMAGENET_STD)

    fp32_nodes = default_excluded_nodes(model, size) if default_exclusions else []
    fp32_nodes += [n for n in match_patterns(model, list(exclude)) if n not in fp32_nodes]

    cache_dir = calib_data.cache_dir() if cache else None
    if images is None:
        count = min(num_images, len(CALIBRATION_PHOTOS))
        log.info("calibration images: scikit-image's sample photos (%d; pass --images DIR for your own)", count)
        if count < num_images:
            log.warning("scikit-image ships %d calibration photos: calibrating on %d, not %d", count, count,
                        num_images)
        image_set = calib_data.skimage_set(CALIBRATION_PHOTOS, size, mean, std, count)
    else:
        image_set = calib_data.prepare(images, num_images, size, mean, std, seed, cache=cache_dir)
    fp32_op_types = DEFAULT_EXCLUDE_OP_TYPES if default_exclusions else ()
    log.info("calibrating on %d images (%s), method %s, %d nodes kept FP32 + op types %s",
             len(image_set.names), image_set.source, method, len(fp32_nodes), ",".join(fp32_op_types) or "none")
    if target == "cpu":
        nodes = cpu_quantized_nodes(model, fp32_nodes, fp32_op_types)
        ranges = collect_ranges(model, cpu_calibrated_tensors(model, nodes), image_set.tensors, method)
        quantized = _ort_quantize(onnx_path, ranges, nodes, output.parent)
    else:
        # ModelOpt decides the placement (its calibration on one image is replaced below)
        quantized = _modelopt_quantize(onnx_path, image_set.tensors[:1], fp32_nodes, fp32_op_types, output.parent)
        names = quantized_activations(quantized)
        ranges = collect_ranges(model, names, image_set.tensors, method)
        set_symmetric_scales(quantized, ranges)
    untie_weight_dequantization(quantized)
    set_metadata(quantized, {
        **meta,
        "precision": "int8",
        "calibration_method": method,
        "calibration_images": str(len(image_set.names)),
        "calibration_images_sha256": image_set.list_sha256,
        "calibration_source": image_set.source,
        "int8_fp32_nodes": str(len(fp32_nodes)),
        "calibration_target": target,
    })
    onnx.checker.check_model(quantized)
    nbytes = save_graph(quantized, output)
    log.info("wrote %s (%.1f MB) in %.1f s", output, nbytes / 1e6, time.perf_counter() - start)
    return output


def untie_weight_dequantization(model: onnx.ModelProto) -> int:
    """Give every consumer of a quantized weight its own DequantizeLinear and its own copy of the weight, scale
    and zero point; returns the DequantizeLinear nodes added.

    The CPU graph projects each run of a block's windows with the same weight (mgd_rt.export.forms.
    padless_window_block), so one weight's DequantizeLinear feeds several MatMuls. ONNX Runtime 1.32 with
    session.x64quantprecision (onnxruntime_backend.ort_session) converts the weight to U8 once per consumer
    under one name, and refuses to load the graph ("Attempt to replace the existing tensor"). B+ at 1024: 180
    more DequantizeLinear (each padded block's q, k, v and output projections, per run): a 152 MB graph (109 MB
    when each block's qkv projection ran once).
    """
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list[onnx.NodeProto] = []
    added = 0
    for node in model.graph.node:
        nodes.append(node)
        readers = consumers.get(node.output[0], []) if node.op_type == "DequantizeLinear" else []
        if len(readers) < 2 or node.input[0] not in initializers:
            continue
        for k, reader in enumerate(readers[1:], start=1):
            inputs = []
            for name in node.input:
                if name in initializers:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(initializers[name])
                    copy.name = f"{name}_untied{k}"
                    model.graph.initializer.append(copy)
                    name = copy.name
                inputs.append(name)
            untied = onnx.helper.make_node("DequantizeLinear", inputs, [f"{node.output[0]}_untied{k}"],
                                           name=f"{node.name}_untied{k}")
            untied.attribute.extend(node.attribute)  # axis: per-channel scales
            reader.input[:] = [untied.output[0] if name == node.output[0] else name for name in reader.input]
            nodes.append(untied)
            added += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if added:
        log.info("gave %d shared weight dequantizations one consumer each (ONNX Runtime loads no other)", added)
    return added


def unsigned_weights(model: onnx.ModelProto) -> int:
    """Store every INT8 weight that a DequantizeLinear reads as UINT8, 128 higher, with its zero point 128
    higher too; returns the weights rewritten. Exact: each dequantized weight is unchanged.

    What ONNX Runtime's ``session.x64quantprecision`` does at load time, done once in the file, for runtimes that
    cannot set that option (Triton's onnxruntime backend passes no such session entry): on x86 CPUs without VNNI
    the U8 x S8 kernels can saturate, and U8 weights select the exact U8 x U8 ones. On CPUs with VNNI or AMX
    those are slower (B+ 1024 on AMX: 3.4 s an image against 2.2 s), so only graphs served without VNNI want it.
    """
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    rewritten: set[str] = set()
    weights = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        if initializers[node.input[0]].data_type != onnx.TensorProto.INT8:
            continue  # int32 biases, and weights rewritten through another reader
        if len(node.input) < 3 or not node.input[2]:
            raise MgdRtError(f"DequantizeLinear {node.name!r}: an INT8 weight without a zero point; "
                             "rewrite it with its zero point explicit")
        for name in node.input[0], node.input[2]:
            if name not in rewritten:
                shifted = numpy_helper.to_array(initializers[name]).astype(np.int16) + 128
                initializers[name].CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), name))
                rewritten.add(name)
        weights += 1
    return weights


def _modelopt_quantize(
    onnx_path: Path,
    tensors: np.ndarray,
    fp32_nodes: list[str],
    fp32_op_types: tuple[str, ...],
    workdir: Path,
):
    """ModelOpt INT8 PTQ (max ranges on ``tensors`` (N, 3, S, S)) of a private copy of ``onnx_path``.

    Its max calibrator reduces each tensor inside the graph (B+ at 1024, one image: 13-14 GB peak);
    its entropy mode keeps every activation as an output, hence ranges come from collect_ranges.
    """
    import onnx

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise MgdRtError(
            f"NVIDIA ModelOpt is not installed ({exc}): pip install -e '.[int8]' (see README, INT8 calibration)"
        ) from None
    # ModelOpt rewrites the graph it is given in place (seen with 0.47): work on a copy
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=workdir) as tmp:
        source = Path(tmp) / "fp32.onnx"
        shutil.copyfile(onnx_path, source)
        target = Path(tmp) / "int8.onnx"
        quantize(
            str(source),
            quantize_mode="int8",
            calibration_data={INPUT_NAME: np.ascontiguousarray(tensors, dtype=np.float32)},
            calibration_method="max",
            calibration_eps=["cpu"],
            # exact names: ModelOpt matches nodes_to_exclude with re.match, a prefix match
            nodes_to_exclude=[f"{re.escape(name)}$" for name in fp32_nodes] or None,
            op_types_to_exclude=list(fp32_op_types) or None,
            high_precision_dtype="fp32",
            # weights stored as INT8 behind a DequantizeLinear (B+ at 1024: 319 -> 106 MB)
            dq_only=True,
            output_path=str(target),
            log_level="WARNING",
        )
        if not target.is_file():
            raise RuntimeError(f"ModelOpt wrote no graph at {target}")
        return onnx.load(str(target))


def quantized_activations(model) -> list[str]:
    """Names of the activation tensors (not initializers) that feed QuantizeLinear nodes."""
    weights = {t.name for t in model.graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in model.graph.node
                              if n.op_type == "QuantizeLinear" and n.input[0] not in weights))


def set_symmetric_scales(model, ranges: dict[str, tuple[float, float]]) -> None:
    """Set each activation QuantizeLinear's scale to max(|low|, |high|) / 127 (symmetric INT8, zero point 0)."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in ranges:
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 else np.int8(0)
        if zero_point.dtype != np.int8 or np.any(zero_point != 0):
            raise RuntimeError(f"{node.name}: expected a symmetric INT8 quantizer (int8 zero point 0)")
        low, high = ranges[node.input[0]]
        limit = max(abs(low), abs(high), 1e-12)
        scales[node.input[1]] = max(scales.get(node.input[1], 0.0), limit / 127.0)
    for name, scale in scales.items():
        initializers[name].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), name))


def cpu_quantized_nodes(model, fp32_nodes: list[str], fp32_op_types: tuple[str, ...]) -> list[str]:
    """Nodes the cpu target quantizes: CPU_OP_TYPES not kept FP32, and no MatMul of two activations.

    Both inputs of an attention MatMul are activations, so ORT runs it as U8 x U8, which MLAS
    computes no faster than FP32 (measured here: 308 vs 304 GOPS, while U8 x S8 ran 1,084), and
    its Softmax becomes a QLinearSoftmax 4.7x slower than the FP32 one (B+ at 512).
    """
    weights = {t.name for t in model.graph.initializer}
    excluded = set(fp32_nodes)
    return [n.name for n in model.graph.node
            if n.op_type in CPU_OP_TYPES and n.op_type not in fp32_op_types and n.name not in excluded
            and not (n.op_type == "MatMul" and n.input[1] not in weights)]


def cpu_calibrated_tensors(model, nodes: list[str]) -> list[str]:
    """The ranges ORT's QDQ quantizer reads for ``nodes``: their float inputs, and the outputs it quantizes."""
    weights = {t.name for t in model.graph.initializer}
    chosen = set(nodes)
    return list(dict.fromkeys(
        t for n in model.graph.node if n.name in chosen
        for t in list(n.input) + ([] if n.op_type in CPU_FLOAT_OUTPUT_OP_TYPES else list(n.output))
        if t and t not in weights))


def _ort_quantize(onnx_path: Path, ranges: dict[str, tuple[float, float]], nodes: list[str], workdir: Path):
    """ONNX Runtime's static QDQ quantization of ``nodes`` with the given ``ranges`` (the ``cpu`` placement).

    Run in a fresh interpreter: ModelOpt's quantize() monkeypatches onnxruntime.quantization's
    calibrators and quantizers process-wide (ort_patching.patch_ort_modules), after which ORT's own
    quantize_static fails ("Quantization parameters are not specified for param ...").
    """
    import json
    import subprocess
    import sys

    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=workdir) as tmp:
        target = Path(tmp) / "int8.onnx"
        cache = Path(tmp) / "tensors_data.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
            name: (np.float32(lo), np.float32(hi)) for name, (lo, hi) in ranges.items()}), cache)
        job = {"source": str(onnx_path), "target": str(target), "nodes": nodes, "cache": str(cache)}
        code = "import sys; from mgd_rt.calibration.quantize import _ort_quantize_job as j; j(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", code, json.dumps(job)], capture_output=True, text=True)
        if done.returncode != 0 or not target.is_file():
            raise RuntimeError(f"ONNX Runtime quantize_static failed:\n{done.stderr[-4000:]}")
        return onnx.load(str(target))


def _ort_quantize_job(job_json: str) -> None:
    """The child side of ``_ort_quantize``: ``quantize_static`` with QDQ, U8 activations, per-channel S8 weights.

    The ranges arrive as ORT's own calibration cache, so quantize_static runs no calibration.
    """
    import json
    import sys

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    job = json.loads(job_json)
    if "modelopt" in sys.modules:
        raise RuntimeError("ModelOpt is loaded: its patches break onnxruntime.quantization")
    quantize_static(
        job["source"],
        job["target"],
        None,
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=job["nodes"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=job["cache"],
        extra_options={"OpTypesToExcludeOutputQuantization": list(CPU_FLOAT_OUTPUT_OP_TYPES)},
    )
