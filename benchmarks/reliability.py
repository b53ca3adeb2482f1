#!/usr/bin/env python3
"""The long versions of tests/test_reliability.py: figures for the README's "Reliability" table.

- ``infer``: ``mgd-rt infer`` over ``--images`` photos, resident memory sampled per output
  written; then SIGINT and SIGTERM mid-batch: time to stop, outputs kept, the resumed run.
- ``serve``: ``mgd-rt serve`` (PyTriton, under the Python 3.12 environment tests/test_triton.py
  builds) loaded by ``--threads`` gRPC clients x ``--requests`` each, a fifth of them bad (wrong
  shape, wrong dtype, garbage bytes, oversized image); every good answer compared with the local
  result, the server's process group's resident memory sampled throughout.
- ``app``: ``mgd-rt app`` the same way over HTTP (garbage bytes, a truncated PNG, too many pixels,
  too many bytes, a bad query).

    python3 benchmarks/reliability.py MODEL.onnx --images 300 --threads 4 --requests 300

Writes benchmarks/results/reliability.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # an uninstalled checkout runs too
sys.path.insert(0, str(HERE.parent / "tests"))  # the fault-injection helpers the tests use

from reliability_helpers import (  # noqa: E402
    app_under_load,
    infer_memory_profile,
    make_photos,
    memory_growth,
    mgd_rt,
    serve_under_load,
    thin,
)


def infer_figures(model: Path, images: int, work: Path) -> dict[str, object]:
    """Long-run memory of ``mgd-rt infer``, and SIGINT / SIGTERM mid-batch then a resumed run."""
    photos = make_photos(work / "photos", 24)
    many = work / "many"
    many.mkdir()
    for i in range(images):  # the same photos again under new names: a long run
        shutil.copyfile(photos / f"p{i % 24:03d}.png", many / f"q{i:04d}.png")
    t0 = time.perf_counter()
    samples = infer_memory_profile(model, many, work / "out-long")
    seconds = time.perf_counter() - t0
    start, peak, growth = memory_growth(samples, images)
    figures: dict[str, object] = {
        "long_run": {"images": images, "seconds": round(seconds, 1), "rss_after_warmup_mb": round(start / 2**20, 1),
                     "rss_peak_mb": round(peak / 2**20, 1), "rss_growth": round(growth, 4),
                     "rss_mb_by_output": thin(samples)},
    }
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = work / f"out-{sig.name}"
        proc = mgd_rt("infer", model, many, "-o", out)
        while len(list(out.glob("*.png"))) < 10:
            time.sleep(0.02)
        sent = time.perf_counter()
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        stopped = time.perf_counter() - sent
        kept = len(list(out.glob("*.png")))
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
        again = mgd_rt("infer", model, many, "-o", out)
        text, _ = again.communicate(timeout=1800)
        figures[sig.name] = {"exit_code": proc.returncode, "stop_seconds": round(stopped, 3), "outputs_kept": kept,
                             "temporary_files_left": len(leftovers), "resume_exit_code": again.returncode,
                             "resume_summary": text.strip().splitlines()[-1]}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an .onnx graph (the tiny model at S=256 for the README figures)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300, help="per client thread")
    parser.add_argument("--bad-every", type=int, default=5,
                        help="every Nth request of each client is a bad one (default 5: a fifth; 0: none)")
    parser.add_argument("--only", choices=("infer", "serve", "app"), help="one part only")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "reliability.json")
    args = parser.parse_args()
    args.model = args.model.resolve()  # the server runs in a folder of its own
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                  "model": args.model.name}
    if args.output.exists():  # keep the other part's figures when one part is rerun
        results = {**json.loads(args.output.read_text()), **results}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "infer"):
            results["infer"] = infer_figures(args.model, args.images, Path(tmp) / "infer")
        if args.only in (None, "serve"):
            from test_triton import _serve_env, _serve_python

            python = _serve_python()
            env = dict(item.split("=", 1) for item in args.serve_env)
            key = "serve" + "".join(f" {k}={v}" for k, v in env.items()) + ("" if args.bad_every else " good only")
            if python is None:
                results[key] = {"skipped": "no Python 3.12 for mgd-rt serve"}
            else:
                (Path(tmp) / "serve").mkdir()
                results[key] = serve_under_load(args.model, Path(tmp) / "serve", _serve_env(python) / "mgd-rt",
                                                args.threads, args.requests, env_extra=env, bad_every=args.bad_every)
        if args.only in (None, "app"):
            (Path(tmp) / "app").mkdir()
            results["app"] = app_under_load(args.model, Path(tmp) / "app", args.threads, args.requests,
                                            bad_every=args.bad_every)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
