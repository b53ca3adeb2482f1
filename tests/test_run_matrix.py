"""benchmarks/run_matrix.py's verdict over weight sets: the fastest path is the one whose worst speed-up over the
sets is highest among those that ran and passed on every set (no torch or timing involved)."""

from __future__ import annotations

import importlib.util
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


def _row(weights: str, backend: str, precision: str, speedup: float, passed: bool = True, compile=None) -> dict:
    return {"weights": weights, "backend": backend, "precision": precision, "batch": 1, "status": "ok",
            "compile": compile, "vs_torch_fp32": speedup, "accuracy": {"passed": passed}}


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
    assert found["best_fp32"]["path"] == "onnxruntime fp32 B=1" and found["best_fp32"]["worst_speedup"] == 2.5
    bf16 = next(p for p in found["paths"] if p["path"] == "openvino bf16 B=1")
    assert not bf16["passed"] and bf16["worst_speedup"] == 4.5


def test_nothing_passes_everywhere(run_matrix):
    results = [_row("a", "torch", "fp32", 1.0), _row("b", "torch", "fp32", 1.0),
               _row("a", "onnxruntime", "int8", 3.0), _row("b", "onnxruntime", "int8", 3.0, passed=False)]
    found = run_matrix.fastest_within_tolerance(results)
    assert found["best"] is None and found["best_fp32"] is None
