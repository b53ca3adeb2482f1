"""``infer``: segment files, folders and globs into an output tree (``mgd-rt infer``).

A thin loop over :meth:`Segmenter.stream`: decoding runs ahead in background threads, the
model runs in the caller's thread, encoding and writing run in a writer thread. A bad file
costs one line naming it, never the batch; nothing is written for it. Videos go frame by frame
through the same Segmenter (:mod:`mgd_rt.runtime.video`); ``-`` reads one image from stdin and
an output directory ``-`` writes the single output to stdout.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.compose import Cutout
from mgd_rt.runtime.image_io import IMAGE_SUFFIXES, decode_image
from mgd_rt.runtime.outputs import FORMATS, write_failure, write_result, write_result_stream
from mgd_rt.runtime.segmenter import Result, Segmenter
from mgd_rt.runtime.video import VIDEO_SUFFIXES, is_video, segment_video, video_target

_MAGIC = set("*?[")
STDIO = "-"  # as an input: one image from stdin; as the output directory: the output to stdout
_MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES


@dataclass
class Job:
    """One input file and where its output goes (relative to the output directory)."""

    source: Path
    relative: Path

    @property
    def is_video(self) -> bool:
        """A clip (by suffix); ``-`` (stdin) is always one image."""
        return self.source != Path(STDIO) and is_video(self.source)


@dataclass
class InferSummary:
    """What a run did; ``failed`` lists one line per problem."""

    done: int = 0
    skipped: int = 0  # outputs that existed (kept without --overwrite)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    precision: str = ""
    windows_total: int = 0
    windows_run: int = 0
    written: list[Path] = field(default_factory=list)
    frames: int = 0  # video frames segmented
    clips: int = 0  # videos done (counted in ``done`` too)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        windows = f", windows run {self.windows_run}/{self.windows_total}" if self.windows_total else ""
        windows += f", {self.frames} video frames" if self.frames else ""
        verdict = "ok" if not self.failed else "FAILED"
        # a clip is one of "done" but many frames, so its speed is frames/s; a mixed run shares its time
        per_s = 1 / self.seconds if self.seconds > 0 else 0.0
        speed = [f"{(self.done - self.clips) * per_s:.2f} images/s"] if self.done > self.clips or not self.frames \
            else []
        speed += [f"{self.frames * per_s:.2f} frames/s"] if self.frames else []
        return (f"{verdict}: {self.done} done, {self.skipped} skipped (exist), {len(self.failed)} failed in "
                f"{self.seconds:.1f} s ({', '.join(speed)}); {self.backend}, "
                f"precision {self.precision}{windows}")


def collect_inputs(
    inputs: list[str | Path], recursive: bool = False, videos: bool = True
) -> tuple[list[Job], list[str]]:
    """Files, folders and globs -> jobs with the relative output path, plus problems found.

    A folder's images keep their path relative to it; a glob's, relative to the part of the
    pattern before the first wildcard; a single file, its name.
    """
    jobs: list[Job] = []
    problems: list[str] = []
    suffixes = _MEDIA_SUFFIXES if videos else IMAGE_SUFFIXES  # what a folder scan picks up

    def scan(folder: Path) -> None:
        try:
            entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
        except OSError as exc:
            problems.append(f"{folder}: cannot list folder ({exc.strerror})")
            return
        for entry in entries:
            if entry.suffix.lower() not in suffixes or entry.name.startswith("."):
                continue
            if entry.is_dir():
                if not recursive:
                    problems.append(f"{entry}: is a directory named like an image; skipped (use --recursive to "
                                    "enter it)")
                continue
            jobs.append(Job(entry, entry.relative_to(folder)))

    for item in map(str, inputs):
        if item == STDIO:
            jobs.append(Job(Path(STDIO), Path("stdin")))
        elif any(c in _MAGIC for c in item):
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                problems.append(f"{item}: no file matches this pattern")
            prefix = item[: min(item.index(c) for c in _MAGIC if c in item)]  # before the first wildcard
            base = Path(prefix) if prefix.endswith(("/", os.sep)) else Path(prefix).parent
            for m in map(Path, matches):
                if m.is_dir():
                    if m.suffix.lower() in IMAGE_SUFFIXES:
                        problems.append(f"{m}: is a directory named like an image; skipped")
                    continue
                try:
                    rel = m.relative_to(base)
                except ValueError:
                    rel = Path(m.name)
                jobs.append(Job(m, rel))
        else:
            path = Path(item)
            if path.is_dir():
                scan(path)
            elif path.exists():
                jobs.append(Job(path, Path(path.name)))
            else:
                problems.append(f"{path}: no such file or folder")
    return jobs, problems


class Progress:
    """A one-line progress bar with images/s on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.enabled = stream.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, failed: int) -> None:
        if not self.enabled:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 30
        filled = int(width * (done + failed) / max(self.total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done + failed}/{self.total} "
                          f"{rate:.2f} images/s, {failed} failed ")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")  # clear the bar so the message gets its own line
        print(text, file=self.stream)


def prepare_outdir(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MgdRtError(f"{outdir}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise MgdRtError(f"{outdir}: the output directory is not writable; choose another with -o")


def output_path(job: Job, outdir: Path, format: str, frames: bool = False) -> Path:
    """Where ``job``'s output goes: the format's suffix for an image, its video form (or a frame
    folder) for a clip."""
    if job.is_video:
        return outdir / video_target(job.relative, format, frames)
    return outdir / job.relative.with_suffix(FORMATS[format])


def plan_outputs(
    jobs: list[Job], outdir: Path, format: str, overwrite: bool, fail: Callable[[str], None], frames: bool = False
) -> tuple[list[tuple[Job, Path]], int]:
    """Decide every output path before any work: (jobs to run with their target, outputs kept).

    Skips existing outputs unless ``overwrite``; never writes onto an input or twice to one
    path (each such job is reported through ``fail``). Shared with :mod:`mgd_rt.serve.ray_data`.
    """
    inputs_resolved = {j.source.resolve() for j in jobs}
    claimed: dict[Path, Path] = {}
    todo: list[tuple[Job, Path]] = []
    skipped = 0
    for job in jobs:
        target = output_path(job, outdir, format, frames)
        resolved = target.resolve()
        if resolved in inputs_resolved:
            fail(f"{job.source}: its output {target} would overwrite an input; choose another -o")
        elif resolved in claimed:
            fail(f"{job.source}: output {target} is already the output of {claimed[resolved]}; rename one of them")
        elif target.exists() and not overwrite:
            skipped += 1
        else:
            claimed[resolved] = job.source
            todo.append((job, target))
    return todo, skipped



def start_job(
    inputs: list[str | Path], outdir: Path, recursive: bool, format: str, overwrite: bool,
    say: Callable[[str], None], frames: bool = False, videos: bool = True,
) -> tuple[list[tuple[Job, Path]], InferSummary, Callable[[str], None]]:
    """Collect the inputs, make ``outdir`` and plan each output; every problem goes to ``say``.

    Returns the (job, target) pairs to run, the summary so far and the ``fail`` callback that
    records one more failed file. ``outdir`` ``-`` (stdout) takes exactly one image. ``videos``
    False: folder scans take images only (Ray Data's per-image pipeline). Shared with
    :mod:`mgd_rt.serve.ray_data`.
    """
    jobs, problems = collect_inputs(inputs, recursive, videos)
    summary = InferSummary(failed=[])

    def fail(line: str) -> None:
        summary.failed.append(line)
        say(f"mgd-rt: error: {line}")

    for line in problems:
        fail(line)
    if str(outdir) == STDIO:
        if len(jobs) != 1 or jobs[0].is_video:
            raise MgdRtError(f"-o -: writes one image to stdout; got {len(jobs)} input(s)"
                             + (" (a video)" if len(jobs) == 1 else ""))
        return [(jobs[0], Path(STDIO))], summary, fail
    prepare_outdir(outdir)
    todo, summary.skipped = plan_outputs(jobs, outdir, format, overwrite, fail, frames)
    return todo, summary, fail

def infer(
    model: str | Path | Segmenter,
    inputs: list[str | Path],
    outdir: str | Path,
    format: str = "matte",
    threshold: float = 0.5,
    batch_size: int = 1,
    device: str | None = None,
    backend: str = "auto",
    recursive: bool = False,
    overwrite: bool = False,
    dtype: str | None = None,
    tile: bool = False,
    tile_scale: float | None = None,
    tta: str = "none",
    progress: TextIO | None = None,
    show_progress: bool = True,
    on_message: Callable[[str], None] | None = None,
    cutout: Cutout | None = None,
    frames: bool = False,
    start: float = 0.0,
    duration: float | None = None,
    keep_partial: bool = False,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    compile: str | None = None,
    tf32: bool = False,
) -> InferSummary:
    """Segment ``inputs`` into ``outdir`` (mirroring the input tree) and summarise the run.

    ``model``: a checkpoint, an .onnx graph, or an open Segmenter (then device, backend,
    dtype, batch_size, tiling and ``tta`` come from it). Messages and the progress bar (on a terminal)
    go to ``progress`` (default: sys.stderr). Existing outputs are kept unless
    ``overwrite``; inputs are never written; each output goes to a temporary name first.
    ``cutout``: colour estimation, background and inversion (:class:`Cutout`; default: the
    default estimator). Videos: ``frames`` writes a PNG/JPEG folder per clip instead of a
    video, ``start`` / ``duration`` (seconds) select a range, ``keep_partial`` keeps a broken
    clip's output as ``<name>.partial<suffix>``. An input ``-`` reads ``stdin`` (default:
    sys.stdin.buffer); ``outdir`` ``-`` writes the one output to ``stdout`` (sys.stdout.buffer).
    ``compile`` / ``tf32``: PyTorch's torch.compile mode and TF32 switch (checkpoints only; see
    :class:`mgd_rt.runtime.segmenter.Segmenter`).
    """
    if format not in FORMATS:
        raise MgdRtError(f"--format {format}: choose from {', '.join(FORMATS)}")
    if not 0.0 < threshold < 1.0:
        raise MgdRtError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    if start < 0 or (duration is not None and duration <= 0):
        raise MgdRtError(f"--start {start} / --duration {duration}: start must be >= 0 and duration > 0")
    outputs = Outputs(format, threshold, cutout or Cutout(), frames, start, duration, keep_partial,
                      str(outdir) == STDIO, stdin, stdout)
    outdir = Path(outdir)
    start_time = time.perf_counter()
    bar = Progress(0, progress or sys.stderr)  # sys.stderr looked up now, not at import
    bar.enabled = bar.enabled and show_progress
    say = on_message or bar.message
    todo, summary, fail = start_job(inputs, outdir, recursive, format, overwrite, say, frames)
    seg = model if isinstance(model, Segmenter) else Segmenter(
        model, device=device, backend=backend, dtype=dtype, batch_size=batch_size, tile=tile, tile_scale=tile_scale,
        tta=tta, compile=compile, tf32=tf32)
    summary.backend = seg.describe()
    summary.precision = seg.backend.precision
    try:
        run_jobs(seg, todo, summary, fail, bar, outputs, say)
    finally:
        if not isinstance(model, Segmenter):
            seg.close()
    if bar.enabled:
        bar.stream.write("\n")
    summary.seconds = time.perf_counter() - start_time
    return summary


@dataclass(frozen=True)
class Outputs:
    """What each output is: format, threshold, cut-out settings, the video options, and stdio for ``-``."""

    format: str = "matte"
    threshold: float = 0.5
    cutout: Cutout = field(default_factory=Cutout)
    frames: bool = False
    start: float = 0.0
    duration: float | None = None
    keep_partial: bool = False
    to_stdout: bool = False
    stdin: BinaryIO | None = None
    stdout: BinaryIO | None = None


def run_jobs(
    seg: Segmenter, todo: list[tuple[Job, Path]], summary: InferSummary, fail: Callable[[str], None],
    bar: Progress, out: Outputs, say: Callable[[str], None],
) -> None:
    """Segment planned (job, target) pairs with an open Segmenter: images through its stream with a
    writer thread, then each video; results and failures are added to ``summary``. Shared with
    :mod:`mgd_rt.runtime.watch`."""
    videos = [(job, target) for job, target in todo if job.is_video]
    images = [(job, target) for job, target in todo if not job.is_video]
    bar.total += len(images) + len(summary.failed)  # the bar counts done + failed
    say(f"mgd-rt: {len(images)} image(s) and {len(videos)} video(s) to segment with {summary.backend}")

    def source_of(job: Job) -> Path | np.ndarray | _Failed:
        """The path, or for ``-`` the image decoded from stdin (errors stay inside the stream)."""
        if job.source != Path(STDIO):
            return job.source
        try:
            return decode_image((out.stdin or sys.stdin.buffer).read(), "<stdin>")
        except MgdRtError as exc:
            return _Failed(str(exc))

    sources = [source_of(job) for job, _ in images]
    targets = {id(source): target for source, (_, target) in zip(sources, images, strict=True)}

    def write(result: Result, target: Path) -> Path:
        if out.to_stdout:
            write_result_stream(result, out.stdout or sys.stdout.buffer, out.format, out.threshold, out.cutout)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_result(result, target, out.format, out.threshold, out.cutout)

    pending: deque[tuple[Result, Future[Path]]] = deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            result, future = pending.popleft()
            try:
                summary.written.append(future.result())
                summary.done += 1
            except MgdRtError as exc:
                fail(str(exc))
            except OSError as exc:
                # a full disk or a file-size limit: name the output that was not written (its temporary
                # file is already gone) and go on; a smaller output may still fit
                fail(write_failure(_name(result.source), "to stdout" if out.to_stdout else targets[id(result.source)],
                                   exc))
            bar.update(summary.done, len(summary.failed))

    # Ctrl-C or SIGTERM (a KeyboardInterrupt in this thread, see mgd_rt.cli) leaves this block through
    # the executor's shutdown, which waits for the writes in flight: each is finished and renamed, or
    # its temporary file removed, so an interrupted run leaves only whole outputs and a rerun resumes
    with ThreadPoolExecutor(1, thread_name_prefix="mgd-rt-write") as writer:
        for result in seg.stream(s for s in sources if not isinstance(s, _Failed)):
            if not result.ok:
                fail(result.error)
                bar.update(summary.done, len(summary.failed))
                continue
            if result.tile is not None:
                summary.windows_total += result.tile.windows_total
                summary.windows_run += result.tile.windows_run
            pending.append((result, writer.submit(write, result, targets[id(result.source)])))
            settle(2)  # at most two encoded images in flight: bounded memory
        settle(0)
    for failed in (s for s in sources if isinstance(s, _Failed)):
        fail(failed.error)
    for job, target in videos:
        _run_video(seg, job, target, out, summary, fail, bar)


@dataclass
class _Failed:
    """An input that failed before the model (stdin that is not an image)."""

    error: str


def _name(source: object) -> str:
    return "<stdin>" if isinstance(source, np.ndarray) else str(source)


def _run_video(
    seg: Segmenter, job: Job, target: Path, out: Outputs, summary: InferSummary, fail: Callable[[str], None],
    bar: Progress,
) -> None:
    """One clip through :func:`segment_video`; its progress line shows frames/s and the time left."""

    def show(done: int, total: int, rate: float) -> None:
        if not bar.enabled:
            return
        left = f", {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
        of = f"/{total}" if total else ""
        bar.stream.write(f"\r\033[K{job.source.name}: frame {done}{of}, {rate:.2f} frames/s{left}")
        bar.stream.flush()

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        result = segment_video(seg, job.source, target, out.format, out.threshold, out.cutout, out.frames,
                               out.start, out.duration, out.keep_partial, show)
    except MgdRtError as exc:
        fail(str(exc))
        return
    except OSError as exc:
        fail(write_failure(job.source, target, exc))
        return
    summary.done += 1
    summary.clips += 1
    summary.frames += result.frames
    summary.written.append(target)
