"""Fault injection and measurement shared by tests/test_reliability.py (short runs) and
benchmarks/reliability.py (the long runs behind the README's "Reliability" figures).

Everything here drives real processes: ``mgd-rt`` children, their resident memory read from
/proc, a real server loaded by client threads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_sigint() -> None:
    # a shell starts background jobs with SIGINT ignored, children inherit that, and Python then installs
    # no KeyboardInterrupt handler: the child gets SIGINT's default disposition, as in a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def mgd_rt(*args: str | Path, preexec_fn: Callable[[], None] | None = None, **popen: object) -> subprocess.Popen:
    """``mgd-rt ARGS`` as a child process of this Python (the console script's code path), with SIGINT as a
    terminal gives it even when the tests run in the background; ``preexec_fn`` runs after that."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def setup() -> None:
        _default_sigint()
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "mgd_rt.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=setup, **popen)


def make_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` PNG photos of varied sizes (noise: every output differs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = int(rng.integers(60, 240)), int(rng.integers(60, 240))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"p{i:03d}.png")
    return folder


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files included) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc (Linux); 0 once it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)


def memory_kinds(pid: int) -> dict[str, int]:
    """Resident bytes of one process by kind, from /proc/PID/status: ``rss`` (all of it), ``anon`` (heap,
    stacks: what malloc holds), ``file`` (mapped libraries) and ``shmem`` (touched pages of shared memory,
    e.g. /dev/shm regions; counted again in every process mapping them). Empty once it has gone."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    found = {}
    for line in lines:
        words = line.split()  # "VmRSS:   186396 kB"
        if words and words[0] in fields:
            found[fields[words[0]]] = int(words[1]) * 1024
    return found


def process_role(pid: int, leader: int) -> str:
    """What a process of a server's group is: ``mgd-rt`` (the leader, holding the model), ``tritonserver``,
    ``stub`` (Triton's Python-backend stub), ``tensor store`` (PyTriton's multiprocessing manager),
    ``resource tracker``, else its command name."""
    if pid == leader:
        return "mgd-rt"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    if comm == "tritonserver":
        return "tritonserver"
    if comm.startswith("triton_python_b"):  # comm is cut at 15 characters
        return "stub"
    if b"multiprocessing.spawn" in cmdline:
        return "tensor store"
    if b"resource_tracker" in cmdline:
        return "resource tracker"
    return comm


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group ``pgid`` (a server and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                found.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _dev_shm_bytes(pids: list[int]) -> dict[str, int]:
    """Bytes of /dev/shm actually allocated (tmpfs pages, not the files' nominal sizes) by the files
    ``pids`` map, each counted once: ``/dev/shm`` (all of them), ``/dev/shm backend`` (Triton's
    Python-backend region, which PyTriton names ``pytrtion<pid>-...``) and ``backend region size``
    (that region's nominal size: it grows when a request does not fit)."""
    files: set[str] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        files.update(m.group(1) for m in re.finditer(r" (/dev/shm/\S+)$", maps, re.MULTILINE))
    found = {"/dev/shm": 0, "/dev/shm backend": 0, "backend region size": 0}
    for name in files:
        try:
            stat = os.stat(name)
        except FileNotFoundError:  # unlinked meanwhile (shown as "(deleted)" in maps)
            continue
        found["/dev/shm"] += stat.st_blocks * 512
        if Path(name).name.startswith("pytrtion"):  # sic: PyTriton's spelling
            found["/dev/shm backend"] += stat.st_blocks * 512
            found["backend region size"] += stat.st_size
    return found


def _malloc_env(pgid: int, role: str) -> dict[str, str]:
    """The glibc allocator settings (MALLOC_*) in the environment of the group's process of ``role``."""
    for pid in group_pids(pgid):
        if process_role(pid, pgid) == role:
            try:
                entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            pairs = (e.decode(errors="replace").split("=", 1) for e in entries if e.startswith(b"MALLOC_"))
            return {name: value for name, value in pairs}
    return {}


def group_memory(pgid: int) -> dict[str, int]:
    """Resident bytes of a server's process group, flat: ``group`` (the sum of every process's RSS),
    ``ROLE`` (its RSS, summed over processes of that role, see :func:`process_role`), ``ROLE anon``
    and ``ROLE shmem`` (see :func:`memory_kinds`), and the group's /dev/shm (see :func:`_dev_shm_bytes`)."""
    pids = group_pids(pgid)
    found: dict[str, int] = {"group": 0}
    for pid in pids:
        kinds = memory_kinds(pid)
        if not kinds:
            continue
        role = process_role(pid, pgid)
        found["group"] += kinds["rss"]
        for key, kind in ((role, "rss"), (f"{role} anon", "anon"), (f"{role} shmem", "shmem")):
            found[key] = found.get(key, 0) + kinds.get(kind, 0)
    found.update(_dev_shm_bytes(pids))
    return found


def infer_memory_profile(model: Path, folder: Path, out: Path, every: float = 0.05) -> list[tuple[int, int]]:
    """Run ``mgd-rt infer`` over ``folder``; (outputs written, resident bytes) sampled while it runs."""
    proc = mgd_rt("infer", model, folder, "-o", out)
    samples: list[tuple[int, int]] = []
    while proc.poll() is None:
        rss = rss_bytes(proc.pid)
        if rss:
            samples.append((sum(1 for _ in out.glob("*.png")) if out.is_dir() else 0, rss))
        time.sleep(every)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"mgd-rt infer exited with {proc.returncode}: {err}")
    return samples


def memory_growth(samples: list[tuple[int, int]], total: int, warm: float = 0.25) -> tuple[int, int, float]:
    """(resident bytes after warm-up, the peak after it, the growth as a fraction): warm-up ends when
    ``warm`` of the ``total`` units of work are done."""
    after = [rss for done, rss in samples if done >= warm * total]
    return after[0], max(after), max(after) / after[0] - 1


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / max latency in milliseconds."""
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


class LoadResult:
    """What a load run saw: good answers right and wrong, bad requests refused and accepted, latencies,
    and (done, :func:`group_memory`) samples of the server."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.good_ok = 0
        self.good_wrong: list[str] = []
        self.bad_refused = 0
        self.bad_accepted: list[str] = []
        self.latencies: list[float] = []
        self.memory: list[tuple[int, dict[str, int]]] = []
        self.seconds = 0.0

    @property
    def done(self) -> int:
        return self.good_ok + len(self.good_wrong) + self.bad_refused + len(self.bad_accepted)

    def summary(self) -> dict[str, object]:
        return {
            "good_ok": self.good_ok, "good_wrong": len(self.good_wrong), "bad_refused": self.bad_refused,
            "bad_accepted": len(self.bad_accepted), "seconds": round(self.seconds, 2),
            "good_per_second": round(self.good_ok / self.seconds, 2) if self.seconds else 0.0,
            **{k: round(v, 1) for k, v in percentiles(self.latencies).items()},
            "first_errors": (self.good_wrong + self.bad_accepted)[:3],
        }


def run_load(
    threads: int, requests: int, good: Callable[[int, int], bool], bad: Callable[[int, int], bool],
    bad_every: int, memory_of: Callable[[], dict[str, int]], every: float = 0.25,
) -> LoadResult:
    """``threads`` client threads x ``requests`` each; request ``i`` of thread ``k`` is bad when
    ``i % bad_every == bad_every - 1`` (a fifth of them with 5; none with 0). ``good(k, i)`` returns whether the answer
    was right, ``bad(k, i)`` whether the server refused it; an exception in either counts as a failure.
    ``memory_of()`` (the server's resident bytes by key) is sampled every ``every`` seconds meanwhile."""
    result = LoadResult()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            done = result.done  # before the read: the sample shows at least this much work
            result.memory.append((done, memory_of()))
            stop.wait(every)

    def client(k: int) -> None:
        for i in range(requests):
            is_bad = bad_every > 0 and i % bad_every == bad_every - 1
            t0 = time.perf_counter()
            try:
                ok = bad(k, i) if is_bad else good(k, i)
                error = "" if ok else "wrong answer" if not is_bad else "accepted"
            except Exception as exc:  # counted, reported in the summary
                ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
            elapsed = time.perf_counter() - t0
            with result.lock:
                if is_bad:
                    if ok:
                        result.bad_refused += 1
                    else:
                        result.bad_accepted.append(f"thread {k} request {i}: {error}")
                else:
                    result.latencies.append(elapsed)
                    if ok:
                        result.good_ok += 1
                    else:
                        result.good_wrong.append(f"thread {k} request {i}: {error}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result.seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    result.memory.append((result.done, memory_of()))
    return result


def thin(samples: list[tuple[int, int]], keep: int = 40) -> list[tuple[int, float]]:
    """About ``keep`` of the (done, resident bytes) samples, in MB: the curve, small enough to read."""
    return [(done, round(rss / 2**20, 1)) for done, rss in samples[:: max(len(samples) // keep, 1)]]


def memory_figures(samples: list[tuple[int, dict[str, int]]], keep: int = 40) -> dict[str, object]:
    """Memory figures of a load run from its (done, :func:`group_memory`) samples, all taken after the warm-up.

    Per key, in MB: the first sample (``memory_mb_after_warmup``), the peak and the last; ``memory_growth``
    = peak / first - 1; ``memory_growth_second_half`` = the second half's peak / the first half's peak - 1
    (about 0 once a series has levelled off, about half the whole growth if it climbs steadily); and the
    curve, ``memory_mb_by_request``: about ``keep`` samples as columns (``requests`` and one list per key).
    Growth is left out for keys that start at 0 (shared memory not touched yet)."""
    keys = sorted({key for _, memory in samples for key in memory})
    total = samples[-1][0]
    first_half = [m for done, m in samples if done <= total / 2]
    second_half = [m for done, m in samples if done > total / 2] or first_half

    def peak(part: list[dict[str, int]], key: str) -> int:
        return max(m.get(key, 0) for m in part)

    def mb(value: int) -> float:
        return round(value / 2**20, 1)

    start = samples[0][1]
    curve = samples[:: max(len(samples) // keep, 1)]
    if curve[-1] is not samples[-1]:  # the curve ends where the run did
        curve.append(samples[-1])
    return {
        "memory_mb_after_warmup": {k: mb(start.get(k, 0)) for k in keys},
        "memory_mb_peak": {k: mb(peak([m for _, m in samples], k)) for k in keys},
        "memory_mb_at_end": {k: mb(samples[-1][1].get(k, 0)) for k in keys},
        "memory_growth": {k: round(peak([m for _, m in samples], k) / start[k] - 1, 4) for k in keys
                          if start.get(k)},
        "memory_growth_second_half": {k: round(peak(second_half, k) / peak(first_half, k) - 1, 4) for k in keys
                                      if peak(first_half, k)},
        "memory_mb_by_request": {"requests": [done for done, _ in curve],
                                 **{k: [mb(m.get(k, 0)) for _, m in curve] for k in keys}},
    }


def _load_figures(proc: subprocess.Popen, threads: int, requests: int, warm_requests: int, bad_every: int,
                  good: Callable[[int, int], bool], bad: Callable[[int, int], bool],
                  sample_every: float = 0.5, prime: Callable[[], None] | None = None) -> dict[str, object]:
    """``prime()`` (if given), a warm-up, then the load. Resident memory of the server's whole process group,
    by process (see :func:`group_memory`), sampled every ``sample_every`` seconds of the load (every 0.25 s of
    the warm-up).

    Growth compares like with like, so that requests in flight (their buffers are real memory, but come back)
    do not read as growth: ``group_rss_growth`` is the group idle after the load against idle after the
    warm-up (what the load left behind), ``group_rss_peak_growth`` the peak under load against the peak under
    the warm-up's load. ``rss_growth``: the mgd-rt process's (the one holding the model) peak under the
    load against its first sample after the warm-up."""
    def memory() -> dict[str, int]:
        return group_memory(proc.pid)

    if prime is not None:
        prime()
    warm = run_load(threads, warm_requests, good, bad, 5, memory)  # every bad kind early
    load = run_load(threads, requests, good, bad, bad_every, memory, every=sample_every)
    figures = memory_figures(load.memory)
    idle_before, idle_after = warm.memory[-1][1]["group"], load.memory[-1][1]["group"]  # sampled after join()
    peak_warm = max(m["group"] for _, m in warm.memory)
    peak_load = max(m["group"] for _, m in load.memory)
    return {"threads": threads, "requests_per_thread": requests, "warmup": warm.summary(), **load.summary(),
            "rss_after_warmup_mb": figures["memory_mb_after_warmup"]["mgd-rt"],
            "rss_peak_mb": figures["memory_mb_peak"]["mgd-rt"], "rss_growth": figures["memory_growth"]["mgd-rt"],
            "group_rss_mb_after_warmup": round(idle_before / 2**20, 1),
            "group_rss_mb_at_end": round(idle_after / 2**20, 1),
            "group_rss_growth": round(idle_after / idle_before - 1, 4),
            "group_rss_mb_peak_warmup": round(peak_warm / 2**20, 1), "group_rss_mb_peak": round(peak_load / 2**20, 1),
            "group_rss_peak_growth": round(peak_load / peak_warm - 1, 4), **figures}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> int | None:
    """SIGTERM to a server's process group, SIGKILL to what is left after 30 s; its exit code."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    code = proc.poll()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children (tritonserver, its stubs) that outlived it
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    return code


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, seconds: float) -> None:
    """Poll ``ready()`` until it is true; AssertionError with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.args[:3]} was not ready within {seconds:g} s")
        time.sleep(0.5)


def serve_under_load(model: Path, work: Path, serve_bin: Path, threads: int, requests: int,
                     warm_requests: int = 5, env_extra: dict[str, str] | None = None, bad_every: int = 5,
                     ) -> dict[str, object]:
    """``mgd-rt serve MODEL`` (``serve_bin``: the mgd-rt of a Python 3.12 environment) loaded by ``threads``
    gRPC clients; a fifth of the requests bad in turn: wrong shape, wrong dtype, garbage bytes (HTTP),
    an oversized image. Good answers are compared with the local ONNX Runtime result."""
    import urllib.error
    import urllib.request

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
    from mgd_rt.numerics import TOLERANCES, compare_logits
    from mgd_rt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    http, grpc, metrics = free_port(), free_port(), free_port()
    max_batch = 4
    local = OnnxRuntimeBackend(model)
    size = local.image_size
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(8)]
    expected = [local.infer(x) for x in inputs]
    local.close()
    with open(work / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [str(serve_bin), "serve", str(model), "--address", "127.0.0.1", "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", str(max_batch)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work,
            env={**os.environ, "PYTHONPATH": "", **(env_extra or {})})
    clients = [grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}") for _ in range(threads)]

    def send(k: int, array: np.ndarray, dtype: str = "FP32") -> np.ndarray:
        request = grpcclient.InferInput(INPUT_NAME, list(array.shape), dtype)
        request.set_data_from_numpy(array)
        return clients[k].infer("mgd_sam2", [request]).as_numpy(OUTPUT_NAME)

    def good(k: int, i: int) -> bool:
        j = (k + i) % len(inputs)
        return compare_logits(expected[j], send(k, inputs[j]), TOLERANCES["fp32"], name=f"{k}/{i}")

    def prime() -> None:
        """One request of every batch size up to --max-batch: the model's memory for the largest batch is
        allocated before memory is measured, whatever batches the dynamic batcher happens to form later."""
        for b in range(1, max_batch + 1):
            answer = send(0, np.concatenate(inputs[:b]))
            if not compare_logits(np.concatenate(expected[:b]), answer, TOLERANCES["fp32"], name=f"batch {b}"):
                raise AssertionError(f"a batch of {b} was answered wrongly")

    def bad(k: int, i: int) -> bool:
        kind = (i // 5 + k) % 4
        try:
            if kind == 0:
                send(k, np.zeros((1, 3, size, size // 2), np.float32))
            elif kind == 1:
                send(k, np.zeros((1, 3, size, size), np.float16), "FP16")
            elif kind == 2:  # not an inference request at all
                garbage = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/mgd_sam2/infer",
                                                 data=os.urandom(4096), method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(garbage, timeout=60) as answer:
                        raise AssertionError(f"garbage answered {answer.status}: {answer.read(200)!r}")
                except urllib.error.HTTPError as exc:
                    # tritonserver itself answers 500 "failed to parse the request JSON buffer"
                    return exc.code >= 400 and b"parse" in exc.read()
            else:
                send(k, np.zeros((1, 3, 2 * size, 2 * size), np.float32))
        except InferenceServerException:
            return True
        return False

    try:
        def ready() -> bool:
            try:
                return clients[0].is_model_ready("mgd_sam2")
            except InferenceServerException:  # not listening yet
                return False

        wait_ready(proc, ready, work / "serve.log", 300)
        figures = _load_figures(proc, threads, requests, warm_requests, bad_every, good, bad, prime=prime)
        figures["serving_after_load"] = clients[0].is_model_ready("mgd_sam2")
        figures["tritonserver_malloc_env"] = _malloc_env(proc.pid, "tritonserver")
    finally:
        for c in clients:
            c.close()
        code = stop_group(proc)
    return {**figures, "env": env_extra or {}, "exit_code_on_sigterm": code}


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def app_under_load(model: Path, work: Path, threads: int, requests: int, warm_requests: int = 5,
                   bad_every: int = 5) -> dict[str, object]:
    """``mgd-rt app MODEL`` (no answer cache: every good request runs the model) loaded by ``threads``
    HTTP clients; a fifth of the requests bad in turn: garbage bytes, a truncated PNG, too many pixels,
    too many bytes, a bad query. Good mattes are compared with the local Segmenter's (batching may move
    a value by one step)."""
    import http.client

    from mgd_rt.runtime import Segmenter

    photos_rng = np.random.default_rng(1)
    photos = [photos_rng.integers(0, 256, (int(photos_rng.integers(80, 200)), int(photos_rng.integers(80, 200)), 3),
                                  dtype=np.uint8) for _ in range(16)]
    with Segmenter(model) as seg:
        expected = [next(seg.stream([p])).matte() for p in photos]
    bodies = [png_bytes(p) for p in photos]
    too_many_pixels = png_bytes(np.zeros((1100, 1000, 3), np.uint8))  # over --max-pixels 1000000, tiny in bytes
    too_many_bytes = os.urandom(2_100_000)  # over --max-bytes 2000000
    port = free_port()
    with open(work / "app.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mgd_rt.cli", "app", str(model), "--port", str(port), "--max-batch", "4",
             "--cache-mb", "0", "--max-pixels", "1000000", "--max-bytes", "2000000"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    def post(body: bytes, query: str = "format=matte") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", f"/v1/segment?{query}", body=body, headers={"Content-Type": "image/png"})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def good(k: int, i: int) -> bool:
        import io

        j = (k * requests + i) % len(photos)
        status, content = post(bodies[j])
        if status != 200:
            return False
        matte = np.asarray(Image.open(io.BytesIO(content)))
        return matte.shape == expected[j].shape and int(np.abs(matte.astype(int) - expected[j]).max()) <= 1

    def bad(k: int, i: int) -> bool:
        kind = (i // 5 + k) % 5
        body, query, wanted = [
            (os.urandom(4096), "format=matte", 422),
            (bodies[0][: len(bodies[0]) // 2], "format=matte", 422),
            (too_many_pixels, "format=matte", 413),
            (too_many_bytes, "format=matte", 413),
            (bodies[0], "format=jpeg", 422),
        ][kind]
        return post(body, query)[0] == wanted

    try:
        def ready() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/health")
                return conn.getresponse().status == 200
            except OSError:  # not listening yet
                return False

        wait_ready(proc, ready, work / "app.log", 120)
        figures = _load_figures(proc, threads, requests, warm_requests, bad_every, good, bad)
        figures["serving_after_load"] = post(bodies[0])[0] == 200
    finally:
        code = stop_group(proc)
    return {**figures, "exit_code_on_sigterm": code}
