"""mgd-rt bench on the tiny model (CPU, S=256 to stay quick on busy cores): the JSON schema, every
figure derived from the raw timings it reports, accuracy fields within TOLERANCES, the chart,
end-to-end stages and the CLI. Timing values themselves are never asserted."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHECKPOINT
from PIL import Image

from mgd_rt.bench import GPU_PEAKS, bench, cpu_peak, gpu_peak, synthetic_photo
from mgd_rt.cli import main
from mgd_rt.errors import MgdRtError
from mgd_rt.machine import cpu_info
from mgd_rt.numerics import TOLERANCES

pytest.importorskip("torch")
SIZE = 256  # S/2 a multiple of 32; a quarter of the tiny variant's pixels. Not smaller: at S=128 the
# top 10% is 1,638 pixels an image, so one pixel at the threshold costs 6e-4 IoU, more than fp32's 1e-4
ITERS = 3
RESULT_KEYS = {"model", "label", "batch", "backend", "device", "precision", "variant", "image_size", "trained",
               "status", "error", "load_s", "warmup_timings_s", "warmup_stable", "timings_s",
               "cuda_event_timings_s", "latency_ms", "images_per_s", "memory", "flops_per_image",
               "achieved_tflops", "peak_tflops", "peak_fraction", "vs_torch_fp32", "inputs", "accuracy",
               "end_to_end", "compile", "compile_s", "compile_cache", "dtype", "round_timings_s"}


@pytest.fixture(scope="module")
def onnx_path(tiny_onnx_copy) -> Path:
    """The fixture checkpoint's FP32 graph at S=256."""
    return tiny_onnx_copy(SIZE, "tiny256.onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_photos")
    Image.fromarray(synthetic_photo(300, 400, seed=1)).save(root / "a.jpg", quality=90)
    Image.fromarray(synthetic_photo(200, 260, seed=2)).save(root / "b.png")
    return root


@pytest.fixture(scope="module")
def run(onnx_path, photos, tmp_path_factory):
    """One bench run: checkpoint (torch fp32) and graph (onnxruntime), batches 1 and 2, reference."""
    out = tmp_path_factory.mktemp("bench_out") / "results.json"
    report = bench([TINY_CHECKPOINT, onnx_path], batches=[1, 2], warmup=1, iters=ITERS, device="cpu",
                   dtypes=["fp32"], reference=TINY_CHECKPOINT, output=out, image_size=SIZE, photos=2)
    return report, out


def test_json_schema_and_environment(run):
    report, out = run
    data = json.loads(out.read_text())
    assert data["schema"] == "mgd-rt-bench/1"
    assert set(data) >= {"settings", "environment", "peak", "flops", "results", "unavailable", "created"}
    env = data["environment"]
    assert env["cpu"]["model"] and env["cpu"]["logical_cpus"] >= 1
    assert env["torch"]["threads"] >= 1 and env["onnxruntime"]["providers"]
    assert len(env["load_average_start"]) == 3 and len(env["load_average_end"]) == 3
    assert data["settings"]["iters"] == ITERS and data["settings"]["batches"] == [1, 2]
    assert data["settings"]["tf32"] is None  # a CUDA-only switch
    assert len(data["results"]) == 4  # 2 models x 2 batch sizes
    for r in data["results"]:
        assert set(r) == RESULT_KEYS
        assert r["status"] == "ok", r["error"]
        assert r["dtype"] in (None, r["precision"])  # as asked, or the graph's own: no float-layer override
    assert {(r["backend"], r["batch"]) for r in data["results"]} == {
        ("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    assert report.ok and report.json_path == out


def test_environment_names_the_allocator(monkeypatch):
    """glibc's malloc settings and a preloaded allocator go into the environment a result records: they move
    PyTorch's eager CPU time by 1.4x (benchmarks/eager_allocator.py)."""
    from mgd_rt.machine import environment

    for name in [k for k in os.environ if k.startswith("MALLOC_") or k == "LD_PRELOAD"]:
        monkeypatch.delenv(name)
    assert environment("cpu")["env_malloc"] == {}
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967295")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.setenv("MALLOCATOR", "not glibc's")  # a prefix match, not the MALLOC_ family
    assert environment("cpu")["env_malloc"] == {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                                                "MALLOC_MMAP_THRESHOLD_": "4294967295"}


def test_figures_come_from_the_raw_timings(run):
    _, out = run
    for r in json.loads(out.read_text())["results"]:
        t = np.asarray(r["timings_s"]) * 1e3
        lat = r["latency_ms"]
        assert len(t) == ITERS and len(r["warmup_timings_s"]) == 1 and (t > 0).all()
        assert r["round_timings_s"] == [r["timings_s"]]  # one round
        assert lat["min"] == pytest.approx(t.min()) and lat["max"] == pytest.approx(t.max())
        assert lat["mean"] == pytest.approx(t.mean())
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["p50"] == pytest.approx(np.median(t))
        assert r["images_per_s"] == pytest.approx(r["batch"] / (lat["mean"] / 1e3))
        assert r["warmup_stable"] is None and r["cuda_event_timings_s"] is None  # CPU: no stability loop, no events
        assert len(r["inputs"]) == r["batch"]
        # memory: real peaks (the load's at least the resident size then), the larger one reported
        m = r["memory"]
        assert m["host_peak_rss_load_mb"] >= m["host_rss_after_load_mb"] > 0 and m["host_peak_rss_run_mb"] > 0
        assert m["host_peak_rss_mb"] == max(m["host_peak_rss_load_mb"], m["host_peak_rss_run_mb"])
        # FLOPs counted once per variant and size, the same for both backends; achieved and fraction derived
        assert r["flops_per_image"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e12)
        assert r["peak_fraction"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"])
    data = json.loads(out.read_text())
    assert {r["flops_per_image"] for r in data["results"]} == {data["flops"][f"tiny@{SIZE}"]["flops_per_image"]}
    by = {(r["backend"], r["batch"]): r for r in data["results"]}
    for (_, b), r in by.items():
        base = by[("torch", b)]["latency_ms"]["mean"]
        assert r["vs_torch_fp32"] == pytest.approx(base / r["latency_ms"]["mean"])


def test_flop_count_prints_no_untrained_weights_warning(caplog):
    """count_flops builds the bare architecture (FLOPs do not depend on weights): a bench of the user's
    checkpoint must not print load_model's "UNTRAINED weights" warning, as if theirs had not been loaded."""
    from mgd_rt.bench import flops

    flops._FLOPS_CACHE.pop(("tiny", 128), None)
    with caplog.at_level(logging.WARNING, logger="mgd_rt"):
        counted = flops.count_flops("tiny", 128)
    assert [r.getMessage() for r in caplog.records if "UNTRAINED" in r.getMessage()] == []
    assert counted["flops_per_image"] > 0 and any("convolution" in op for op in counted["by_op"])


def test_accuracy_against_the_reference_within_tolerances(run):
    _, out = run
    tol = TOLERANCES["fp32"]
    for r in json.loads(out.read_text())["results"]:
        acc = r["accuracy"]
        assert set(acc) >= {"max_abs", "max_rel_std", "sigmoid_mae", "iou_05", "iou_top10", "passed", "tolerance"}
        assert acc["tolerance_key"] == "fp32" and acc["passed"], acc["failures"]
        assert acc["max_rel_std"] <= tol.max_rel_std and acc["iou_top10"] >= tol.iou_top10
        assert acc["reference_std"] > 0  # real photos through a real model, not a constant


def test_chart_is_a_png(run):
    report, out = run
    chart = out.with_suffix(".png")
    assert report.chart_path == chart and chart.stat().st_size > 1000
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 100
    assert "p50 ms" in report.table() and "onnxruntime" in report.table()


def test_end_to_end_and_cli(onnx_path, photos, tmp_path, capsys):
    out = tmp_path / "cli.json"
    rc = main(["bench", str(onnx_path), "--batch", "1", "--warmup", "0", "--iters", "1", "--device", "cpu",
               "--end-to-end", str(photos), "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "end-to-end" in printed and "chart:" in printed
    (r,) = json.loads(out.read_text())["results"]
    assert r["accuracy"] is None and len(r["timings_s"]) == 1
    e2e = r["end_to_end"]
    assert e2e["images"] == 2 and not e2e["failed"] and e2e["warmup_pass_wall_s"] > 0
    assert set(e2e["stage_s_per_image"]) == {"decode", "resize", "model", "write"}
    for stage, raw in e2e["stage_raw_s"].items():
        assert len(raw) == 2 and e2e["stage_s_per_image"][stage] == pytest.approx(np.mean(raw))
    assert e2e["images_per_s"] == pytest.approx(2 / e2e["wall_s"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_seconds_mode_and_errors_recorded(onnx_path, tmp_path):
    report = bench([onnx_path], warmup=0, seconds=0.01, device="cpu")
    (r,) = report.results
    assert r.status == "ok" and len(r.timings_s) >= 1 and report.json_path is None
    # a graph that cannot load becomes a recorded error; the run goes on
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    report = bench([bad, onnx_path], warmup=0, iters=1, device="cpu", chart=tmp_path / "c.png")
    assert [x.status for x in report.results] == ["error", "ok"]
    assert "cannot load" in report.results[0].error and (tmp_path / "c.png").stat().st_size > 0


def test_load_peak_covers_the_resident_size_read_after_the_load(onnx_path, monkeypatch):
    """Memory that grows between the two reads (threads still allocating; CI saw a 4 kB gap) must not
    leave the load's peak below the resident size reported beside it."""
    import mgd_rt.bench.runner as runner

    grown = iter(range(1000, 10**6))  # every read of either counter sees 1 kB more resident memory
    monkeypatch.setattr(runner, "status_mb", lambda key: next(grown) / 1024.0)
    monkeypatch.setattr(runner, "peak_rss_mb", lambda: next(grown) / 1024.0)
    (r,) = bench([onnx_path], warmup=0, iters=1, device="cpu").results
    assert r.status == "ok"
    assert r.memory["host_peak_rss_load_mb"] >= r.memory["host_rss_after_load_mb"] > 0


def test_rounds_time_every_model_again_and_summarise_all_calls(onnx_path, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    out = tmp_path / "rounds.json"
    report = bench([bad, onnx_path], warmup=0, iters=2, rounds=3, device="cpu", output=out)
    failed, timed = report.results
    assert failed.status == "error" and failed.round_timings_s == [] and failed.timings_s == []  # stays failed
    assert [len(calls) for calls in timed.round_timings_s] == [2, 2, 2]
    assert timed.timings_s == [t for calls in timed.round_timings_s for t in calls]
    assert timed.latency_ms["mean"] == pytest.approx(1e3 * np.mean(timed.timings_s))
    assert timed.images_per_s == pytest.approx(1 / (timed.latency_ms["mean"] / 1e3))
    data = json.loads(out.read_text())
    assert data["settings"]["rounds"] == 3 and len(data["results"][1]["round_timings_s"]) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"models": ["tiny"], "rounds": 0}, "--rounds"),
    ({"models": ["nope.onnx"]}, "no such model"),
    ({"models": ["tiny"], "dtypes": ["int4"]}, "--dtype int4"),
    ({"models": ["tiny"], "batches": [0]}, "--batch"),
    ({"models": ["tiny"], "iters": 0}, "--iters"),
    ({"models": ["tiny"], "device": "tpu"}, "--device"),
    ({"models": ["tiny"], "reference": "missing.pth"}, "--reference"),
])
def test_user_errors(kwargs, match):
    with pytest.raises(MgdRtError, match=match):
        bench(**kwargs)


def test_peak_table():
    assert gpu_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert gpu_peak("NVIDIA H100 PCIe").fp16 == 756.0
    assert gpu_peak("NVIDIA A100-SXM4-80GB").int8 == 624.0
    assert gpu_peak("NVIDIA L4").name == "L4" and gpu_peak("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert gpu_peak("NVIDIA GeForce GTX 1080") is None
    assert all(p.source for p in GPU_PEAKS)
    peak = cpu_peak({"model": "x", "logical_cpus": 2, "ghz": 2.0, "flags": ["avx2", "avx512f", "fma"]})
    assert peak["tflops"]["fp32"] == pytest.approx(2 * 2.0 * 64 / 1e3)
    assert cpu_peak(cpu_info())["tflops"]["fp32"] > 0
    assert math.isfinite(cpu_peak()["tflops"]["int8"])


def test_cpu_peak_carries_the_measured_gemm_rate():
    """The CPU's peak row adds the FP32 GEMM rate measured at the start, and the clock it implies, to its source."""
    from mgd_rt.bench.peaks import machine_peak

    info = cpu_info()
    peak = machine_peak({"cpu": info}, "cpu")
    gemm = peak["fp32_gemm_measured"]
    fp32_per_cycle = peak["flops_per_cycle_per_core"]["fp32"] * info["logical_cpus"]
    # no CPU clocks its FP32 units above 6 GHz: a faster "rate" would be a broken timing
    assert 0 < gemm["gflops"] < fp32_per_cycle * 6.0
    assert f"FP32 GEMM measured at the start: {gemm['gflops']:.0f} GFLOP/s" in peak["source"]
    assert f"{gemm['threads']} threads" in gemm["method"]


def test_holdout_accuracy_checks_every_held_out_photo(onnx_path, tmp_path):
    """``holdout``: each of calibration's six held-out photos at batch 1, the worst value of each measure, and a
    failure names its photo; weights other than the graph's (seeded tiny) fail on every photo."""
    from mgd_rt.runtime.samples import HOLDOUT_PHOTOS

    same = bench([onnx_path], warmup=0, iters=1, device="cpu", reference=TINY_CHECKPOINT, image_size=SIZE,
                 holdout=True)
    other = bench([onnx_path], warmup=0, iters=1, device="cpu", reference="tiny", image_size=SIZE, holdout=True)
    for report in (same, other):
        acc = report.results[0].accuracy
        per_photo = acc["photos"]
        assert [p["inputs"] for p in per_photo] == [f"skimage.data.{n}" for n in HOLDOUT_PHOTOS]
        assert acc["holdout"] and report.results[0].inputs == ["skimage.data.astronaut"]  # the timed batch apart
        assert acc["inputs"] == ", ".join(p["inputs"] for p in per_photo)
        assert acc["iou_top10"] == min(p["iou_top10"] for p in per_photo)
        assert acc["max_rel_std"] == max(p["max_rel_std"] for p in per_photo)
        assert acc["sigmoid_mae"] == max(p["sigmoid_mae"] for p in per_photo)
        assert acc["passed"] == all(p["passed"] for p in per_photo) == (not acc["failures"])
    assert same.ok and same.results[0].accuracy["max_rel_std"] <= TOLERANCES["fp32"].max_rel_std
    bad = other.results[0].accuracy
    assert not other.ok and not bad["passed"] and bad["iou_top10"] < TOLERANCES["fp32"].iou_top10
    assert {f.split(":")[0] for f in bad["failures"]} == {f"skimage.data.{n}" for n in HOLDOUT_PHOTOS}


def test_holdout_needs_a_reference(onnx_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(onnx_path), "--holdout"])
    assert exc.value.code == 2 and "--holdout checks accuracy against --reference" in capsys.readouterr().err


def test_result_files_are_named_after_the_machine():
    """run_matrix's and pixel_input's result names: the names already in benchmarks/results/ come out again."""
    from mgd_rt.machine import machine_tag, slug

    assert slug("Intel(R) Xeon(R) Processor") == "xeon"
    assert slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert slug("AMD EPYC 9R14 96-Core Processor") == "amd-epyc-9r14-96-core"
    assert slug("b+") == "b" and slug("(R)") == "unknown"
    info = cpu_info()
    assert machine_tag("cpu") == f"cpu-{slug(info['model'])}-{info['logical_cpus']}cpu"
