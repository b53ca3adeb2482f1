"""Runtime mechanics without the network: pre/post-processing, image I/O, tiling weights,
backend selection and the ONNX Runtime backend on a toy contract-conforming graph."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_openvino
from PIL import Image
from runtime_helpers import make_int8_toy_onnx, make_toy_onnx, toy_logits

from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import compare_logits
from mgd_rt.runtime import Segmenter, load_backend
from mgd_rt.runtime.backends import Backend, backend_for
from mgd_rt.runtime.image_io import read_image, save_image
from mgd_rt.runtime.processing import (
    postprocess,
    postprocess_binary,
    postprocess_uint8,
    preprocess,
    resize_logits,
    resize_logits_strips,
)
from mgd_rt.runtime.tiling import axis_weights, tiled_logits, window_starts, working_scale

RNG = np.random.default_rng(0)


def _photo(height: int = 90, width: int = 120) -> np.ndarray:
    """A smooth synthetic RGB photo (H, W, 3) uint8 with an object in the middle."""
    y, x = np.mgrid[0:height, 0:width]
    blob = ((y - height / 2) ** 2 / (height / 4) ** 2 + (x - width / 2) ** 2 / (width / 4) ** 2) < 1
    img = np.stack([x * 255 / width, y * 255 / height, blob * 200.0], axis=2)
    return img.astype(np.uint8)


# ---------------------------------------------------------------- pre- and post-processing
def test_preprocess_matches_torchvision_pipeline():
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("torchvision.transforms.functional")
    photo = _photo(77, 131)
    pil = Image.fromarray(photo)
    ref = tf.normalize(tf.to_tensor(tf.resize(pil, [64, 64])), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    ours = preprocess(photo, 64)
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-6)
    assert torch is not None


@pytest.mark.parametrize("size", [(50, 70), (300, 257), (1, 5), (32, 32)])
def test_postprocess_matches_torch_interpolate_then_sigmoid(size):
    torch = pytest.importorskip("torch")
    logits = (RNG.standard_normal((32, 32)) * 3).astype(np.float32)
    t = torch.from_numpy(logits)[None, None]
    ref_logits = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    # PyTorch computes the source coordinates in float32, we in float64: a rewrite-level difference
    assert compare_logits(ref_logits, resize_logits(logits, *size), "rewrite", "resize vs F.interpolate")
    np.testing.assert_allclose(postprocess(logits, *size), 1 / (1 + np.exp(-ref_logits)), atol=1e-5)
    # strips of 7 rows give the same numbers as one pass
    stitched = np.concatenate([s for _, s in resize_logits_strips(logits, *size, rows=7)])
    np.testing.assert_array_equal(stitched, resize_logits(logits, *size))


def test_matte_and_binary_agree_with_float_mask():
    logits = (RNG.standard_normal((16, 16)) * 4).astype(np.float32)
    mask = postprocess(logits, 40, 30)
    matte = postprocess_uint8(logits, 40, 30)
    assert matte.dtype == np.uint8 and np.abs(matte.astype(float) - mask * 255).max() <= 0.5 + 1e-4
    binary = postprocess_binary(logits, 40, 30, 0.3)
    np.testing.assert_array_equal(binary == 255, mask > 0.3)


# ---------------------------------------------------------------- image I/O
def test_read_image_modes(tmp_path):
    rgb = _photo()
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(rgb).save(tmp_path / "p.bmp")
    Image.fromarray(rgb).save(tmp_path / "p.tiff")
    Image.fromarray(rgb).save(tmp_path / "p.webp", lossless=True)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(rgb[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha ignored
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[:, :, 1], rgb[:, :, 0])  # 16-bit: top 8 bits
    for name in ("p.bmp", "p.tiff", "p.webp"):
        np.testing.assert_array_equal(read_image(tmp_path / name), rgb)


def test_read_image_honours_exif_orientation(tmp_path):
    rgb = _photo(40, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "r.jpg").shape == (60, 40, 3)


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(_photo()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "dir.png").mkdir()
    for name, words in [("zero.png", "empty"), ("text.jpg", "not an image"), ("trunc.jpg", "truncated"),
                        ("dir.png", "directory"), ("missing.png", "no such file")]:
        with pytest.raises(MgdRtError, match=words) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(MgdRtError, match="too large"):
        read_image(tmp_path / "full.jpg", max_pixels=100)


def test_write_atomic_leaves_only_the_file(tmp_path):
    save_image(Image.fromarray(_photo()), tmp_path / "a.png", "PNG")
    with pytest.raises(KeyError):
        save_image(Image.fromarray(_photo()), tmp_path / "b.png", "NOPE")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


# ---------------------------------------------------------------- tiling
@pytest.mark.parametrize("length", [512, 600, 1000, 2048, 3001])
def test_window_weights_sum_to_one_and_are_smooth(length):
    size = 512
    starts = window_starts(length, size)
    assert starts[0] == 0 and starts[-1] == length - size
    assert all(b - a <= size * 0.75 for a, b in zip(starts, starts[1:], strict=False))  # >= 25% overlap
    weights = axis_weights(length, starts, size)
    total = np.zeros(length)
    per_window = np.zeros((len(starts), length))
    for i, s in enumerate(starts):
        total[s : s + size] += weights[i]
        per_window[i, s : s + size] = weights[i]
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    # smooth: no jump between neighbouring pixels anywhere, window edges included
    assert np.abs(np.diff(per_window, axis=1)).max() < 0.02
    # 2-D weights are the outer product of the axis weights, so they sum to one too
    ys = window_starts(700, size)
    wy = axis_weights(700, ys, size)
    grid = np.zeros((700, length))
    for i, y in enumerate(ys):
        for j, x in enumerate(starts):
            grid[y : y + size, x : x + size] += np.outer(wy[i], weights[j])
    np.testing.assert_allclose(grid, 1.0, atol=1e-12)


def test_working_scale_native_capped_and_never_below_window():
    assert working_scale(3000, 4000, 1024) == 1.0
    assert working_scale(6000, 8000, 1024) == pytest.approx(4096 / 8000)
    assert working_scale(300, 400, 512) == pytest.approx(512 / 300)
    assert working_scale(3000, 4000, 1024, tile_scale=0.5) == 0.5


def test_tiling_on_exactly_s_is_the_plain_result():
    rgb = _photo(32, 32)
    x = preprocess(rgb, 32)[None]
    global_logits = toy_logits(x)[0, 0]
    tiled, stats = tiled_logits(rgb, global_logits, toy_logits, 32)
    assert stats.windows_total == stats.windows_run == 1
    np.testing.assert_array_equal(tiled, global_logits)


def test_tiling_skips_confident_windows_and_blends_the_rest():
    rgb = _photo(64, 100)
    calls = []

    def infer(batch):
        calls.append(len(batch))
        return toy_logits(batch)

    confident = np.full((32, 32), 9.0, np.float32)
    out, stats = tiled_logits(rgb, confident, infer, 32, batch_size=4)
    assert stats.windows_run == 0 and not calls and stats.windows_total == len(window_starts(100, 32)) * 3
    np.testing.assert_allclose(out, 9.0, rtol=1e-6)  # the global pass decides where it is sure
    unsure = np.zeros((32, 32), np.float32)
    out, stats = tiled_logits(rgb, unsure, infer, 32, batch_size=4)
    assert stats.windows_run == stats.windows_total == sum(calls) and max(calls) <= 4
    assert out.shape == (64, 100) and np.isfinite(out).all()


# ---------------------------------------------------------------- backends
def test_backend_table_picks_by_suffix():
    assert backend_for("m.onnx").name == "onnxruntime"
    assert backend_for("m.pth").name == "torch"
    assert backend_for("m.safetensors", "torch").name == "torch"
    with pytest.raises(MgdRtError, match="unknown model file type"):
        backend_for("m.txt")
    with pytest.raises(MgdRtError, match="runs on the onnxruntime backend"):
        backend_for("m.onnx", "torch")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_onnx(tmp_path_factory.mktemp("toy") / "toy.onnx")


def test_onnxruntime_backend_runs_the_graph(toy):
    with load_backend(toy) as backend:
        assert backend.image_size == 32 and backend.precision == "fp32"
        assert backend.device == "CPUExecutionProvider"
        x = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(backend.infer({"image": x}), toy_logits(x), atol=1e-5)
        with pytest.raises(MgdRtError, match=r"\(B, 3, 32, 32\)"):
            backend.infer(x[:, :, :16])
        with pytest.raises(MgdRtError, match="float32"):
            backend.infer(x.astype(np.float64))


def test_onnxruntime_backend_input_check_is_skippable(toy):
    backend = load_backend(toy, check_inputs=False)
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x), toy_logits(x), atol=1e-5)


def test_onnxruntime_refuses_what_it_cannot_do(toy, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MgdRtError, match="no CUDA or TensorRT execution provider"):
            load_backend(toy, device="cuda")
    with pytest.raises(MgdRtError, match="fp32 graph"):
        load_backend(toy, dtype="fp16")
    bad = make_toy_onnx(tmp_path / "names.onnx", input_name="pixels")
    with pytest.raises(MgdRtError, match="not an mgd-rt graph"):
        load_backend(bad)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(MgdRtError, match="cannot load"):
        load_backend(tmp_path / "junk.onnx")


def test_static_batch_one_graph_runs_any_batch(tmp_path):
    backend = load_backend(make_toy_onnx(tmp_path / "b1.onnx", batch=1))
    x = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x), toy_logits(x), atol=1e-5)


def test_a_fixed_batch_graph_refuses_another_batch(tmp_path):
    backend = load_backend(make_toy_onnx(tmp_path / "b2.onnx", batch=2))
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x), toy_logits(x), atol=1e-5)
    with pytest.raises(MgdRtError, match="this graph takes batches of exactly 2; pass --batch-size 2"):
        backend.infer(x[:1])


def test_ort_sessions_keep_each_callers_options(toy):
    from mgd_rt.runtime.backends.onnxruntime_backend import ort_session

    # the runtime: every core (ONNX Runtime's own default counts physical cores only), ORT's log level
    options = load_backend(toy).session.get_session_options()
    assert (options.intra_op_num_threads, options.log_severity_level) == (os.cpu_count(), -1)
    # verify / the INT8 report: ORT's thread default or the given count, errors only, CPU only
    session = ort_session(toy, log_severity=3)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.log_severity_level) == (0, 3)
    assert ort_session(toy, 1, log_severity=3).get_session_options().intra_op_num_threads == 1
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_ALL")


class _Recorder(Backend):
    """A backend that is only the base class: records the batches it is given, answers zeros."""

    name = "recorder"
    kind = "thing"

    def __init__(self, fixed_batch: int | None = None, max_batch: int | None = None) -> None:
        super().__init__()
        self.image_size, self.fixed_batch, self.max_batch = 8, fixed_batch, max_batch
        self.calls: list[int] = []

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        return np.zeros((batch.shape[0], 1, 8, 8), np.float32) + batch[:, :1].mean(axis=(2, 3), keepdims=True)


@pytest.mark.parametrize("fixed, largest, n, calls", [
    (None, None, 5, [5]), (None, 2, 5, [2, 2, 1]), (None, 4, 4, [4]), (1, None, 3, [1, 1, 1]), (3, None, 3, [3]),
])
def test_backend_splits_a_batch_into_what_the_artifact_takes(fixed, largest, n, calls):
    backend = _Recorder(fixed, largest)
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 8, 8), np.float32)
    out = backend.infer(x)
    assert backend.calls == calls
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(n))  # in order, nothing lost or repeated


def test_backend_shared_refusals():
    backend = _Recorder(fixed_batch=4)
    with pytest.raises(MgdRtError, match="this thing takes batches of exactly 4; pass --batch-size 4"):
        backend.infer(np.zeros((2, 3, 8, 8), np.float32))
    backend.check_io(["image", "extra"], ["mask_logits"], "m")  # extra tensors are fine unless only=True
    with pytest.raises(MgdRtError, match=r"m: not an mgd-rt thing: needs input 'image' and output 'mask_logits' "
                                         r"only, has inputs \['extra', 'image'\]"):
        backend.check_io(["image", "extra"], ["mask_logits"], "m", only=True)
    with pytest.raises(MgdRtError, match=r"'mask_logits' is FP16; the contract's I/O is float32"):
        backend.check_io_types("m", {"image": "FP32", "mask_logits": "FP16"}, "FP32", "UINT8")
    backend.apply_metadata({"input_format": "uint8"})
    backend.check_io_types("m", {"image": "UINT8", "mask_logits": "FP32"}, "FP32", "UINT8")
    with pytest.raises(MgdRtError, match=r"m: 'image' is FP32; the contract's I/O is uint8 pixels in, float32 out"):
        backend.check_io_types("m", {"image": "FP32", "mask_logits": "FP32"}, "FP32", "UINT8")
    with pytest.raises(MgdRtError, match=r"input_format 'rgb16' in the thing's metadata"):
        backend.apply_metadata({"input_format": "rgb16"})
    backend.apply_metadata({})
    backend.check_dtype(None, "m")
    backend.check_dtype("fp32", "m")
    with pytest.raises(MgdRtError, match="--dtype int8: m is a fp32 thing; make one, or leave --dtype out"):
        backend.check_dtype("int8", "m", "make one")
    with pytest.raises(MgdRtError, match=r"m.onnx: no such ONNX file"):
        Backend.model_file("m.onnx", "ONNX")


# ---------------------------------------------------------------- Segmenter on the toy graph
def test_segmenter_api(toy, tmp_path):
    seg = Segmenter(toy, batch_size=2)
    rgb = _photo()
    mask = seg(rgb)
    assert mask.shape == rgb.shape[:2] and mask.dtype == np.float32
    expected = postprocess(toy_logits(preprocess(rgb, 32)[None])[0, 0], *rgb.shape[:2])
    np.testing.assert_allclose(mask, expected, atol=1e-6)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    np.testing.assert_allclose(seg(tmp_path / "p.png"), mask, atol=1e-6)
    masks = seg.batch([rgb, str(tmp_path / "p.png"), rgb[:50]])
    assert [m.shape for m in masks] == [(90, 120), (90, 120), (50, 120)]
    (tmp_path / "bad.png").write_text("x")
    results = list(seg.stream([rgb, tmp_path / "bad.png", rgb, rgb]))
    assert [r.ok for r in results] == [True, False, True, True]
    assert "bad.png" in results[1].error
    with pytest.raises(MgdRtError, match="bad.png"):
        seg(tmp_path / "bad.png")
    with pytest.raises(MgdRtError, match="uint8"):
        seg(rgb.astype(np.float32))


def test_backend_selection_follows_the_table():
    from mgd_rt.runtime.backends import BACKENDS, backend_for

    picked = {f"m{suffix}": backend_for(f"m{suffix}").name for spec in BACKENDS.values() for suffix in spec.suffixes}
    picked |= {f"{s}://h:1/m": backend_for(f"{s}://h:1/m").name for spec in BACKENDS.values() for s in spec.schemes}
    assert picked == {"m.pth": "torch", "m.pt": "torch", "m.bin": "torch", "m.ckpt": "torch",
                      "m.safetensors": "torch", "m.onnx": "onnxruntime", "m.engine": "tensorrt", "m.pt2": "aoti",
                      "grpc://h:1/m": "triton", "http://h:1/m": "triton", "https://h:1/m": "triton"}
    assert backend_for("m.onnx", "tensorrt").name == "tensorrt"  # opened through the engine cache's converter
    assert backend_for("m.onnx", "openvino").name == "openvino"  # OpenVINO reads .onnx itself (its `opens`)
    with pytest.raises(MgdRtError, match="runs on the tensorrt backend, not onnxruntime"):
        backend_for("m.engine", "onnxruntime")
    with pytest.raises(MgdRtError, match="unknown URL scheme 'ftp'"):
        backend_for("ftp://h/m")


@pytest.mark.parametrize(("backend", "props", "warning"), [
    ("onnxruntime", {}, None),  # not checked by mgd-rt calibrate: nothing to say
    ("onnxruntime", {"int8_checked_on": "onnxruntime", "int8_check": "pass"}, None),
    ("onnxruntime", {"int8_checked_on": "openvino", "int8_check": "pass"},
     "checked on openvino, and onnxruntime runs it here: integer kernels differ between runtimes; check it where "
     "it runs (mgd-rt calibrate FP32_GRAPH --backend onnxruntime)"),
    ("onnxruntime", {"int8_checked_on": "onnxruntime", "int8_check": "fail"},
     "failed mgd-rt calibrate's held-out check (on onnxruntime)"),
    pytest.param("openvino", {"int8_checked_on": "onnxruntime", "int8_check": "pass"},
                 "and openvino runs it here: integer kernels differ between runtimes; check it where it runs "
                 "(mgd-rt calibrate FP32_GRAPH --backend openvino)", marks=needs_openvino),
    pytest.param("openvino", {"int8_checked_on": "openvino", "int8_check": "pass"}, None, marks=needs_openvino),
])
def test_int8_graph_checked_elsewhere_warns(tmp_path, caplog, backend, props, warning):
    """An INT8 graph says where mgd-rt calibrate checked it; a runtime running it elsewhere, or a graph that failed
    the check, logs one warning naming the file and the command that checks it where it runs."""
    graph = make_int8_toy_onnx(tmp_path / "toy.int8.onnx", metadata=props)
    with caplog.at_level(logging.WARNING, logger="mgd_rt"), load_backend(graph, backend) as loaded:
        assert loaded.precision == "int8"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(f"{graph}: this INT8 graph") and warning in warnings[0]
