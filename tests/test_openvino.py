"""The OpenVINO backend: --backend openvino on .onnx graphs (FP32, bf16, INT8 Q/DQ, FP16) against ONNX Runtime,
its refusals, the CLI and OpenVINO's model cache.

The tiny model at S=512 (exported once per session, ~1 min on 2 cores; INT8 calibrated once here,
~30 s); the contract toy graph (S=32) where only the mechanics matter.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import needs_openvino, needs_openvino_bf16, openvino_cpu
from PIL import Image
from runtime_helpers import make_pixel_toy_onnx, make_toy_onnx, toy_logits

from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import compare_logits  # with a TOLERANCES key
from mgd_rt.runtime.backends import backend_for, load_backend


@pytest.fixture(autouse=True)
def ov_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test compiles into a cache of its session's own, never the user's ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "openvino-cache"
    monkeypatch.setenv("MGD_RT_OPENVINO_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def tiny_fp32(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy()


@pytest.fixture(scope="module")
def image(tiny_io) -> np.ndarray:
    return tiny_io["image"]  # (2, 3, 512, 512) float32, normalised


@pytest.fixture(scope="module")
def ort_fp32(tiny_fp32, image) -> np.ndarray:
    """ONNX Runtime's FP32 logits (2, 1, 512, 512) of the tiny graph: the reference here."""
    with load_backend(tiny_fp32) as backend:
        return backend.infer(image)


# ---------------------------------------------------------------- the table (no OpenVINO needed)
def test_onnx_runs_on_openvino_only_when_named():
    assert backend_for("m.onnx").name == "onnxruntime"
    assert backend_for("m.onnx", "openvino").name == "openvino"
    with pytest.raises(MgdRtError, match="a .pth file runs on the torch backend, not openvino"):
        backend_for("m.pth", "openvino")
    with pytest.raises(MgdRtError, match="a .engine file runs on the tensorrt backend, not openvino"):
        backend_for("m.engine", "openvino")
    with pytest.raises(MgdRtError, match=r"--device cuda: openvino runs on cpu"):
        load_backend("m.onnx", "openvino", device="cuda")
    with pytest.raises(MgdRtError, match="unknown model file type '.txt'; give a checkpoint"):
        backend_for("m.txt")  # the list of what to give names files picked by suffix only


def test_missing_openvino_is_one_clear_error(toy_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(MgdRtError, match=r"needs OpenVINO: pip install 'mgd-rt\[openvino\]'"):
        load_backend(toy_onnx, "openvino")


# ---------------------------------------------------------------- mechanics on the toy graph
@needs_openvino
def test_toy_graph_any_batch(toy_onnx):
    rng = np.random.default_rng(0)
    with load_backend(toy_onnx, "openvino", device="cpu") as backend:
        assert (backend.name, backend.image_size, backend.variant, backend.trained) == ("openvino", 32, "toy", False)
        assert backend.fixed_batch is None
        for b in (1, 3):
            x = rng.standard_normal((b, 3, 32, 32), dtype=np.float32)
            np.testing.assert_allclose(backend.infer(x), toy_logits(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(MgdRtError, match=r"must be \(B, 3, 32, 32\)"):
            backend.infer(np.zeros((1, 3, 16, 16), np.float32))


@needs_openvino
def test_pixel_input_graph(tmp_path):
    """A graph exported with a uint8 pixel input gets the bytes as they are, (B, S, S, 3)."""
    from mgd_rt.runtime.processing import normalise_batch

    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = toy_logits(pixels.transpose(0, 3, 1, 2).astype(np.float32))
    with load_backend(make_pixel_toy_onnx(tmp_path / "pix.onnx"), "openvino") as backend:
        assert backend.takes_pixels and backend.image_size == 32
        np.testing.assert_allclose(backend.infer_pixels(pixels), expected, rtol=1e-5)
        # normalised input is turned back into the pixels it came from
        np.testing.assert_allclose(backend.infer(normalise_batch(pixels)), expected, rtol=1e-5)


@needs_openvino
def test_refusals_by_text(tmp_path):
    int8 = make_toy_onnx(tmp_path / "toy.int8.onnx", precision="int8")
    fp16 = make_toy_onnx(tmp_path / "toy.fp16.onnx", precision="fp16")
    with pytest.raises(MgdRtError, match=r"--dtype fp32: toy\.int8\.onnx is a int8 graph; pass the FP32 graph "
                                         r"for --dtype fp32, or leave --dtype out"):
        load_backend(int8, "openvino", dtype="fp32")
    with pytest.raises(MgdRtError, match=r"--dtype fp32: toy\.fp16\.onnx is a fp16 graph; pass the FP32 graph "
                                         r"for --dtype fp32, or leave --dtype out"):
        load_backend(fp16, "openvino", dtype="fp32")
    with pytest.raises(MgdRtError, match=r"--dtype int8: toy\.onnx is a fp32 graph; make an INT8 graph with "
                                         r"mgd-rt calibrate and pass that file"):
        load_backend(make_toy_onnx(tmp_path / "toy.onnx"), "openvino", dtype="int8")
    with pytest.raises(MgdRtError, match="runs on the CPU"):
        from mgd_rt.runtime.backends.openvino_backend import OpenVINOBackend

        OpenVINOBackend(int8, device="cuda:0")
    with pytest.raises(MgdRtError, match=r"nope\.onnx: no such ONNX file"):
        load_backend(tmp_path / "nope.onnx", "openvino")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(MgdRtError, match=r"junk\.onnx: OpenVINO cannot read this graph"):
        load_backend(tmp_path / "junk.onnx", "openvino")
    wrong = make_toy_onnx(tmp_path / "wrong.onnx", input_name="pixels")
    with pytest.raises(MgdRtError, match="not an mgd-rt graph: needs input 'image'"):
        load_backend(wrong, "openvino")


@needs_openvino
def test_bf16_refused_where_the_cpu_lacks_it(toy_onnx, monkeypatch):
    from mgd_rt.runtime.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core: ("Old CPU", ["FP32", "INT8"]))
    with pytest.raises(MgdRtError, match=r"--dtype bf16: this CPU \(Old CPU\) has no bfloat16 arithmetic for "
                                         r"OpenVINO \(it needs AVX-512 BF16 or AMX"):
        load_backend(toy_onnx, "openvino", dtype="bf16")
    with load_backend(toy_onnx, "openvino") as backend:  # fp32 still runs there
        assert backend.precision == "fp32"


def test_bf16_refused_for_a_graph_that_does_not_name_its_drm(toy_onnx, tmp_path, monkeypatch):
    """bf16 keeps the DRM in fp32 by cutting the graph where its drm_inputs prop says: without the prop (a graph
    exported before it, or not by mgd-rt) there is no such cut, and a whole-graph bf16 run is refused."""
    from mgd_rt.runtime.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core: ("New CPU", ["FP32", "BF16", "INT8"]))
    with pytest.raises(MgdRtError, match=r"--dtype bf16: toy\.onnx does not name the DRM's inputs \(the drm_inputs "
                                         r"metadata prop mgd-rt export writes\)"):
        load_backend(toy_onnx, "openvino", dtype="bf16")
    wrong = make_toy_onnx(tmp_path / "wrong_cut.onnx", drm_cut=True)
    model = onnx.load(str(wrong))
    next(p for p in model.metadata_props if p.key == "drm_inputs").value = "no_such_tensor"
    onnx.save(model, str(wrong))
    with pytest.raises(MgdRtError, match=r"wrong_cut\.onnx: its drm_inputs prop names 'no_such_tensor', which is no "
                                         r"tensor of the graph"):
        load_backend(wrong, "openvino", dtype="bf16")


@needs_openvino
def test_model_cache(toy_onnx, tmp_path, ov_cache):
    """The first load compiles and writes the cache; a second load of the same graph is served from it."""
    from mgd_rt.runtime.backends.openvino_backend import OpenVINOBackend, cache_dir

    assert cache_dir() == ov_cache  # $MGD_RT_OPENVINO_CACHE
    cache = tmp_path / "cache"
    graph = shutil.copyfile(toy_onnx, tmp_path / "toy.onnx")
    first = OpenVINOBackend(graph, cache=cache)
    blobs = sorted(p.name for p in cache.iterdir() if p.is_file())
    assert not first.from_cache and len(blobs) == 1 and blobs[0].endswith(".blob")
    assert (cache / blobs[0]).stat().st_size > 0
    second = OpenVINOBackend(graph, cache=cache)
    assert second.from_cache and "from the model cache" in second.describe()
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == blobs  # nothing compiled again
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(first.infer(x), second.infer(x))
    if "BF16" in openvino_cpu()[1]:
        # bf16 compiles its two graphs (head in bf16, the DRM's in f32) once, into two more cache entries
        cut = make_toy_onnx(tmp_path / "toy_cut.onnx", drm_cut=True)
        bf16 = OpenVINOBackend(cut, dtype="bf16", cache=cache)
        with_cut = sorted(p.name for p in cache.iterdir() if p.is_file())
        assert not bf16.from_cache and len(with_cut) == 3 and set(blobs) < set(with_cut)
        again = OpenVINOBackend(cut, dtype="bf16", cache=cache)
        assert again.from_cache and sorted(p.name for p in cache.iterdir() if p.is_file()) == with_cut
        for backend in (bf16, again):
            assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
            assert backend.drm_compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
            assert backend.drm_inputs == ["toy_features"] and not backend.drm_reads_image
        out, ref = bf16.infer(x), toy_logits(x)
        assert 1e-4 < np.abs(out - ref).max() < 0.05 * np.abs(ref).max()  # the Conv ran in bf16
        np.testing.assert_array_equal(out, again.infer(x))


# ---------------------------------------------------------------- the tiny model
@needs_openvino
def test_fp32_matches_onnxruntime(tiny_fp32, image, ort_fp32):
    """fp32 is asked for explicitly: OpenVINO's own default on a bf16-capable CPU would be bf16."""
    with load_backend(tiny_fp32, "openvino") as backend:
        assert backend.precision == "fp32" and backend.compute == "f32"
        assert backend.describe().startswith(f"openvino on CPU ({openvino_cpu()[0]}), fp32;")
        assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        out = backend.infer(image)
    assert out.shape == (2, 1, 512, 512) and out.dtype == np.float32
    result = compare_logits(ort_fp32, out, "fp32")
    assert result, result.row()  # measured max|d|/std 1.1e-5


@needs_openvino_bf16
def test_bf16(tiny_fp32, image, ort_fp32):
    """bf16 on the encoder and decoder, the DRM in f32 (its own compiled model, reading the image and the
    decoder's features): within the bf16 tolerance, and much closer to fp32 than the whole graph in bf16."""
    import openvino as ov

    with load_backend(tiny_fp32, "openvino", dtype="bf16") as backend:
        assert backend.precision == "bf16" and ", bf16 (the DRM in fp32);" in backend.describe()
        assert len(backend.drm_inputs) == 1 and backend.drm_reads_image
        drm_convolutions = [op.get_rt_info()["runtimePrecision"].astype(str)
                            for op in backend.drm_compiled.get_runtime_model().get_ops()
                            if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
        assert len(drm_convolutions) >= 12 and set(drm_convolutions) == {"f32"}  # the DRM's 12, fused or not
        out = backend.infer(image)
    result = compare_logits(ort_fp32, out, "bf16")
    assert result, result.row()
    assert result.max_rel_std > 1e-3  # bf16 really ran: fp32 differs by 1e-5
    # the whole graph compiled in bf16 (what OpenVINO's own bf16 does) measured max|d|/std 0.11 here, this 0.0068
    whole = ov.Core().compile_model(str(tiny_fp32), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    whole_out = whole({"image": image})[whole.output("mask_logits")]
    assert result.max_rel_std < 0.25 * compare_logits(ort_fp32, whole_out).max_rel_std, result.row()


@pytest.fixture(scope="module")
def tiny_int8(tiny_fp32, tmp_path_factory) -> Path:
    """The tiny graph calibrated by mgd_rt.calibration on scikit-image's photos (4 of them)."""
    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[int8]')")
    from mgd_rt.calibration import calibrate

    mp = pytest.MonkeyPatch()
    mp.setenv("MGD_RT_CACHE", str(tmp_path_factory.mktemp("calibration-cache")))
    try:
        return calibrate(tiny_fp32, num_images=4, seed=0, output=tiny_fp32.with_name("tiny.int8.onnx"))
    finally:
        mp.undo()


@needs_openvino
def test_int8_graph(tiny_int8, image, ort_fp32):
    with load_backend(tiny_int8, "openvino", dtype="int8") as backend:
        assert backend.precision == "int8" and backend.compute == "f32"
        assert "int8 (float layers in f32);" in backend.describe() and backend.drm_compiled is None
        out = backend.infer(image)
    result = compare_logits(ort_fp32, out, "int8")
    assert result, result.row()  # measured (12 photos): sigmoid MAE 2.5e-4, IoU top10% 0.988
    assert result.max_rel_std > 1e-3  # the Q/DQ pairs were not dropped: FP32 would differ by 1e-5


@needs_openvino_bf16
def test_int8_graph_bf16(tiny_int8, image, ort_fp32):
    """--dtype bf16 on an INT8 graph: its float layers in bf16, cut at the DRM like an FP32 graph's, the
    DRM (which calibration leaves in float) in f32; the quantized layers stay int8."""
    with load_backend(tiny_int8, "openvino", dtype="int8") as f32_floats:
        int8_f32 = f32_floats.infer(image)
    with load_backend(tiny_int8, "openvino", dtype="bf16") as backend:
        assert backend.precision == "int8" and backend.compute == "bf16" and backend.drm_reads_image
        assert "int8 (float layers in bf16, the DRM in fp32);" in backend.describe()
        assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
        runtime = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                   for op in backend.compiled.get_runtime_model().get_ops()]
        assert {p for t, p in runtime if t in ("Convolution", "FullyConnected")} >= {"i8", "bf16"}, runtime
        drm = {op.get_rt_info()["runtimePrecision"].astype(str) for op in backend.drm_compiled.get_runtime_model()
               .get_ops() if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
        assert drm == {"f32"}
        out = backend.infer(image)
    result = compare_logits(ort_fp32, out, "int8")
    assert result, result.row()
    assert np.abs(out - int8_f32).max() > 1e-3  # bf16 really ran on the float layers


@needs_openvino
def test_fp16_graph(tiny_fp32, image, ort_fp32):
    """An FP16 graph (fp16 weights) runs in its own precision, computed in f32 on CPUs without fp16 arithmetic."""
    import onnx

    from mgd_rt.export.fp16 import to_fp16
    from mgd_rt.export.graph import read_metadata, set_metadata

    proto = to_fp16(onnx.load(str(tiny_fp32)))
    set_metadata(proto, {**read_metadata(proto), "precision": "fp16"})
    path = tiny_fp32.with_name("tiny.fp16.onnx")
    onnx.save(proto, str(path))
    with load_backend(path, "openvino", dtype="fp16") as backend:
        assert backend.precision == "fp16" and "fp16 (fp16 weights, computed in f32)" in backend.describe()
        out = backend.infer(image)
    result = compare_logits(ort_fp32, out, "fp16")
    assert result, result.row()  # measured sigmoid MAE 1.4e-5, IoU top10% 0.999
    assert result.max_rel_std > 1e-5 * 10  # the weights are fp16: not the FP32 result


@needs_openvino
def test_infer_cli_writes_the_onnxruntime_matte(tiny_fp32, tmp_path, capsys):
    from mgd_rt.cli import main

    rng = np.random.default_rng(3)
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    # a smooth blob on noise, at another size than S (resized in and back out)
    yy, xx = np.mgrid[:300, :400]
    blob = ((yy - 150) ** 2 + (xx - 220) ** 2 < 90 ** 2)[..., None] * np.array([200, 60, 40])
    Image.fromarray(np.clip(blob + rng.integers(0, 60, (300, 400, 3)), 0, 255).astype(np.uint8)).save(photo)
    mattes = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        assert main(["infer", str(tiny_fp32), str(photo), "-o", str(out), "--backend", backend]) == 0
        mattes[backend] = np.asarray(Image.open(out / "p.png"), dtype=np.int16)
    assert "openvino on CPU (" in capsys.readouterr().err
    assert mattes["openvino"].shape == (300, 400)
    # FP32 on both: at most one 8-bit step apart (rounding at a boundary), and almost never that
    diff = np.abs(mattes["openvino"] - mattes["onnxruntime"])
    assert diff.max() <= 1 and diff.mean() < 0.01


@needs_openvino
def test_bench_runs_a_graph_on_openvino_per_dtype(tiny_fp32, tmp_path, capsys):
    """`mgd-rt bench model.onnx --backend openvino --dtype fp32,bf16`: one result per precision, as loaded."""
    import json

    from mgd_rt.bench import bench
    from mgd_rt.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", str(tiny_fp32), "--backend", "openvino", "--dtype", "fp32,bf16", "--warmup", "0",
               "--iters", "1", "--device", "cpu", "-o", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["precision"]) for r in results] == [("openvino", "fp32"), ("openvino", "bf16")]
    assert results[0]["status"] == "ok" and results[0]["device"].startswith("CPU (")
    if "BF16" in openvino_cpu()[1]:
        assert rc == 0 and results[1]["status"] == "ok"
    else:  # recorded as not loadable, with the reason
        assert rc == 1 and "no bfloat16 arithmetic" in results[1]["error"]
    assert json.loads(out.read_text())["settings"]["backend"] == "openvino"
    with pytest.raises(MgdRtError, match="a variant name runs on PyTorch, not --backend openvino"):
        bench(["tiny"], backend="openvino")
    with pytest.raises(MgdRtError, match="--dtype bf16: onnxruntime runs fp32, fp16, int8"):
        bench([tiny_fp32], backend="onnxruntime", dtypes=["bf16"])
