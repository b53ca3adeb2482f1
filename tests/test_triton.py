"""Triton: the model repository writer, the client backend, and mgd-rt serve (PyTriton) end to end.

The serve test runs the server under Python 3.12 (PyTriton's Python backend fails under 3.11;
see mgd_rt.serve.pytriton_server for 3.13) in a light environment (no torch) that this module
creates once and caches in ~/.cache/mgd-rt/; the test process (any Python) is the client.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import stop_group as _stop
from runtime_helpers import make_int8_toy_onnx, make_pixel_toy_onnx, make_toy_onnx

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.serve.triton_repo import write_triton_repo

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 256  # tiny variant at S=256: a quarter of its pixels, the serve test stays quick on 2 cores

EXPECTED_ONNX_CONFIG = """\
name: "toy"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 3, 32, 32 ]
  }
]
output [
  {
    name: "mask_logits"
    data_type: TYPE_FP32
    dims: [ 1, 32, 32 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 2000
}
instance_group [
  {
    count: 2
    kind: KIND_AUTO
  }
]
parameters { key: "mgd_rt.image_size" value: { string_value: "32" } }
parameters { key: "mgd_rt.variant" value: { string_value: "toy" } }
parameters { key: "mgd_rt.precision" value: { string_value: "fp32" } }
parameters { key: "mgd_rt.mean" value: { string_value: "0.485,0.456,0.406" } }
parameters { key: "mgd_rt.std" value: { string_value: "0.229,0.224,0.225" } }
"""


def _parse_config(text: str):
    """Parse config.pbtxt with Triton's own ModelConfig protobuf (as tritonserver does)."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


# --- mgd-rt triton-repo -----------------------------------------------------------------------

def test_triton_repo_onnx_exact(tmp_path: Path) -> None:
    graph = make_toy_onnx(tmp_path / "toy.onnx", size=32)
    repo = tmp_path / "repo"
    (model_dir,) = write_triton_repo([graph], repo, max_batch=4, instances=2)
    assert model_dir == repo / "toy"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "toy", "toy/1", "toy/1/model.onnx", "toy/config.pbtxt", "toy/mgd_rt.json"]
    text = (model_dir / "config.pbtxt").read_text()
    assert text == EXPECTED_ONNX_CONFIG
    config = _parse_config(text)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [3, 32, 32] and config.parameters["mgd_rt.image_size"].string_value == "32"
    assert (model_dir / "1" / "model.onnx").read_bytes() == graph.read_bytes()
    info = json.loads((model_dir / "mgd_rt.json").read_text())
    assert info["platform"] == "onnxruntime_onnx" and info["metadata"]["variant"] == "toy"
    assert info["source"] == str(graph.resolve())
    # rewriting needs --overwrite; the old directory is replaced whole
    with pytest.raises(MgdRtError, match="exists"):
        write_triton_repo([graph], repo)
    write_triton_repo([graph], repo, overwrite=True)
    assert "max_batch_size: 8" in (model_dir / "config.pbtxt").read_text()  # the graph default
    assert sorted(p.name for p in repo.iterdir()) == ["toy"]  # no temporary directory left


def test_triton_repo_pixel_input(tmp_path: Path) -> None:
    """A graph exported with --uint8-input is served as uint8 (S, S, 3), and says so in its parameters."""
    graph = make_pixel_toy_onnx(tmp_path / "pix.onnx", size=32)
    (model_dir,) = write_triton_repo([graph], tmp_path / "repo", max_batch=4)
    config = _parse_config((model_dir / "config.pbtxt").read_text())
    assert config.input[0].data_type == 2  # TYPE_UINT8
    assert list(config.input[0].dims) == [32, 32, 3] and list(config.output[0].dims) == [1, 32, 32]
    assert config.parameters["mgd_rt.input_format"].string_value == "uint8"
    float_graph = make_toy_onnx(tmp_path / "toy.onnx", size=32)
    (float_dir,) = write_triton_repo([float_graph], tmp_path / "repo2", max_batch=4)
    assert "mgd_rt.input_format" not in (float_dir / "config.pbtxt").read_text()  # float32: the default


AVX2 = ["avx", "avx2", "fma"]
AMX = ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]


@pytest.mark.parametrize(("flags", "int8_weights", "instance_kind", "expected"), [
    (AVX2, "auto", None, "u8"),  # instances of kind auto may run on this CPU without VNNI
    (AVX2, "auto", "cpu", "u8"),
    (AVX2, "auto", "gpu", "s8"),  # ONNX Runtime's CUDA provider: no MLAS integer kernels
    (AMX, "auto", None, "s8"),  # U8 x S8 sums in 32 bits: S8 weights are exact and faster
    (AMX, "u8", None, "u8"),
    (AVX2, "s8", "cpu", "s8"),
])
def test_triton_repo_int8_weights(tmp_path: Path, monkeypatch, flags, int8_weights, instance_kind,
                                  expected) -> None:
    """Triton's onnxruntime backend cannot set session.x64quantprecision: for CPUs without VNNI the INT8
    graph's weights go into the repository as U8, which computes what the runtime computes with that option."""
    from mgd_rt.runtime.backends.onnxruntime_backend import ort_session
    from mgd_rt.serve import triton_repo

    monkeypatch.setattr(triton_repo, "cpu_info", lambda: {"flags": flags})
    graph = make_int8_toy_onnx(tmp_path / "toy.int8.onnx")
    (model_dir,) = write_triton_repo([graph], tmp_path / "repo", instance_kind=instance_kind,
                                     int8_weights=int8_weights)
    assert json.loads((model_dir / "mgd_rt.json").read_text())["int8_weights"] == expected
    served = model_dir / "1" / "model.onnx"
    if expected == "s8":
        assert served.read_bytes() == graph.read_bytes()
        return
    import onnx

    weights = {t.name: t.data_type for t in onnx.load(str(served)).graph.initializer if t.name in ("w1", "w2")}
    assert weights == {"w1": onnx.TensorProto.UINT8, "w2": onnx.TensorProto.UINT8}
    image = np.random.default_rng(1).uniform(0, 5, (2, 3, 32, 32)).astype(np.float32)
    as_runtime = ort_session(graph, x64quantprecision=True).run(None, {INPUT_NAME: image})[0]
    as_served = ort_session(served, x64quantprecision=False).run(None, {INPUT_NAME: image})[0]
    np.testing.assert_array_equal(as_served, as_runtime)
    assert np.unique(as_served).size > 50  # the integer products really vary


def test_triton_repo_int8_weights_leave_float_graphs(tmp_path: Path) -> None:
    graph = make_toy_onnx(tmp_path / "toy.onnx", size=32)
    (model_dir,) = write_triton_repo([graph], tmp_path / "repo", int8_weights="u8")
    assert (model_dir / "1" / "model.onnx").read_bytes() == graph.read_bytes()
    assert "int8_weights" not in json.loads((model_dir / "mgd_rt.json").read_text())
    with pytest.raises(MgdRtError, match="--int8-weights s7: choose from auto, s8, u8"):
        write_triton_repo([graph], tmp_path / "repo2", int8_weights="s7")
    from mgd_rt.cli import main

    int8 = make_int8_toy_onnx(tmp_path / "toy.int8.onnx")
    assert main(["triton-repo", str(int8), "-o", str(tmp_path / "repo3"), "--int8-weights", "u8"]) == 0
    assert json.loads((tmp_path / "repo3" / "toy_int8" / "mgd_rt.json").read_text())["int8_weights"] == "u8"


def _fake_engine(tmp_path: Path, profile: tuple[int, int, int], size: int = 64) -> Path:
    """An engine file (opaque bytes: the writer only copies it) with a complete sidecar."""
    from mgd_rt.artifacts import SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_path

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan bytes")
    sidecar = {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "engine": {"file": engine.name, "bytes": 10},
        "library": {"name": "tensorrt", "version": "10.13.0"}, "precision": "fp16", "strongly_typed": True,
        "profile": {"input": INPUT_NAME,
                    **{k: [b, 3, size, size] for k, b in zip(("min", "opt", "max"), profile, strict=True)}},
        "inputs": [{"name": INPUT_NAME, "shape": [-1, 3, size, size], "dtype": "float32"}],
        "outputs": [{"name": OUTPUT_NAME, "shape": [-1, 1, size, size], "dtype": "float32"}],
        "image_size": size, "variant": "tiny",
        "source": {"metadata": {"mean": "0.5,0.5,0.5", "std": "0.25,0.25,0.25"}},
        "build": {}, "targets": {"gpu": {"name": "H100", "compute_capability": "9.0"}},
    }
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


def test_triton_repo_engine(tmp_path: Path) -> None:
    engine = _fake_engine(tmp_path, (1, 4, 16))
    repo = tmp_path / "repo"
    (model_dir,) = write_triton_repo([engine], repo, name="seg")
    text = (model_dir / "config.pbtxt").read_text()
    config = _parse_config(text)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16  # the profile's max
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]  # profile opt and max
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.parameters["mgd_rt.precision"].string_value == "fp16"
    assert config.parameters["mgd_rt.mean"].string_value == "0.5,0.5,0.5"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert (model_dir / "1" / "model.plan.json").read_text() == (tmp_path / "model.fp16.engine.json").read_text()

    # what Triton would refuse is refused before anything is written
    with pytest.raises(MgdRtError, match="beyond the engine's profile"):
        write_triton_repo([engine], tmp_path / "repo2", max_batch=32)
    with pytest.raises(MgdRtError, match="cpu is not possible"):
        write_triton_repo([engine], tmp_path / "repo2", instance_kind="cpu")
    (tmp_path / "late").mkdir()
    late = _fake_engine(tmp_path / "late", (2, 4, 8))
    with pytest.raises(MgdRtError, match="starts at batch 2"):
        write_triton_repo([late], tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists() or not any((tmp_path / "repo2").iterdir())


def test_triton_repo_refusals(tmp_path: Path) -> None:
    wrong = make_toy_onnx(tmp_path / "wrong.onnx", size=32, input_name="pixels")
    good = make_toy_onnx(tmp_path / "good.onnx", size=32)
    fixed = make_toy_onnx(tmp_path / "fixed.onnx", size=32, batch=1)
    repo = tmp_path / "repo"
    with pytest.raises(MgdRtError, match="no tensor 'image'"):
        write_triton_repo([good, wrong], repo)  # the good one is not written either
    assert not repo.exists() or not any(repo.iterdir())
    with pytest.raises(MgdRtError, match="fixed batch of 1"):
        write_triton_repo([fixed], repo, max_batch=4)
    (model_dir,) = write_triton_repo([fixed], repo)  # served unbatched, full fixed dims
    config = _parse_config((model_dir / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 32, 32]
    assert not config.HasField("dynamic_batching")
    (tmp_path / "x.pth").touch()
    with pytest.raises(MgdRtError, match="Triton serves"):
        write_triton_repo([tmp_path / "x.pth"], repo)
    from mgd_rt.cli import main

    assert main(["triton-repo", str(good), "-o", str(repo), "--max-batch", "0"]) == 1


# --- the client backend without a server ------------------------------------------------------

def test_triton_urls_pick_the_triton_backend() -> None:
    from mgd_rt.runtime.backends import backend_for, load_backend
    from mgd_rt.runtime.backends.triton_backend import parse_url

    assert parse_url("grpc://127.0.0.1:8001/mgd_sam2") == ("grpc", "127.0.0.1:8001", "mgd_sam2", "")
    assert parse_url("http://host/seg/2") == ("http", "host:8000", "seg", "2")
    assert backend_for("grpc://h:1/m").name == "triton" and backend_for("http://h:1/m", "triton").name == "triton"
    with pytest.raises(MgdRtError, match="grpc://HOST:PORT/MODEL"):
        parse_url("grpc://host:1")
    with pytest.raises(MgdRtError, match="not onnxruntime"):
        backend_for("grpc://h:1/m", "onnxruntime")
    with pytest.raises(MgdRtError, match="leave --device out"):
        load_backend("grpc://127.0.0.1:1/m", device="cuda")
    pytest.importorskip("tritonclient.grpc")
    with pytest.raises(MgdRtError, match="no Triton server answers"):
        load_backend(f"http://127.0.0.1:{_free_port()}/m")


# --- mgd-rt serve through PyTriton, under Python 3.13 ----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_python() -> str | None:
    """A Python for the server: $MGD_RT_SERVE_PYTHON, else 3.12 (PATH or pyenv).

    3.12 because PyTriton 0.7 fails under 3.11 and pins numpy < 2, which has wheels for 3.12
    but not 3.13 (there pip builds numpy from source for a quarter of an hour).
    """
    candidates = [os.environ.get("MGD_RT_SERVE_PYTHON"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3")), reverse=True),
                  shutil.which("python3.12")]
    for candidate in filter(None, candidates):
        # a pyenv shim on PATH may point at no installed 3.12: ask the interpreter itself
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None



# found once at collection; the tests that start `mgd-rt serve` skip without it
SERVE_PYTHON = _serve_python()
needs_serve_python = pytest.mark.skipif(
    SERVE_PYTHON is None,
    reason="mgd-rt serve needs Python 3.12 (PyTriton 0.7 fails under 3.11, and its numpy<2 pin has no 3.13 wheel) "
           "and none was found: set MGD_RT_SERVE_PYTHON or put python3.12 on PATH")


def _serve_env(python: str) -> Path:
    """A cached venv with mgd-rt[serve] (editable, this checkout) and no torch; returns its bin/."""
    pyproject = (REPO_ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(pyproject + os.path.realpath(python).encode() + str(REPO_ROOT).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("MGD_RT_CACHE", Path.home() / ".cache" / "mgd-rt"))
    env = cache / f"serve-env-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"serve-env-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if not (env / ".complete").exists():
            shutil.rmtree(env, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(env)], check=True, timeout=300)
            # the light runtime + PyTriton only: wheels, about a minute, ~0.6 GB, no torch
            subprocess.run([str(env / "bin" / "pip"), "install", "-q", "-e", f"{REPO_ROOT}[serve]"],
                           check=True, timeout=900)
            (env / ".complete").touch()
    return env / "bin"


@pytest.fixture(scope="module")
def tiny_onnx(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy(SIZE)


def _wait_ready(url: str, proc: subprocess.Popen, deadline: float) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"mgd-rt serve exited with {proc.returncode} before it was ready")
            try:
                if client.is_model_ready("mgd_sam2"):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(1.0)
        raise AssertionError("mgd-rt serve was not ready within the deadline")
    finally:
        client.close()


@needs_serve_python
def test_serve_dynamic_batching_many_clients(tiny_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc")
    bin_dir = _serve_env(SERVE_PYTHON)
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mgd_rt.numerics import TOLERANCES, compare_logits
    from mgd_rt.runtime import Segmenter
    from mgd_rt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(bin_dir / "mgd-rt"), "serve", str(tiny_onnx), "--address", "127.0.0.1", "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", "4",
         "--max-queue-delay-us", "100000"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": "", "MGD_RT_ACCESS_TOKEN": "test-token"},
    )
    try:
        _wait_ready(f"127.0.0.1:{grpc}", proc, time.monotonic() + 240)
        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((1 + i % 2, 3, SIZE, SIZE)).astype(np.float32) for i in range(8)]
        local = OnnxRuntimeBackend(tiny_onnx)
        expected = [local.infer(b) for b in batches]
        local.close()

        # 4 client threads x 2 requests, each thread with its own backend (one client per thread)
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def client(k: int) -> None:
            try:
                with Segmenter(f"grpc://127.0.0.1:{grpc}/mgd_sam2") as seg:
                    assert seg.backend.image_size == SIZE and seg.backend.variant == "tiny"
                    start.wait(timeout=60)
                    for i in (k, k + 4):
                        results[i] = seg.backend.infer(batches[i])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors
        assert sorted(results) == list(range(8))
        for i in range(len(batches)):
            assert compare_logits(expected[i], results[i], TOLERANCES["fp32"], name=f"request {i}")

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        with pytest.raises(InferenceServerException, match="access-token"):
            client.get_inference_statistics("mgd_sam2")  # admin endpoints need the token
        stats = client.get_inference_statistics(
            "mgd_sam2", headers={"triton-grpc-protocol-triton-access-token": "test-token"}, as_json=True,
        )["model_stats"][0]
        executed = {int(b["batch_size"]) for b in stats.get("batch_stats", [])}
        assert int(stats["inference_count"]) == sum(len(b) for b in batches)
        assert max(executed) > 2, f"no dynamic batching: executed batch sizes {sorted(executed)}"
        assert int(stats["execution_count"]) < len(batches)

        # bad requests get Triton errors, and the server keeps serving
        def send(model: str, array: np.ndarray, dtype: str = "FP32") -> None:
            request = grpcclient.InferInput(INPUT_NAME, list(array.shape), dtype)
            request.set_data_from_numpy(array)
            client.infer(model, [request])

        with pytest.raises(InferenceServerException, match="shape|dims"):
            send("mgd_sam2", np.zeros((1, 3, SIZE, SIZE // 2), np.float32))
        with pytest.raises(InferenceServerException, match="(?i)data.?type|FP16|expected"):
            send("mgd_sam2", np.zeros((1, 3, SIZE, SIZE), np.float16), "FP16")
        with pytest.raises(InferenceServerException, match="(?i)unknown|not found|unavailable"):
            send("no_such_model", batches[0])
        with Segmenter(f"grpc://127.0.0.1:{grpc}/mgd_sam2") as seg:
            assert compare_logits(expected[0], seg.backend.infer(batches[0]), TOLERANCES["fp32"])
        client.close()
    finally:
        _stop(proc)
        log.close()
    assert proc.returncode is not None
    with pytest.raises(MgdRtError, match="no Triton server answers"):
        Segmenter(f"grpc://127.0.0.1:{grpc}/mgd_sam2")


def test_serve_refuses_python_311() -> None:
    from mgd_rt.serve.pytriton_server import check_python

    with pytest.raises(MgdRtError, match="_recursion_count"):
        check_python((3, 11, 7))
    check_python((3, 13, 0))
    if sys.version_info < (3, 12):
        from mgd_rt.cli import main

        assert main(["serve", "model.onnx"]) == 1
