"""INT8 calibration of the tiny model: images -> Q/DQ graph, metadata, cache, accuracy, bad input, TensorRT-RTX.

The tiny graph is exported once and calibrated once per module (~2.5 min on 2 busy cores);
B+ at S=1024 is marked slow.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from mgd_rt.artifacts import METADATA_KEYS, int8_path
from mgd_rt.contract import INPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import TOLERANCES
from mgd_rt.runtime.samples import CALIBRATION_PHOTOS, HOLDOUT_PHOTOS

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[int8]')")

from mgd_rt.calibration import DEFAULT_EXCLUDE_OP_TYPES, accuracy_report, calibrate  # noqa: E402
from mgd_rt.calibration import data as calib_data  # noqa: E402
from mgd_rt.calibration.exclusions import default_excluded_nodes  # noqa: E402
from mgd_rt.calibration.sensitivity import quantized_nodes, sweep  # noqa: E402
from mgd_rt.export.graph import read_metadata  # noqa: E402

# calibration photos written as files of several formats and sizes (scikit-image ships them)
PHOTOS = {"astronaut.jpg": "astronaut", "coffee.png": "coffee", "sub/rocket.webp": "rocket",
          "camera.bmp": "camera", "sub/hubble.tif": "hubble_deep_field"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("calib")
    (root / "sub").mkdir()
    for name, sample in PHOTOS.items():
        Image.fromarray(getattr(data, sample)()).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image suffix: never listed")
    return root


@pytest.fixture(scope="module")
def tiny_fp32(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy()


@pytest.fixture(scope="module")
def tiny_int8(tiny_fp32, photos, cache_env) -> Path:
    before = tiny_fp32.read_bytes()
    path = calibrate(tiny_fp32, images=photos, num_images=4, seed=0)
    assert tiny_fp32.read_bytes() == before  # the FP32 graph is never touched
    return path


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_qdq_graph(tiny_fp32, tiny_int8):
    """Per-channel INT8 weights and per-tensor activations on Conv/MatMul; the measured defaults stay FP32."""
    assert tiny_int8 == int8_path(tiny_fp32) == tiny_fp32.with_name("tiny.int8.onnx")
    ops = _ops(tiny_int8)
    # 140 activation Q/DQ pairs measured (ModelOpt leaves a pair out where a tensor's range is degenerate)
    assert 130 <= ops["QuantizeLinear"] <= 150
    model = onnx.load(str(tiny_int8))
    onnx.checker.check_model(model, full_check=True)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    per_channel = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul") and len(node.input) > 1:
            dq = producers.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in inits:
                per_channel += len(inits[dq.input[1]].dims) == 1  # one scale per output channel
    assert per_channel >= 90  # every quantized weight (94 measured): 83 MatMul + the Conv/ConvTranspose below S/8
    # weights are stored as INT8 initializers behind a lone DequantizeLinear (a quarter of the FP32 bytes)
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dqs) == per_channel
    assert {inits[n.input[0]].data_type for n in weight_dqs} == {onnx.TensorProto.INT8}
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] + per_channel
    assert tiny_int8.stat().st_size < 0.5 * tiny_fp32.stat().st_size  # measured 13.9 MB vs 32.8 MB
    # Add and Resize get no Q/DQ of their own (a DQ they read is shared with a quantized MatMul/Conv)
    for node in model.graph.node:
        if node.op_type in DEFAULT_EXCLUDE_OP_TYPES:
            for name in node.input:
                if (dq := producers.get(name)) is not None and dq.op_type == "DequantizeLinear":
                    readers = [n.op_type for n in model.graph.node if name in n.input]
                    assert set(readers) - set(DEFAULT_EXCLUDE_OP_TYPES), (node.name, readers)
    fp32 = onnx.load(str(tiny_fp32))
    kept = set(default_excluded_nodes(fp32, 512))
    assert len(kept) == 36  # the Conv/ConvTranspose with an output side >= 64
    assert not kept & set(quantized_nodes(model))
    # 121 since the export traces the position-code stand-in non-strict (same graph, another node order,
    # and ModelOpt's placement quantizes one more MatMul); 120 before
    assert len(quantized_nodes(model)) == 121


def test_metadata(tiny_fp32, tiny_int8, photos):
    meta = read_metadata(onnx.load(str(tiny_int8), load_external_data=False))
    source = read_metadata(onnx.load(str(tiny_fp32), load_external_data=False))
    assert set(METADATA_KEYS) <= set(meta)
    assert {k: meta[k] for k in METADATA_KEYS if k != "precision"} == {k: source[k] for k in METADATA_KEYS
                                                                        if k != "precision"}
    assert meta["precision"] == "int8"
    assert meta["calibration_method"] == "max"
    assert meta["calibration_images"] == "4"
    assert meta["calibration_source"] == str(photos)
    assert meta["int8_fp32_nodes"] == "36"
    assert meta["calibration_target"] == "tensorrt"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["calibration_images_sha256"])
    # the same seeded sample, prepared again (from the cache): the same list hash
    again = calib_data.prepare(photos, 4, 512, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed=0,
                               cache=calib_data.cache_dir())
    assert again.cached
    assert again.list_sha256 == meta["calibration_images_sha256"]


def test_scales_are_the_measured_ranges(tiny_fp32, tiny_int8, photos):
    """Activation scales = max |x| / 127 over the calibration images (default method max), checked
    against plain ONNX Runtime runs of the FP32 graph with those tensors as outputs."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from mgd_rt.calibration.quantize import quantized_activations

    model = onnx.load(str(tiny_int8))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = quantized_activations(model)
    scale_of = {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] in names}
    assert len(names) > 100
    picked = [names[0], names[len(names) // 2], names[-1]]
    fp32 = onnx.load(str(tiny_fp32))
    fp32.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in picked])
    session = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    images = calib_data.prepare(photos, 4, 512, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed=0,
                                cache=calib_data.cache_dir()).tensors
    absmax = np.zeros(len(picked))
    for image in images:
        values = session.run(picked, {INPUT_NAME: image[None]})
        absmax = np.maximum(absmax, [np.abs(v).max() for v in values])
    assert [scale_of[n] * 127 for n in picked] == pytest.approx(absmax.tolist(), rel=1e-5)


def test_accuracy_within_int8_tolerance(tiny_fp32, tiny_int8, tmp_path):
    """Held-out scikit-image photos (never calibration ones), ORT CPU, one image at a time."""
    report = accuracy_report(tiny_fp32, tiny_int8, num_images=4)
    assert report.images == [f"skimage:{n}" for n in HOLDOUT_PHOTOS[:4]]
    assert not set(report.images) & {f"skimage:{n}" for n in CALIBRATION_PHOTOS}
    worst = report.worst
    # measured: sigmoid MAE 1.4e-4 (70x inside TOLERANCES['int8']), max|d|/std 0.018, IoU@0.5 0.9956,
    # top-10% IoU 0.984 (worst of 4 held-out photos)
    assert worst["sigmoid_mae"] <= TOLERANCES["int8"].sigmoid_mae / 10
    assert worst["max_rel_std"] < 0.05
    assert worst["iou_05"] > 0.99
    assert worst["iou_top10"] >= TOLERANCES["int8"].iou_top10
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["metadata"]["precision"] == "int8"
    assert len(saved["comparisons"]) == 4
    assert saved["worst"]["sigmoid_mae"] == worst["sigmoid_mae"]


def test_cpu_target(tiny_fp32, photos, cache_env, tmp_path):
    """--target cpu: ONNX Runtime's QDQ placement quantizes Conv outputs too, so ORT's CPU optimizer
    fuses the quantized convolutions into QLinearConv (ModelOpt's TensorRT placement: 1 of 21)."""
    import onnxruntime as ort

    path = calibrate(tiny_fp32, images=photos, num_images=4, method="max", target="cpu",
                     output=tmp_path / "tiny.cpu.onnx")
    model = onnx.load(str(path))
    meta = read_metadata(model)
    assert (meta["precision"], meta["calibration_target"], meta["int8_fp32_nodes"]) == ("int8", "cpu", "36")
    readers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node.op_type)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    quantized_out = [n for n in convs if "QuantizeLinear" in readers[n.output[0]]]
    assert len(quantized_out) >= 20  # measured 24 (tensorrt target: 1)
    assert not {n.name for n in quantized_out} & set(default_excluded_nodes(onnx.load(str(tiny_fp32)), 512))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    # integer kernels: convolutions as QLinearConv, MatMuls with a weight as MatMulIntegerToFloat
    # (float output: no DequantizeLinear before the bias Add); attention MatMuls stay float
    assert fused["QLinearConv"] >= 20 and fused["MatMulIntegerToFloat"] >= 80  # measured 23 and 97
    assert fused["QLinearMatMul"] == fused["QLinearSoftmax"] == 0
    attention = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in
                 {t.name for t in model.graph.initializer} and not n.input[1].endswith("DequantizeLinear_Output")]
    assert attention  # the activation x activation MatMuls, read straight from float tensors
    worst = accuracy_report(tiny_fp32, path, num_images=4).worst
    # the tiny tensorrt test's bounds (measured here: MAE 1.4e-4, max|d|/std 0.026, IoU@0.5 0.9946,
    # top-10% IoU 0.984)
    assert worst["sigmoid_mae"] <= TOLERANCES["int8"].sigmoid_mae / 10
    assert worst["max_rel_std"] < 0.05
    assert worst["iou_05"] > 0.99
    assert worst["iou_top10"] >= TOLERANCES["int8"].iou_top10
    with pytest.raises(MgdRtError, match="--target"):
        calibrate(tiny_fp32, target="gpu", output=tmp_path / "x.onnx")


def test_prepare_skips_bad_files_and_caches(photos, tmp_path, caplog):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with caplog.at_level(logging.WARNING, logger="mgd_rt"):
        first = calib_data.prepare(photos, 5, 64, mean, std, seed=1, cache=tmp_path)
    assert first.tensors.shape == (5, 3, 64, 64) and first.tensors.dtype == np.float32
    assert "broken.jpg" not in first.names and not first.cached
    assert "broken.jpg" in caplog.text
    second = calib_data.prepare(photos, 5, 64, mean, std, seed=1, cache=tmp_path)
    assert second.cached and np.array_equal(first.tensors, second.tensors)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # the runtime's pre-processing, nothing else
    from mgd_rt.runtime.image_io import read_image
    from mgd_rt.runtime.processing import preprocess

    index = first.names.index("coffee.png")
    assert np.array_equal(first.tensors[index], preprocess(read_image(photos / "coffee.png"), 64))
    with pytest.raises(MgdRtError, match=r"5 usable images \(1 unreadable\) but 6 requested: .* -n 5"):
        calib_data.prepare(photos, 6, 64, mean, std, cache=None)


def test_bad_input(tiny_fp32, tiny_int8, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MgdRtError, match="no images"):
        calibrate(tiny_fp32, images=empty, output=tmp_path / "a.onnx")
    with pytest.raises(MgdRtError, match="already quantized"):
        calibrate(tiny_int8, output=tmp_path / "b.onnx")
    with pytest.raises(MgdRtError, match="matches no node"):
        calibrate(tiny_fp32, exclude=("no_such_layer",), output=tmp_path / "c.onnx")
    with pytest.raises(MgdRtError, match="--method"):
        calibrate(tiny_fp32, method="minmax", output=tmp_path / "d.onnx")
    with pytest.raises(MgdRtError, match="no such file"):
        calibrate(tmp_path / "missing.onnx")
    with pytest.raises(MgdRtError, match="overwrite"):
        calibrate(tiny_fp32, output=tiny_fp32)
    # an FP16 graph, made small: one FP16 initializer is enough to refuse it
    from onnx import TensorProto, helper, numpy_helper

    half = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float16), "w")
    graph = helper.make_graph([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])], [half])
    onnx.save(helper.make_model(graph), tmp_path / "m.fp16.onnx")
    with pytest.raises(MgdRtError, match="FP16 graph"):
        calibrate(tmp_path / "m.fp16.onnx", output=tmp_path / "e.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "m.fp16.onnx"]


def test_cli_flags_match_script_and_errors(tiny_fp32, tmp_path, capsys):
    """`mgd-rt calibrate` and calibration/calibrate.py share one parser builder; errors are one line."""
    import argparse
    import importlib.util

    from mgd_rt.cli import build_parser, main
    from mgd_rt.cli.calibrate import add_calibrate_arguments

    script = argparse.ArgumentParser()
    add_calibrate_arguments(script)
    sub = build_parser()._subparsers._group_actions[0].choices["calibrate"]
    assert sorted(a.dest for a in script._actions) == sorted(a.dest for a in sub._actions)
    args = sub.parse_args(["m.onnx"])
    assert (args.num_images, args.method, args.exclude, args.output, args.target) == (64, "max", [], None, "auto")
    assert main(["calibrate", str(tiny_fp32), "--exclude", "nope", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "--exclude 'nope' matches no node" in capsys.readouterr().err
    path = Path(__file__).resolve().parents[1] / "calibration" / "calibrate.py"
    spec = importlib.util.spec_from_file_location("calibrate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "missing.onnx")]) == 1


def test_auto_target_follows_the_opset():
    """calibrate's default placement: ModelOpt's (tensorrt) for the graph TensorRT builds (opset <= 20), ONNX
    Runtime's (cpu) for the CPU graph, whose opset ONNX Runtime cannot load ModelOpt's placement at."""
    from mgd_rt.calibration.quantize import resolve_target

    assert [resolve_target("auto", opset) for opset in (17, 20, 21, 23)] == ["tensorrt", "tensorrt", "cpu", "cpu"]
    assert resolve_target("tensorrt", 23) == "tensorrt" and resolve_target("cpu", 20) == "cpu"
    with pytest.raises(MgdRtError, match="--target gpu: use one of auto, tensorrt, cpu"):
        resolve_target("gpu", 20)


def test_sensitivity_sweep(tiny_fp32, tiny_int8):
    """Per-block sweep: one row per group of quantized nodes, FP32 restored -> closer to FP32."""
    held = calib_data.skimage_set(HOLDOUT_PHOTOS, 512, (0.485, 0.456, 0.406),
                                  (0.229, 0.224, 0.225), limit=1)
    report = sweep(tiny_fp32, tiny_int8, held.tensors, group_size=40)
    assert len(report.rows) == 4  # 121 quantized nodes in groups of 40
    assert sum(len(r.nodes) for r in report.rows) == 121
    assert report.baseline.sigmoid_mae > 0
    # restoring the first block (the image encoder's start) measurably helps
    assert min(r.comparison.sigmoid_mae for r in report.rows) < report.baseline.sigmoid_mae
    # restoring every node (activations and the FP32 weights; Add / Resize may share a quantized
    # compute node's DequantizeLinear) gives the FP32 graph back
    from mgd_rt.calibration.sensitivity import restore_fp32, run_graph
    from mgd_rt.numerics import compare_logits

    int8_model, fp32_model = onnx.load(str(tiny_int8)), onnx.load(str(tiny_fp32))
    restored = restore_fp32(int8_model, {n.name for n in int8_model.graph.node}, fp32_model)
    assert compare_logits(run_graph(fp32_model, held.tensors), run_graph(restored, held.tensors), "fp32").passed


def _rtx_build(path: Path) -> int:
    """Parse ``path`` with TensorRT-RTX's ONNX parser and build an SM 8.9 engine on the CPU (no GPU)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # strongly typed: Q/DQ in the graph decide INT8
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    assert ok and not errors, errors
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    _, c, h, w = network.get_input(0).shape
    profile.set_shape(INPUT_NAME, (1, c, h, w), (1, c, h, w), (2, c, h, w))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None
    return engine.nbytes


def test_tensorrt_rtx_parse_and_build(tiny_int8):
    assert _rtx_build(tiny_int8) > 0


@pytest.mark.slow
def test_bplus_1024(tmp_path):
    """Seeded B+ at S=1024, both placements: INT8 within TOLERANCES['int8'] on held-out photos, and
    TensorRT-RTX builds the tensorrt one. (Speed is measured by the report and the benchmarks.)"""
    from mgd_rt.export import export_onnx

    fp32 = export_onnx(None, variant="b+", image_size=1024, output=tmp_path / "bplus.onnx", verify_graph=False).path
    for target in ("tensorrt", "cpu"):
        int8 = calibrate(fp32, target=target, output=tmp_path / f"bplus.{target}.onnx")
        worst = accuracy_report(fp32, int8, num_images=6).worst
        # measured (README): MAE <= 3e-4, IoU@0.5 >= 0.9989, max|d|/std <= 0.016
        assert worst["sigmoid_mae"] <= TOLERANCES["int8"].sigmoid_mae / 10
        assert worst["iou_05"] > 0.995
        assert worst["max_rel_std"] < 0.05
        assert worst["iou_top10"] >= TOLERANCES["int8"].iou_top10
    assert _rtx_build(tmp_path / "bplus.tensorrt.onnx") > 0


def test_check_backend_names_a_graph_onnxruntime_cannot_load(tmp_path):
    """The held-out check's ONNX Runtime session: a graph it cannot load is one line naming it (no traceback)."""
    from mgd_rt.calibration.check_backend import CheckBackend

    broken = tmp_path / "broken.int8.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(MgdRtError, match=r"broken\.int8\.onnx: ONNX Runtime cannot load this graph \(.*(?i:protobuf)"):
        CheckBackend().open(broken)
    with pytest.raises(MgdRtError, match=r"^a recovery step's graph: ONNX Runtime cannot load this graph"):
        CheckBackend().open(b"not a protobuf")
