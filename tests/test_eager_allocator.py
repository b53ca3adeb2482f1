"""benchmarks/eager_allocator.py: the summary and report of its fresh-process runs (the timing itself is the
benchmark's job, not a test's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "eager_allocator.py"


@pytest.fixture(scope="module")
def eager_allocator():
    spec = importlib.util.spec_from_file_location("eager_allocator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["eager_allocator"] = module
    spec.loader.exec_module(module)
    return module


def test_summary_and_report(eager_allocator):
    """Medians over every call of every process of a setting; the report's rows and its ratio follow from them."""
    runs = [{"setting": "glibc defaults", "pair": 0, "calls": [{"seconds": 5.0, "minor_faults": 2_500_000},
                                                                {"seconds": 5.4, "minor_faults": 2_900_000}]},
            {"setting": "mmap threshold raised", "pair": 0, "calls": [{"seconds": 3.6, "minor_faults": 30_000},
                                                                       {"seconds": 3.5, "minor_faults": 0}]},
            {"setting": "glibc defaults", "pair": 1, "calls": [{"seconds": 5.2, "minor_faults": 2_600_000}]},
            {"setting": "mmap threshold raised", "pair": 1, "calls": [{"seconds": 3.7, "minor_faults": 0}]}]
    summary = eager_allocator.summarize(runs)
    assert summary == {"glibc defaults": {"median_seconds": 5.2, "median_minor_faults": 2_600_000},
                       "mmap threshold raised": {"median_seconds": 3.6, "median_minor_faults": 0}}
    report = {"cpu": {"model": "Some CPU", "logical_cpus": 2, "flags": ["avx2", "fma"]}, "created": "now",
              "torch": "2.14.1", "variant": "b+", "image_size": 1024, "threads": 2, "calls": 2, "pairs": 2,
              "runs": runs, "summary": summary}
    text = eager_allocator.markdown(report)
    assert "| glibc defaults | (none) | 5.20 | 5.00 5.40 5.20 | 2,600,000 |" in text
    assert ("| mmap threshold raised | MALLOC_MMAP_THRESHOLD_=4294967295 MALLOC_TRIM_THRESHOLD_=68719476736 | 3.60 | "
            "3.60 3.50 3.70 | 0 |") in text
    assert "glibc's defaults takes 1.44x the time with the threshold raised" in text
