"""benchmarks/run_matrix.py's verdict over weight sets: the fastest path is the one whose worst speed-up over the
sets is highest among those that ran and passed on every set (no torch or timing involved)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_matrix.py"


@pytest.fixture(scope="module")
def run_matrix():
    spec = importlib.util.spec_from_file_location("run_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_matrix"] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("run_matrix", None)


def _row(weights: str, backend: str, precision: str, speedup: float, passed: bool = True, compile=None,
         seconds: float | None = None) -> dict:
    """A result row; its latency ``seconds`` (default: an eager run of 1 s over ``speedup``), three equal calls."""
    seconds = seconds if seconds is not None else 1.0 / speedup
    return {"weights": weights, "backend": backend, "precision": precision, "batch": 1, "status": "ok",
            "compile": compile, "vs_torch_fp32": speedup, "accuracy": {"passed": passed},
            "latency_ms": {"mean": seconds * 1e3}, "timings_s": [seconds] * 3}


def test_fastest_within_tolerance_takes_the_worst_set(run_matrix):
    sets = ("untrained", "untrained-seed1", "untrained-seed2")
    results = [r for w in sets for r in (_row(w, "torch", "fp32", 1.0), _row(w, "onnxruntime", "fp32", 2.5))]
    results += [_row("untrained", "onnxruntime", "int8", 3.4), _row("untrained-seed1", "onnxruntime", "int8", 3.1),
                _row("untrained-seed2", "onnxruntime", "int8", 3.3)]
    # faster, but fails on one set
    results += [_row(w, "openvino", "bf16", 4.5, passed=w != "untrained-seed2") for w in sets]
    # fastest FP32 on one set only (compiled rows run on the first set): not a verdict for every set
    results.append(_row("untrained", "torch", "fp32", 2.9, compile="default"))
    results.append({**_row("untrained-seed1", "openvino", "int8", 9.0), "status": "error", "vs_torch_fp32": None})
    found = run_matrix.fastest_within_tolerance(results)
    assert found["weight_sets"] == sorted(sets)
    assert found["best"]["path"] == "onnxruntime int8 B=1" and found["best"]["worst_speedup"] == 3.1
    assert found["best"]["worst_pooled_speedup"] == pytest.approx(3.1)  # every set's eager run took 1 s
    assert found["best_fp32"]["path"] == "onnxruntime fp32 B=1" and found["best_fp32"]["worst_speedup"] == 2.5
    bf16 = next(p for p in found["paths"] if p["path"] == "openvino bf16 B=1")
    assert not bf16["passed"] and bf16["worst_speedup"] == 4.5


def test_nothing_passes_everywhere(run_matrix):
    results = [_row("a", "torch", "fp32", 1.0), _row("b", "torch", "fp32", 1.0),
               _row("a", "onnxruntime", "int8", 3.0), _row("b", "onnxruntime", "int8", 3.0, passed=False)]
    found = run_matrix.fastest_within_tolerance(results)
    assert found["best"] is None and found["best_fp32"] is None


def test_pooled_baseline_evens_out_a_noisy_eager_run(run_matrix):
    """Eager took 1.0 s on one set and 0.5 s on the other (same work): INT8 at 0.4 s on both is 2.5x and 1.25x
    of each set's own run, 1.875x of the pooled eager mean (0.75 s)."""
    results = [_row("a", "torch", "fp32", 1.0, seconds=1.0), _row("b", "torch", "fp32", 1.0, seconds=0.5),
               _row("a", "onnxruntime", "int8", 2.5, seconds=0.4), _row("b", "onnxruntime", "int8", 1.25, seconds=0.4)]
    best = run_matrix.fastest_within_tolerance(results)["best"]
    assert best["worst_speedup"] == 1.25 and best["worst_pooled_speedup"] == pytest.approx(1.875)


def test_int8_with_bf16_float_layers_is_its_own_path(run_matrix):
    """OpenVINO's INT8 graph with --dtype bf16 reports precision int8 but is another path than the same
    backend's plain INT8 row: one failing must not hide (or lend its pass to) the other."""
    sets = ("a", "b")
    results = [_row(w, "torch", "fp32", 1.0) for w in sets]
    results += [_row(w, "openvino", "int8", 2.7) for w in sets]
    results += [{**_row(w, "openvino", "int8", 3.4, passed=w == "a"), "dtype": "bf16"} for w in sets]
    found = run_matrix.fastest_within_tolerance(results)
    paths = sorted(p["path"] for p in found["paths"])
    assert paths == ["openvino int8 B=1", "openvino int8+bf16 B=1", "torch fp32 B=1"]
    assert found["best"]["path"] == "openvino int8 B=1" and found["best"]["worst_speedup"] == 2.7
    from mgd_rt.bench.report import computes

    assert computes("int8", "bf16") == "int8+bf16" and computes("bf16", "bf16") == "bf16"
    assert computes("int8", None) == "int8" and computes("fp32", "fp32") == "fp32"


@pytest.mark.parametrize("rounds", [1, 3])
def test_summary_says_how_rows_were_timed(run_matrix, rounds):
    rows = [{**_row("a", backend, "fp32", speedup), "label": backend, "images_per_s": speedup, "peak_fraction": None,
             "accuracy": {"passed": True, "tolerance_key": "fp32"},
             "latency_ms": {"mean": 1e3 / speedup, "p50": 1e3 / speedup}} for backend, speedup in
            (("torch", 1.0), ("onnxruntime", 1.5))]
    # the allocator moves the eager baseline (benchmarks/eager_allocator.py): a run under other settings says so
    malloc = {"MALLOC_MMAP_THRESHOLD_": "4294967295"} if rounds == 3 else {}
    data = {"environment": {"cpu": {"model": "Some CPU", "logical_cpus": 2, "flags": ["avx2", "fma"]},
                            "env_malloc": malloc},
            "created": "2026-12-06T00:00:00+00:00", "results": rows, "matrix": {}, "flops": {},
            "settings": {"rounds": rounds, "warmup": 1, "iters": 3}, "peak": {"name": "Some CPU", "source": "-"}}
    md = run_matrix.summary_markdown(data)
    assert "| onnxruntime | onnxruntime | fp32 | 1 | 666.7 | 666.7 | 1.500 | 1.50 | - | - | - | - | yes (fp32) |" in md
    assert ("Timing: 3 rounds over a weight set's rows" in md) == (rounds == 3)
    allocator = "; allocator: MALLOC_MMAP_THRESHOLD_=4294967295" if malloc else ""
    header = f"**Some CPU, 2 logical CPUs (flags: avx2 fma)** (2026-12-06T00:00:00+00:00{allocator})"
    assert md.splitlines()[0] == header


def test_summary_names_where_each_int8_graph_was_checked(run_matrix, tmp_path):
    """An INT8 graph's line says the backend its calibration report checked it on (a graph passed with --int8 may
    have been calibrated with --backend openvino); runs recorded without it keep the old wording."""
    report = tmp_path / "seed1.int8.report.json"
    report.write_text(json.dumps({"passed": True, "backend": "openvino on CPU (Some CPU), int8 (float layers in f32); "
                                  "OpenVINO 2026.4.1, 2 threads, compiled",
                                  "recovery": {"verdict": "PASS after 7 steps", "restored": ["a"] * 9,
                                               "fp32_share": 0.0004}}))
    checked = run_matrix._calibration_summary(report, exit_code=0)
    assert checked["checked_on"].startswith("openvino on CPU (Some CPU)")
    older = {key: value for key, value in checked.items() if key != "checked_on"}
    data = {"environment": {"cpu": {"model": "Some CPU", "logical_cpus": 2, "flags": []}}, "created": "-",
            "results": [], "flops": {}, "settings": {}, "peak": {"name": "Some CPU", "source": "-"},
            "matrix": {"int8_calibration": {"seed1.int8.onnx": checked, "seed2.int8.onnx": older}}}
    md = run_matrix.summary_markdown(data)
    assert ("INT8 calibration of seed1.int8.onnx (`mgd-rt calibrate`, checked on openvino on CPU (Some CPU), int8 "
            "(float layers in f32)): PASS after 7 steps, 9 nodes back in FP32 (0.0% of the quantized compute)") in md
    assert "INT8 calibration of seed2.int8.onnx (`mgd-rt calibrate` defaults): PASS after 7 steps" in md


def test_summarize_rejudges_against_todays_tolerance(run_matrix, tmp_path):
    """A finished run's rows are held to the tolerances of today's code from the per-photo measures they kept: a
    row that missed an older, tighter bound passes, one that passed a looser bound fails, and the verdict and
    summary follow."""
    from mgd_rt.numerics import TOLERANCES

    bound = TOLERANCES["fp32"].iou_top10

    def photo(name: str, iou: float, failures: list[str]) -> dict:
        return {"inputs": name, "max_rel_std": 1e-5, "sigmoid_mae": 1e-7, "iou_top10": iou, "failures": failures}

    def checked(photos: list[dict], passed: bool) -> dict:
        return {"tolerance_key": "fp32", "passed": passed, "failures": [f for p in photos for f in p["failures"]],
                "max_rel_std": 1e-5, "sigmoid_mae": 1e-7, "iou_top10": min(p["iou_top10"] for p in photos),
                "photos": photos}

    rows = [{**_row(w, backend, "fp32", speedup), "label": backend, "images_per_s": speedup, "peak_fraction": None,
             "latency_ms": {"mean": 1e3 / speedup, "p50": 1e3 / speedup}}
            for w in ("a", "b") for backend, speedup in (("torch", 1.0), ("openvino", 1.5), ("onnxruntime", 1.2))]
    for r in rows:
        r["accuracy"] = checked([photo("chelsea", 1.0, []), photo("retina", 1.0, [])], True)
    # missed a tighter bound of an older run (still within today's)
    rows[4]["accuracy"] = checked([photo("chelsea", 1.0, []), photo("retina", (1 + bound) / 2,
                                                                    ["IoU top10% ... < 0.99999"])], False)
    # passed a looser bound of an older run (below today's)
    rows[2]["accuracy"] = checked([photo("chelsea", bound - 1e-4, []), photo("retina", 1.0, [])], True)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"environment": {"cpu": {"model": "Some CPU", "logical_cpus": 2, "flags": []}},
                                "created": "2026-12-06T00:00:00+00:00", "results": rows, "matrix": {}, "flops": {},
                                "settings": {}, "peak": {"name": "Some CPU", "source": "-"}}))
    assert run_matrix.summarize(path) == 0
    data = json.loads(path.read_text())
    openvino_b, onnxruntime_b = data["results"][4]["accuracy"], data["results"][2]["accuracy"]
    assert openvino_b["passed"] and openvino_b["failures"] == [] and openvino_b["photos"][1]["passed"]
    assert not onnxruntime_b["passed"]
    assert onnxruntime_b["failures"] == [f"chelsea: IoU top10% {bound - 1e-4:.5f} < {bound}"]
    assert len(data["matrix"]["rejudged"]) == 2
    assert data["matrix"]["fastest_within_tolerance"]["best_fp32"]["path"] == "openvino fp32 B=1"
    md = path.with_suffix(".md").read_text()
    assert f"a onnxruntime onnxruntime fp32 B=1: fails (fp32: max|d|/std <= 0.0001, IoU top10% >= {bound:g})" in md


def test_a_calibration_that_crashes_is_recorded_and_its_graph_removed(run_matrix, tmp_path, monkeypatch):
    """An exception inside `mgd-rt calibrate` (an ONNX Runtime that cannot load the INT8 graph it just wrote)
    becomes one 'not run' line; the unchecked graph is not left for the next run to reuse."""
    from argparse import Namespace

    import mgd_rt.cli

    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes(b"fp32")

    def crashing(argv: list[str]) -> int:
        Path(argv[argv.index("-o") + 1]).write_bytes(b"int8")
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Attempt to replace the existing tensor\ndetails")

    monkeypatch.setattr(mgd_rt.cli, "main", crashing)
    unavailable: list[dict] = []
    args = Namespace(int8=None, calibrate=True, calibration_photos=12)
    assert run_matrix._int8(fp32, args, unavailable, {}, target="cpu") is None
    assert not (tmp_path / "model.int8.onnx").exists()
    assert unavailable == [{"name": "onnxruntime int8", "reason": "mgd-rt calibrate failed: RuntimeError: "
                            "[ONNXRuntimeError] : 1 : FAIL : Attempt to replace the existing tensor"}]


def test_work_files_are_remade_when_what_made_them_changed(run_matrix, tmp_path, monkeypatch):
    """An INT8 graph older than its FP32 graph (re-exported since) is calibrated again; one newer is reused
    without calling calibrate. _changed_since names the newer source, in a file or a package's .py files."""
    import os
    from argparse import Namespace

    import mgd_rt.cli

    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for path, mtime in ((int8, 1_000), (fp32, 2_000), (package / "a.py", 500), (package / "sub" / "b.py", 1_500),
                        (package / "notes.txt", 3_000)):
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    assert run_matrix._changed_since(int8, fp32) == fp32
    assert run_matrix._changed_since(int8, package) == package / "sub" / "b.py"  # not the .txt
    assert run_matrix._changed_since(fp32, package, int8) is None

    calls: list[list[str]] = []

    def calibrating(argv: list[str]) -> int:
        calls.append(argv)
        Path(argv[argv.index("-o") + 1]).write_bytes(b"int8, again")
        return 0

    monkeypatch.setattr(mgd_rt.cli, "main", calibrating)
    args = Namespace(int8=None, calibrate=True, calibration_photos=12)
    assert run_matrix._int8(fp32, args, [], {}, target="cpu") == int8
    assert len(calls) == 1 and int8.read_bytes() == b"int8, again"
    assert run_matrix._int8(fp32, args, [], {}, target="cpu") == int8  # now newer than the FP32 graph: reused
    assert len(calls) == 1


@pytest.mark.parametrize(("dtypes", "cuda", "expected"), [
    (None, True, ["fp32", "fp16", "bf16"]),
    (None, False, ["fp32", "bf16"]),
    ("fp16", True, ["fp16"]),
    ("bf16,fp32,bf16", False, ["bf16", "fp32"]),
])
def test_dtypes(run_matrix, dtypes, cuda, expected):
    import argparse

    assert run_matrix.torch_dtypes(argparse.Namespace(dtypes=dtypes), cuda) == expected


def test_the_fp32_baseline_runs_eager_when_fp32_is_not_asked_for(run_matrix):
    """--dtypes fp16 compiles fp16 only: the FP32 baseline is one eager row of its own, which plan() accepts for
    a variant's seeded weights (bench's ratios need it)."""
    from mgd_rt.bench.models import plan

    assert run_matrix.torch_rows("b+", ["fp32", "fp16"]) == ["b+"]
    model, baseline = run_matrix.torch_rows("b+", ["fp16"])
    runs = plan([model, baseline], ["fp16"], compile=(None, "reduce-overhead"))
    assert [(r.dtype, r.compile, r.label) for r in runs] == [
        ("fp16", None, "b+ (untrained)"), ("fp16", "reduce-overhead", "b+ (untrained)"),
        ("fp32", None, "b+ (untrained)")]


def test_an_unknown_dtype_is_refused_before_anything_runs(run_matrix, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_matrix.main(["--dtypes", "fp16,int4", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--dtypes: unknown precision int4" in capsys.readouterr().err
