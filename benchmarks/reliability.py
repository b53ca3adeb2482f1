#!/usr/bin/env python3
"""The long versions of tests/test_reliability.py: figures for the README's "Reliability" table.

- ``infer``: ``mgd-rt infer`` over ``--images`` photos, resident memory sampled per output
  written; then SIGINT and SIGTERM mid-batch: time to stop, outputs kept, the resumed run.
- ``serve``: ``mgd-rt serve`` (PyTriton, under the Python 3.12 environment tests/test_triton.py
  builds) loaded by ``--threads`` gRPC clients x ``--requests`` each, a fifth of them bad (wrong
  shape, wrong dtype, garbage bytes, oversized image); every good answer compared with the local
  result, the server's process group's resident memory sampled throughout, by process and kind (anonymous,
  shared, /dev/shm). ``--stand-in`` serves a one-operator stand-in with the same inputs and outputs instead,
  so that tens of thousands of requests measure the server in minutes.
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


def stand_in_model(model: Path, out: Path) -> Path:
    """An .onnx with ``model``'s input, output and metadata whose whole network is one ReduceMean over the
    channels: (B, 3, S, S) float32 -> (B, 1, S, S) float32. Serving it costs what the server costs, with next to
    nothing for the model: a long memory run (60,000 requests) takes minutes instead of hours."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(model, load_external_data=False)
    axes = helper.make_tensor("channels", TensorProto.INT64, [1], [1])
    mean = helper.make_node("ReduceMean", [graph.graph.input[0].name, "channels"], [graph.graph.output[0].name],
                            keepdims=1)
    stand_in = helper.make_model(
        helper.make_graph([mean], "stand_in", [graph.graph.input[0]], [graph.graph.output[0]], initializer=[axes]),
        opset_imports=[helper.make_opsetid("", 20)])  # ReduceMean takes its axes as an input from opset 18
    stand_in.ir_version = graph.ir_version
    for prop in graph.metadata_props:  # image_size, mean, std...: what serve and its clients read
        stand_in.metadata_props.add(key=prop.key, value=prop.value)
    onnx.checker.check_model(stand_in)
    onnx.save(stand_in, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an .onnx graph (the tiny model at S=256 for the README figures)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300, help="per client thread")
    parser.add_argument("--warmup", type=int, default=20,
                        help="warm-up requests per client thread before memory is measured (default 20, as the test)")
    parser.add_argument("--bad-every", type=int, default=5,
                        help="every Nth request of each client is a bad one (default 5: a fifth; 0: none)")
    parser.add_argument("--only", choices=("infer", "serve", "app"), help="one part only")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--serve-bin", type=Path, default=None, metavar="MGD_RT",
                        help="the mgd-rt executable to serve with (default: the Python 3.12 environment's, built "
                        "as tests/test_triton.py does)")
    parser.add_argument("--stand-in", action="store_true",
                        help="serve: a stand-in with MODEL's inputs, outputs and metadata and one ReduceMean for the "
                        "network, so that long runs measure the server, not the model")
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

            serve_bin = args.serve_bin.resolve() if args.serve_bin else None
            if serve_bin is None:
                python = _serve_python()
                serve_bin = _serve_env(python) / "mgd-rt" if python else None
            env = dict(item.split("=", 1) for item in args.serve_env)
            key = "serve" + "".join(f" {k}={v}" for k, v in env.items()) + ("" if args.bad_every else " good only")
            key += " stand-in" if args.stand_in else ""
            if serve_bin is None:
                results[key] = {"skipped": "no Python 3.12 for mgd-rt serve"}
            else:
                (Path(tmp) / "serve").mkdir()
                served = stand_in_model(args.model, Path(tmp) / "stand_in.onnx") if args.stand_in else args.model
                results[key] = serve_under_load(served, Path(tmp) / "serve", serve_bin, args.threads,
                                                args.requests, warm_requests=args.warmup, env_extra=env,
                                                bad_every=args.bad_every)
        if args.only in (None, "app"):
            (Path(tmp) / "app").mkdir()
            results["app"] = app_under_load(args.model, Path(tmp) / "app", args.threads, args.requests,
                                            warm_requests=args.warmup, bad_every=args.bad_every)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
