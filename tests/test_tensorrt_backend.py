"""TensorRT runtime backend: sidecar refusals on the CPU; build, run and verify on a GPU.

CPU tests check that a mismatched sidecar (TensorRT version, GPU) is refused with a clear
message before any CUDA call. GPU tests skip with a reason naming what is missing (a CUDA GPU,
cuda-python, a TensorRT library); cuda-python's memory path needs only a GPU and cuda-python.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHECKPOINT

from mgd_rt.artifacts import SIDECAR_FORMAT, sidecar_path
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends import backend_for, load_backend
from mgd_rt.runtime.backends import tensorrt_backend as trt_backend
from mgd_rt.runtime.backends.tensorrt_backend import TensorRTBackend, check_gpu
from mgd_rt.runtime.tensorrt_library import GpuInfo, current_gpu, import_library


def _missing_for_gpu(need_trt: bool = True) -> str | None:
    """What is missing for GPU tests here, or None when all is present."""
    if importlib.util.find_spec("cuda") is None:
        return "no cuda-python (pip install -e '.[trt]')"
    try:
        current_gpu()
    except MgdRtError as exc:
        return f"no CUDA GPU: {exc}"
    if need_trt:
        try:
            import_library("auto")
        except MgdRtError:
            return "no tensorrt / tensorrt_rtx installed"
    return None


# what the GPU tests lack here (None: all present), found once at collection
GPU_MISSING = _missing_for_gpu()
CUDA_MISSING = _missing_for_gpu(need_trt=False)


def _rtx_version() -> str:
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed (pip install -e '.[rtx]')")
    import tensorrt_rtx

    return tensorrt_rtx.__version__


def fake_engine(tmp_path: Path, version: str, name: str = "tensorrt_rtx", **targets) -> Path:
    """An .engine whose bytes are junk, with a sidecar: only the sidecar may be read before the refusal."""
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"not an engine")
    sidecar = {
        "format": SIDECAR_FORMAT, "format_version": 1, "engine": {"file": engine.name, "bytes": 13},
        "library": {"name": name, "version": version}, "precision": "fp16", "strongly_typed": True,
        "profile": {"input": "image", "min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]},
        "inputs": [], "outputs": [], "image_size": 64,
        "source": {"onnx": "/models/m.onnx", "sha256": "0" * 64, "precision": "fp32", "derived": None,
                   "metadata": {}},
        "build": {"flags": {"version_compatible": False, "hardware_compatibility": "none"}},
        "targets": targets or {"compute_capabilities": ["sm89"]},
    }
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


def test_refuses_other_tensorrt_version_before_cuda(tmp_path, monkeypatch):
    installed = _rtx_version()

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA was touched before the sidecar check")

    monkeypatch.setattr(trt_backend, "current_gpu", no_cuda)
    monkeypatch.setattr(trt_backend, "cuda_runtime", no_cuda)
    engine = fake_engine(tmp_path, "0.9.0.1")
    with pytest.raises(MgdRtError, match=f"built with tensorrt_rtx 0.9.0.1 but {installed} is installed") as info:
        TensorRTBackend(engine)
    assert "mgd-rt build /models/m.onnx --rtx" in str(info.value) and "\n" not in str(info.value)


def test_refuses_missing_library_and_sidecar(tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        engine = fake_engine(tmp_path, "10.9.0.34", name="tensorrt",
                             gpu={"name": "NVIDIA H100", "compute_capability": "9.0"})
        with pytest.raises(MgdRtError, match=r"built with tensorrt 10.9.0.34, which is not installed: pip install "
                                             r"tensorrt==10.9.0"):
            TensorRTBackend(engine)
    sidecar_path(fake_engine(tmp_path, "1.0")).unlink()
    with pytest.raises(MgdRtError, match="sidecar m.fp16.engine.json is missing"):
        TensorRTBackend(tmp_path / "m.fp16.engine")


def test_refuses_another_gpu():
    engine = Path("m.engine")
    rtx = {"targets": {"compute_capabilities": ["sm86", "sm89"]}, "build": {"flags": {}}}
    check_gpu(rtx, GpuInfo("NVIDIA GeForce RTX 4090", "8.9"), engine)
    with pytest.raises(MgdRtError, match="built for sm86, sm89; NVIDIA H100 is sm90: rebuild with --target sm90"):
        check_gpu(rtx, GpuInfo("NVIDIA H100", "9.0"), engine)
    built = {"targets": {"gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}}, "build": {"flags": {}}}
    with pytest.raises(MgdRtError, match=r"built for NVIDIA A100 \(SM 8.0\); this GPU is NVIDIA H100 \(SM 9.0\)"):
        check_gpu(built, GpuInfo("NVIDIA H100", "9.0"), engine)
    ampere = {**built, "build": {"flags": {"hardware_compatibility": "ampere+"}}}
    check_gpu(ampere, GpuInfo("NVIDIA H100", "9.0"), engine)
    with pytest.raises(MgdRtError, match="Ampere and later"):
        check_gpu(ampere, GpuInfo("Tesla T4", "7.5"), engine)


@pytest.mark.skipif(CUDA_MISSING is None, reason="a CUDA GPU is present: this checks the refusal without one")
def test_no_gpu_is_named(tmp_path):
    installed = _rtx_version()
    with pytest.raises(MgdRtError, match="no CUDA GPU usable here|cuda-python is not installed"):
        TensorRTBackend(fake_engine(tmp_path, installed))


def test_backend_table():
    assert backend_for("m.fp16.engine").name == "tensorrt"
    assert backend_for("m.onnx", "tensorrt").name == "tensorrt"
    assert backend_for("m.onnx").name == "onnxruntime"
    with pytest.raises(MgdRtError, match="tensorrt runs on cuda"):
        load_backend("m.engine", device="cpu")


# GPU -----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(CUDA_MISSING is not None, reason=str(CUDA_MISSING))
def test_cuda_python_memory_roundtrip():
    """The backend's memory path (pinned host, device, async copies on a stream) with cuda-python alone."""
    import ctypes

    from mgd_rt.runtime.tensorrt_library import check_cuda, cuda_runtime

    cudart = cuda_runtime()
    n = 3 * 64 * 64
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    stream = check_cuda(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "stream")
    host = int(check_cuda(cudart.cudaMallocHost(n * 4), "cudaMallocHost"))
    dev = int(check_cuda(cudart.cudaMalloc(n * 4), "cudaMalloc"))
    try:
        view = np.ctypeslib.as_array((ctypes.c_float * n).from_address(host))
        view[:] = x
        kind = cudart.cudaMemcpyKind
        check_cuda(cudart.cudaMemcpyAsync(dev, host, n * 4, kind.cudaMemcpyHostToDevice, stream), "H2D")
        view[:] = 0
        check_cuda(cudart.cudaMemcpyAsync(host, dev, n * 4, kind.cudaMemcpyDeviceToHost, stream), "D2H")
        check_cuda(cudart.cudaStreamSynchronize(stream), "sync")
        np.testing.assert_array_equal(view, x)
    finally:
        cudart.cudaFree(dev)
        cudart.cudaFreeHost(host)
        cudart.cudaStreamDestroy(stream)


@pytest.fixture(scope="module")
def gpu_tiny(tiny_onnx_copy):
    """The tiny graph and its PyTorch model (its tests skip where a GPU or TensorRT is missing)."""
    import mgd_rt

    return tiny_onnx_copy(), mgd_rt.load_model(TINY_CHECKPOINT)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=str(GPU_MISSING))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_runs_and_matches_pytorch(gpu_tiny, precision, tmp_path):
    import torch

    from mgd_rt.engine import build_engine
    from mgd_rt.export import verify
    from mgd_rt.numerics import compare_logits

    onnx_path, model = gpu_tiny
    options = {}
    if precision == "int8":
        from PIL import Image
        from skimage import data

        (tmp_path / "calib").mkdir()
        for name in ("astronaut", "coffee"):
            Image.fromarray(getattr(data, name)()).save(tmp_path / "calib" / f"{name}.png")
        options["calib_images"] = tmp_path / "calib"
    result = build_engine(onnx_path, precision, output=tmp_path / f"tiny.{precision}.engine", batch="1:2:4", **options)
    print("\n".join(result.lines()))
    x = np.random.default_rng(0).standard_normal((2, 3, 512, 512)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    with TensorRTBackend(result.path) as backend:
        out = backend.infer(x)
        assert compare_logits(reference, out, tolerance=precision)
        cuda_in = torch.from_numpy(x).cuda()
        cuda_out = backend.infer(cuda_in)  # bound directly, returned on the GPU
        assert cuda_out.is_cuda and cuda_out.shape == (2, 1, 512, 512)
        torch.cuda.synchronize()
        np.testing.assert_allclose(cuda_out.cpu().numpy(), out, atol=1e-5)
        assert backend.infer(x[:1]).shape == (1, 1, 512, 512)
    with TensorRTBackend(result.path, cuda_graph=True) as backend:  # fixed batch 2, replayed
        np.testing.assert_allclose(backend.infer(x), out, atol=1e-5)
        np.testing.assert_allclose(backend.infer(x), out, atol=1e-5)
    report = verify(result.path, TINY_CHECKPOINT, model=model)
    assert report, "\n".join(report.lines())


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=str(GPU_MISSING))
def test_segmenter_builds_through_engine_cache(gpu_tiny, tmp_path, monkeypatch):
    from mgd_rt import Segmenter

    onnx_path, _ = gpu_tiny
    monkeypatch.setenv("MGD_RT_ENGINE_CACHE", str(tmp_path / "cache"))
    image = (np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8)
    first = Segmenter(onnx_path, backend="tensorrt")
    mask = first(image)
    first.close()
    engines = list((tmp_path / "cache").glob("*.engine"))
    assert len(engines) == 1 and mask.shape == (300, 400)
    stamp = engines[0].stat().st_mtime_ns
    second = Segmenter(onnx_path, backend="tensorrt")
    np.testing.assert_allclose(second(image), mask, atol=1e-5)
    second.close()
    assert engines[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_padding_keeps_every_chunk_in_the_profile():
    from mgd_rt.runtime.backends.tensorrt_backend import padding_to_profile

    # (n, min, max) -> zeros appended; chunks of max, the last one at least min
    cases = {(5, 2, 4): 1, (4, 2, 4): 0, (1, 2, 4): 1, (9, 1, 4): 0, (6, 3, 4): 1, (3, 3, 3): 0, (7, 4, 4): 1}
    assert {k: padding_to_profile(*k) for k in cases} == cases
