"""Build stage on the CPU with TensorRT-RTX: tiny FP32 / FP16 (/ INT8) engines, sidecar, bad inputs, cache.

The tiny graph is exported once for the module (~45-90 s on 2 shared cores); each RTX build of it
takes ~10-15 s (SM 8.9 ahead of time). Error paths and the cache use a one-Conv graph that
builds in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mgd_rt.artifacts import SIDECAR_KEYS, file_sha256, read_sidecar, sidecar_path
from mgd_rt.engine import DEFAULT_PROFILE, build_engine, cache_dir, cached_engine, read_graph, resolve_profile
from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.tensorrt_library import GpuInfo

needs_rtx = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt_rtx") is None,
    reason="tensorrt_rtx not installed (pip install -e '.[rtx]')",
)
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


@pytest.fixture(scope="module")
def tiny_onnx(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy()


def one_conv_graph(path: Path, batch: int | str = "batch", precision: str = "fp32", size: int = 64) -> Path:
    """image (B, 3, S, S) -> 1x1 Conv -> mask_logits (B, 1, S, S), with mgd-rt metadata: builds in ~1 s."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, (1, 3, 1, 1), [0.5, -0.25, 0.125])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["mask_logits"])], "one_conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [batch, 1, size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    meta = {"variant": "synthetic", "image_size": str(size), "precision": precision, "mean": "0.485,0.456,0.406",
            "std": "0.229,0.224,0.225", "checkpoint_sha256": "untrained"}
    helper.set_model_props(model, meta)
    onnx.save(model, path)
    return path


def _graph_io(path: Path) -> tuple[list, list]:
    model = onnx.load(str(path), load_external_data=False)

    def io(values):
        return [{"name": v.name, "dtype": _DTYPES[v.type.tensor_type.elem_type],
                 "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
                for v in values]

    return io(model.graph.input), io(model.graph.output)


@needs_rtx
def test_fp32_engine_and_sidecar(tiny_onnx, tmp_path):
    """The FP32 graph builds (SM 8.9, ahead of time); the sidecar is complete and matches the graph."""
    import tensorrt_rtx

    engine = tmp_path / "tiny.fp32.engine"
    result = build_engine(tiny_onnx, output=engine, batch="1:2:4", targets="sm89", opt_level=0,
                          timing_cache=tmp_path / "timing.cache", library="tensorrt_rtx")
    assert result.path == engine and engine.stat().st_size == result.engine_bytes > 1_000_000
    side = read_sidecar(engine)
    assert side == json.loads(sidecar_path(engine).read_text()) == result.sidecar
    assert set(SIDECAR_KEYS) <= set(side)
    assert side["library"] == {"name": "tensorrt_rtx", "version": tensorrt_rtx.__version__}
    assert side["precision"] == "fp32" and side["source"]["precision"] == "fp32" and side["strongly_typed"]
    assert side["source"]["sha256"] == file_sha256(tiny_onnx)
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props}
    assert side["source"]["metadata"] == meta and side["image_size"] == int(meta["image_size"]) == 512
    inputs, outputs = _graph_io(tiny_onnx)
    assert side["inputs"] == inputs and side["outputs"] == outputs
    assert side["profile"] == {"input": "image", "min": [1, 3, 512, 512], "opt": [2, 3, 512, 512],
                               "max": [4, 3, 512, 512]}
    assert side["targets"] == {"compute_capabilities": ["sm89"]}
    assert side["build"]["flags"]["opt_level"] == 0 and side["build"]["seconds"] > 0
    assert "not used" in side["build"]["flags"]["timing_cache"]  # TensorRT-RTX has none; recorded, not hidden
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.fp32.engine", "tiny.fp32.engine.json"]
    print("\n".join(result.lines()))


@needs_rtx
def test_fp16_engine_from_fp32_graph_via_cli(tiny_onnx, capsys):
    """`mgd-rt build --fp16` converts the FP32 graph on the fly (strongly typed) and writes model.fp16.engine."""
    from mgd_rt.cli import main

    assert main(["build", str(tiny_onnx), "--fp16", "--rtx", "--target", "sm89,sm120", "--opt-level", "0"]) == 0
    engine = tiny_onnx.with_name("tiny.fp16.engine")
    side = read_sidecar(engine)
    assert side["precision"] == "fp16" and side["source"]["precision"] == "fp32"
    assert "FP16" in side["source"]["derived"]
    assert side["targets"]["compute_capabilities"] == ["sm89", "sm120"]
    assert side["inputs"][0]["dtype"] == side["outputs"][0]["dtype"] == "float32"  # contract: FP32 I/O
    assert "done: engine built" in capsys.readouterr().out


@needs_rtx
def test_int8_engine_from_calibration(tiny_onnx, tmp_path):
    from PIL import Image
    from skimage import data

    images = tmp_path / "calib"
    images.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(images / f"{name}.png")
    result = build_engine(tiny_onnx, "int8", output=tmp_path / "tiny.int8.engine", calib_images=images,
                          targets="sm89", opt_level=0, library="tensorrt_rtx",
                          calibration_options={"num_images": 2})
    assert result.sidecar["precision"] == "int8" and "calibrated" in result.sidecar["source"]["derived"]
    assert result.sidecar["source"]["precision"] == "fp32"
    print("\n".join(result.lines()))


def _calibration_folder(folder: Path, names: tuple[str, ...] = ("astronaut", "coffee")) -> Path:
    """A folder of scikit-image photos as PNG: fewer than calibrate's default 64."""
    from PIL import Image
    from skimage import data

    folder.mkdir()
    for name in names:
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


@needs_rtx
def test_int8_engine_via_cli_with_few_images(tiny_onnx, tmp_path, capsys):
    """`mgd-rt build --int8 --calib-images DIR` on 2 images: refused with "pass -n 2", which `build` takes."""
    from mgd_rt.cli import main

    images = _calibration_folder(tmp_path / "calib")
    engine = tmp_path / "tiny.int8.engine"
    flags = ["build", str(tiny_onnx), "--int8", "--calib-images", str(images), "--rtx", "--target", "sm89",
             "--opt-level", "0", "-o", str(engine)]
    assert main(flags) == 1
    assert "pass -n 2" in capsys.readouterr().err and not engine.exists()
    assert main([*flags, "-n", "2", "--method", "max", "--seed", "1"]) == 0
    side = read_sidecar(engine)
    assert side["precision"] == "int8" and "calibrated" in side["source"]["derived"]
    assert "done: engine built" in capsys.readouterr().out


def test_build_cli_passes_the_calibration_group(tmp_path, monkeypatch, capsys):
    """`build` and `calibrate` share the calibration group; `build` hands it to build_engine, and refuses
    it without --calib-images (nothing would be calibrated)."""
    import argparse

    import mgd_rt.engine
    from mgd_rt.cli import build_parser, main
    from mgd_rt.cli.build import add_build_arguments
    from mgd_rt.cli.calibrate import add_calibrate_arguments

    shared = {"num_images", "method", "exclude", "default_exclusions", "seed", "cache"}
    for add in (add_build_arguments, add_calibrate_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        (group,) = [g for g in parser._action_groups if g.title == "calibration"]
        assert shared <= {a.dest for a in group._group_actions}
    seen: dict = {}

    class Built:
        sidecar: dict = {}

        def lines(self) -> list[str]:
            return ["built"]

    def fake_build(onnx_path, **kwargs):
        seen.update(kwargs, onnx=onnx_path)
        return Built()

    monkeypatch.setattr(mgd_rt.engine, "build_engine", fake_build)
    sub = build_parser()._subparsers._group_actions[0].choices["build"]
    args = sub.parse_args(["g.onnx", "--int8", "--calib-images", "photos", "-n", "2", "--method", "entropy",
                           "--exclude", "op:Resize", "--exclude", "mask", "--no-default-exclusions", "--seed", "3",
                           "--no-cache", "--target", "sm89"])
    assert args.target == "sm89"  # build's --target stays the compute capabilities
    assert args.func(args) == 0
    assert seen["calib_images"] == "photos" and seen["targets"] == "sm89"
    assert seen["calibration_options"] == {"num_images": 2, "method": "entropy", "exclude": ("op:Resize", "mask"),
                                           "default_exclusions": False, "seed": 3, "cache": False}
    assert main(["build", "g.onnx", "--int8", "--calib-images", "photos"]) == 0
    assert seen["calibration_options"] == {"num_images": 64, "method": "max", "exclude": (),
                                           "default_exclusions": True, "seed": 0, "cache": True}
    capsys.readouterr()
    assert main(["build", "g.int8.onnx", "--int8", "-n", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only apply with --int8 --calib-images DIR" in err[0]


def test_profile_resolution(tmp_path):
    """One function resolves --batch for build_engine and cached_engine: the default, N, MIN:OPT:MAX, fixed."""
    dynamic, _ = read_graph(one_conv_graph(tmp_path / "d.onnx"))
    fixed, _ = read_graph(one_conv_graph(tmp_path / "f.onnx", batch=2))
    assert resolve_profile(dynamic, None) == DEFAULT_PROFILE == (1, 1, 4)
    assert resolve_profile(dynamic, "3") == (3, 3, 3)
    assert resolve_profile(dynamic, (1, 2, 8)) == resolve_profile(dynamic, "1:2:8") == (1, 2, 8)
    assert resolve_profile(fixed, None) == resolve_profile(fixed, "2") == (2, 2, 2)
    with pytest.raises(MgdRtError, match="fixed batch of 2, so the profile can only be 2:2:2"):
        resolve_profile(fixed, "1:2:4")
    with pytest.raises(MgdRtError, match="1 <= MIN <= OPT <= MAX"):
        resolve_profile(dynamic, (4, 2, 1))


@needs_rtx
def test_build_and_cache_resolve_the_profile_alike(tmp_path):
    """A fixed-batch graph: the cache keys and builds its batch; a wrong --batch is the same error in both."""
    fixed = one_conv_graph(tmp_path / "fixed.onnx", batch=2)
    gpu = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    engine = cached_engine(fixed, cache=tmp_path / "cache", library="tensorrt_rtx", gpu=gpu, opt_level=0)
    side = read_sidecar(engine)
    assert side["cache_key"]["profile"] == side["build"]["flags"]["batch"] == "2:2:2"
    messages = []
    for build in (build_engine, cached_engine):
        with pytest.raises(MgdRtError) as info:
            build(fixed, batch="1:2:4", library="tensorrt_rtx", gpu=gpu)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "can only be 2:2:2" in messages[0]


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
    graph = one_conv_graph(tmp_path / "g.onnx")
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("this is not a graph\n")
    int8 = one_conv_graph(tmp_path / "g.int8.onnx", precision="int8")
    fixed = one_conv_graph(tmp_path / "fixed.onnx", batch=2)
    before = sorted(tmp_path.iterdir())
    cases = [
        (dict(onnx_path=not_onnx), "not an ONNX graph"),
        (dict(onnx_path=tmp_path / "missing.onnx"), "no such file"),
        (dict(onnx_path=int8, precision="fp16"), "is a int8 graph; build fp16 from the FP32 graph"),
        (dict(onnx_path=graph, precision="int8"), "pass --calib-images DIR"),
        (dict(onnx_path=graph, batch="4:2:1"), "1 <= MIN <= OPT <= MAX"),
        (dict(onnx_path=graph, batch="1:x:4"), "use MIN:OPT:MAX"),
        (dict(onnx_path=fixed, batch="1:2:4"), "fixed batch of 2, so the profile can only be 2:2:2"),
        (dict(onnx_path=graph, output=tmp_path / "no" / "such" / "g.engine"), "does not exist"),
        (dict(onnx_path=graph, output=tmp_path / "g.plan"), "must end in .engine"),
        (dict(onnx_path=graph, targets="sm99"), "--target sm99: choose from"),
        (dict(onnx_path=graph, opt_level=7), "--opt-level 7"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MgdRtError, match=message.replace("(", r"\(")) as info:
            build_engine(library="tensorrt_rtx" if _has_rtx() else "auto", **kwargs)
        assert "\n" not in str(info.value)
    assert sorted(tmp_path.iterdir()) == before  # nothing half-written


def _has_rtx() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt_rtx") is not None


def test_cli_flags_match_script(tmp_path, capsys):
    """`mgd-rt build` and `python export/build_trt.py` share one parser; errors are one line, exit 1."""
    import argparse
    import importlib.util

    from mgd_rt.cli import build_parser
    from mgd_rt.cli.build import add_build_arguments

    script = argparse.ArgumentParser()
    add_build_arguments(script)
    sub = build_parser()._subparsers._group_actions[0].choices["build"]
    assert sorted(a.dest for a in script._actions) == sorted(a.dest for a in sub._actions)
    spec = importlib.util.spec_from_file_location("build_trt", Path(__file__).parents[1] / "export" / "build_trt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    assert module.main([str(bad), "--fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgd-rt: error:") and "bad.onnx" in err[0]


@needs_rtx
def test_engine_cache_reuses_and_rebuilds_on_key_change(tmp_path, monkeypatch, caplog):
    """Same key: reused, not rebuilt; another profile: rebuilt, and the log says which field changed."""
    import logging

    graph = one_conv_graph(tmp_path / "g.onnx")
    monkeypatch.setenv("MGD_RT_ENGINE_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    gpu = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")  # no GPU here: the RTX build targets its SM
    caplog.set_level(logging.INFO, logger="mgd_rt")
    engine = cached_engine(graph, library="tensorrt_rtx", gpu=gpu, opt_level=0)
    key = read_sidecar(engine)["cache_key"]
    assert key["gpu"] == gpu.name and key["compute_capability"] == "8.9" and key["profile"] == "1:1:4"
    assert key["graph_sha256"] == file_sha256(graph) and key["precision"] == "fp32"
    stamp = engine.stat().st_mtime_ns
    assert cached_engine(graph, library="tensorrt_rtx", gpu=gpu, opt_level=0) == engine
    assert engine.stat().st_mtime_ns == stamp and "reusing" in caplog.text
    caplog.clear()
    assert cached_engine(graph, batch="1:1:2", library="tensorrt_rtx", gpu=gpu, opt_level=0) == engine
    assert "stale (profile '1:1:4' -> '1:1:2')" in caplog.text
    assert read_sidecar(engine)["cache_key"]["profile"] == "1:1:2"
