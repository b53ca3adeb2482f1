"""``mgd-rt infer --watch``: keep segmenting files as they arrive in the input folders, until Ctrl-C.

Each poll lists the inputs as ``infer`` does. A file is taken once it is complete: its size and
modification time were the same at the previous poll (a copy in progress keeps changing) and it
is not empty; decoding it is the final check. Every file is handled once per version: done,
skipped (its output exists) or failed; a failure is reported once and tried again only if the
file changes. Outputs go through the same :func:`mgd_rt.runtime.infer.run_jobs` as a batch.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.infer import (
    STDIO,
    InferSummary,
    Outputs,
    Progress,
    collect_inputs,
    plan_outputs,
    prepare_outdir,
    run_jobs,
)
from mgd_rt.runtime.segmenter import Segmenter


def _version(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns), or None when the file vanished between the listing and now."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def watch(
    seg: Segmenter,
    inputs: list[str | Path],
    outdir: str | Path,
    outputs: Outputs | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    progress: TextIO | None = None,
    on_message: Callable[[str], None] | None = None,
) -> InferSummary:
    """Segment files under ``inputs`` into ``outdir`` as they arrive, every ``poll`` seconds, until
    Ctrl-C or ``stop`` is set; returns what was done. ``overwrite`` replaces outputs of files present
    at the start; a file that changes later is segmented again (its output replaced only with it)."""
    outputs = outputs or Outputs()
    if STDIO in map(str, inputs) or outputs.to_stdout:
        raise MgdRtError("--watch reads folders and writes files: leave out -")
    if poll <= 0:
        raise MgdRtError(f"--poll {poll}: must be positive")
    outdir = Path(outdir)
    prepare_outdir(outdir)
    stop = stop or threading.Event()
    bar = Progress(0, progress or sys.stderr)
    bar.enabled = False  # a bar has no total to show when files keep coming
    say = on_message or bar.message
    summary = InferSummary(failed=[], backend=seg.describe(), precision=seg.backend.precision)
    reported: set[str] = set()

    def fail(line: str) -> None:
        summary.failed.append(line)
        say(f"mgd-rt: error: {line}")

    def fail_once(line: str) -> None:  # a listing problem stays until fixed: say it once
        if line not in reported:
            reported.add(line)
            fail(line)

    seen: dict[Path, tuple[int, int] | None] = {}  # each file's version at the previous poll
    handled: dict[Path, tuple[int, int] | None] = {}  # the version last done, skipped or failed
    say(f"mgd-rt: watching {', '.join(map(str, inputs))} (Ctrl-C to stop)")
    start = time.perf_counter()
    try:
        while not stop.is_set():
            jobs, problems = collect_inputs(inputs, recursive)
            for line in problems:
                fail_once(line)
            versions = {job.source: _version(job.source) for job in jobs}
            ready = [job for job in jobs if versions[job.source] is not None and versions[job.source][0] > 0
                     and versions[job.source] == seen.get(job.source)
                     and handled.get(job.source) != versions[job.source]]
            seen = versions
            if ready:
                todo, skipped = plan_outputs(ready, outdir, outputs.format, overwrite, fail_once, outputs.frames)
                summary.skipped += skipped
                overwrite = False  # later rounds: files already handled are not redone
                run_jobs(seg, todo, summary, fail, bar, outputs, lambda line: None)
                for job in ready:
                    handled[job.source] = versions[job.source]
            stop.wait(poll)
    except KeyboardInterrupt:
        say("mgd-rt: stopped watching")
    summary.seconds = time.perf_counter() - start
    return summary
