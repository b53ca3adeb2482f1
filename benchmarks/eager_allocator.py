#!/usr/bin/env python3
"""How much of PyTorch's eager CPU time is glibc returning tensors to the kernel and faulting them back.

glibc's malloc serves allocations above its mmap threshold (128 KiB at first, raised dynamically up to
32 MiB as such blocks are freed) with their own mmap, and gives them back to the kernel on free. Eager
PyTorch allocates every intermediate tensor anew, so B+ at 1024 re-faults its activations on every call
(millions of minor page faults), and how many depends on where the dynamic threshold happens to sit. ONNX
Runtime and OpenVINO keep their own arenas and do not pay it. This benchmark times the eager model in
fresh processes, alternating glibc's defaults with a threshold raised past any tensor
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``: freed blocks stay in the heap and are reused),
and counts the minor page faults of each timed call:

    python3 benchmarks/eager_allocator.py --pairs 3 --name cpu-<kind>-eager-allocator

It writes ``benchmarks/results/<name>.{json,md}`` with the CPU's flags. The environment variables are
glibc's own (``man mallopt``); jemalloc or tcmalloc through ``LD_PRELOAD`` do the same job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # an uninstalled checkout runs too

from mgd_rt.machine import cpu_info, library_version  # noqa: E402

# past any tensor B+ allocates (its largest activations are a few hundred MB), and glibc's 64-bit maximum
RETAINING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32 - 1), "MALLOC_TRIM_THRESHOLD_": str(2**36)}
SETTINGS = {"glibc defaults": {}, "mmap threshold raised": RETAINING_MALLOC}


def time_eager(variant: str, image_size: int, calls: int, threads: int) -> list[dict[str, float]]:
    """In this process: the seeded model's eager forward, one warm-up call, then ``calls`` timed ones, each
    with its minor page faults."""
    import resource

    import numpy as np
    import torch

    from mgd_rt.checkpoint import load_model

    torch.set_num_threads(threads)
    model = load_model(None, variant, image_size)
    image = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, image_size, image_size),
                                                                     dtype=np.float32))
    rows = []
    with torch.inference_mode():
        model(image)
        for _ in range(calls):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            model(image)
            seconds = time.perf_counter() - t0
            rows.append({"seconds": seconds, "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                         - faults})
    return rows


def run_fresh(setting: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """One fresh process under ``setting``'s environment; its timed calls."""
    env = {**os.environ, **SETTINGS[setting]}
    command = [sys.executable, __file__, "--child", "--variant", args.variant, "--image-size", str(args.image_size),
               "--calls", str(args.calls), "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per setting, the median seconds and minor page faults over every timed call of its processes."""
    calls = {setting: [c for r in runs if r["setting"] == setting for c in r["calls"]] for setting in SETTINGS}
    return {setting: {"median_seconds": statistics.median(c["seconds"] for c in rows),
                      "median_minor_faults": statistics.median(c["minor_faults"] for c in rows)}
            for setting, rows in calls.items()}


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"**{cpu['model']}, {cpu['logical_cpus']} logical CPUs (flags: {' '.join(cpu['flags'])})** "
             f"({report['created']}); torch {report['torch']}, {report['variant']} at {report['image_size']}, "
             f"{report['threads']} threads, batch 1", "",
             "| setting | environment | median s / call | calls (s) | minor page faults per call (median) |",
             "|---|---|---|---|---|"]
    for setting, summary in report["summary"].items():
        env = " ".join(f"{k}={v}" for k, v in SETTINGS[setting].items()) or "(none)"
        calls = " ".join(f"{row['seconds']:.2f}" for run in report["runs"] if run["setting"] == setting
                         for row in run["calls"])
        lines.append(f"| {setting} | {env} | {summary['median_seconds']:.2f} | {calls} | "
                     f"{summary['median_minor_faults']:,.0f} |")
    ratio = report["summary"]["glibc defaults"]["median_seconds"] / report["summary"]["mmap threshold raised"][
        "median_seconds"]
    lines += ["", f"Fresh processes alternating the two settings ({report['pairs']} pairs), one warm-up call each, "
              f"then {report['calls']} timed calls. Eager under glibc's defaults takes {ratio:.2f}x the time "
              "with the threshold raised."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="b+")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=4, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pairs", type=int, default=3, help="fresh processes per setting, alternating")
    parser.add_argument("--name", help="write benchmarks/results/<name>.{json,md}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_eager(args.variant, args.image_size, args.calls, args.threads)))
        return 0
    runs = []
    for pair in range(args.pairs):
        for setting in SETTINGS:
            calls = run_fresh(setting, args)
            runs.append({"setting": setting, "pair": pair, "calls": calls})
            print(f"{setting:22s} pair {pair + 1}: " + " ".join(
                f"{c['seconds']:.2f}s/{c['minor_faults'] / 1e3:.0f}k faults" for c in calls), flush=True)
    cpu = cpu_info()
    summary = summarize(runs)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "variant": args.variant,
              "image_size": args.image_size, "threads": args.threads, "calls": args.calls, "pairs": args.pairs,
              "torch": library_version("torch"), "cpu": {**cpu, "flags": sorted(cpu.get("flags", []))},
              "settings": SETTINGS, "runs": runs, "summary": summary}
    text = markdown(report)
    print(text)
    if args.name:
        out = HERE / "results" / args.name
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
