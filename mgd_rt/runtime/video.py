"""Videos through the same Segmenter: PyAV decodes in one thread, the model runs in the caller's,
PyAV encodes and muxes in another (the ``video`` extra; ``av`` is imported only here, when used).

Frames keep the input's frame count, rate and timestamps (shifted to start at 0 when ``start``
cuts the beginning); composites get the input's audio packets copied, not re-encoded. The output
is written under a temporary name beside the target and renamed when the whole clip is done; a
clip that breaks mid-way is one error naming the file and the last good frame, and its output
is removed, or kept as ``<name>.partial<suffix>`` when asked.

Output per format (:data:`VIDEO_FORMATS`): matte and binary as grayscale H.264 (.mp4, the
matte in the luma plane, chroma neutral, full range), rgba as ProRes 4444 with its alpha
(.mov, alpha coded losslessly at 10 bits), overlay and background as H.264 (.mp4).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mgd_rt.artifacts import atomic_write
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.compose import Cutout
from mgd_rt.runtime.image_io import IMAGE_SUFFIXES
from mgd_rt.runtime.outputs import FORMATS, render, write_result
from mgd_rt.runtime.segmenter import Result, Segmenter

# what folder scans pick up as video; a file named explicitly is tried as video whatever its suffix
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


@dataclass(frozen=True)
class VideoCodec:
    """How one --format is encoded: container suffix and muxer, codec, pixel format, codec options."""

    suffix: str
    muxer: str
    codec: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)
    audio: bool = False  # composites carry the input's audio


_GRAY = VideoCodec(".mp4", "mp4", "libx264", "yuv420p", {"crf": "12", "preset": "veryfast"})
_COLOUR = VideoCodec(".mp4", "mp4", "libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}, audio=True)
VIDEO_FORMATS: dict[str, VideoCodec] = {
    "matte": _GRAY,
    "binary": _GRAY,
    "rgba": VideoCodec(".mov", "mov", "prores_ks", "yuva444p10le", {"profile": "4444"}),
    "overlay": _COLOUR,
    "background": _COLOUR,
}
assert set(VIDEO_FORMATS) == set(FORMATS), "every image format has a video form"


def is_video(path: Path) -> bool:
    """Not an image suffix: the video decoder gets it (FFmpeg reads far more than VIDEO_SUFFIXES lists)."""
    return path.suffix.lower() not in IMAGE_SUFFIXES


def video_target(relative: Path, fmt: str, frames: bool) -> Path:
    """Output path (relative) of a clip: clip.mp4 -> clip.mp4 / clip.mov, or the folder clip/ for --frames."""
    return relative.with_suffix("") if frames else relative.with_suffix(VIDEO_FORMATS[fmt].suffix)


def partial_path(target: Path) -> Path:
    """Where --keep-partial keeps a broken clip's output: clip.mp4 -> clip.partial.mp4."""
    return target.with_name(f"{target.stem}.partial{target.suffix}")


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise MgdRtError("videos need PyAV: pip install 'mgd-rt[video]'") from None
    return av


@dataclass
class _Frame:
    """A decoded frame: (H, W, 3) uint8 RGB, its pts in the input stream's time base, its index."""

    rgb: np.ndarray
    pts: int
    index: int


@dataclass
class VideoInfo:
    """What the decoder found: frame rate, time base, expected frame count (0 if unknown), audio."""

    rate: Fraction
    time_base: Fraction
    frames: int
    width: int
    height: int
    has_audio: bool


class _Decoder:
    """Demuxes and decodes in its own thread into a bounded queue; audio packets kept for the muxer."""

    _END = object()

    def __init__(self, path: Path, start: float, duration: float | None, keep_audio: bool, depth: int = 8) -> None:
        av = _av()
        self.path = path
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise MgdRtError(f"{path}: not a video the decoder can open ({_first(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise MgdRtError(f"{path}: has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        audio = self.container.streams.audio
        self.audio_stream = audio[0] if keep_audio and audio else None
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        tb = self.stream.time_base or Fraction(1, 90000)
        self.info = VideoInfo(Fraction(rate), Fraction(tb), self.stream.frames if duration is None and not start
                              else 0, self.stream.codec_context.width, self.stream.codec_context.height,
                              self.audio_stream is not None)
        self.start, self.end = start, (start + duration if duration is not None else None)
        self.frames: queue.Queue[Any] = queue.Queue(depth)
        self.audio: deque[Any] = deque()  # packets, appended by the decoder thread, taken by the muxer
        self.first_pts: int | None = None
        self.error: str | None = None
        self.last_good = -1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mgd-rt-video-decode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        av = _av()
        index = 0
        last_t = last_len = None  # the newest frame's time and length (seconds)
        widest = 1 / float(self.info.rate)  # the longest frame interval seen: one frame's slack at the end
        try:
            if self.start > 0:
                self.container.seek(int(self.start / self.info.time_base), stream=self.stream, backward=True)
            streams = [self.stream] + ([self.audio_stream] if self.audio_stream is not None else [])
            video_done = False
            for packet in self.container.demux(streams):
                if self.stop.is_set():
                    return
                if packet.stream.type == "audio":
                    if packet.pts is None:
                        continue
                    t = float(packet.pts * packet.time_base)
                    if self.end is not None and t >= self.end:
                        if video_done:  # audio runs on past the range's last frame, up to its end
                            break
                        continue
                    if self._in_range(t):
                        self.audio.append(packet)
                    continue
                if video_done:
                    continue
                for frame in packet.decode():
                    t = float(frame.pts * self.info.time_base if frame.pts is not None else index / self.info.rate)
                    if t < self.start - 1e-6:
                        continue
                    if self.end is not None and t >= self.end - 1e-6:
                        video_done = True
                        break
                    # a container without timestamps: the frame's place at the nominal rate
                    pts = frame.pts if frame.pts is not None else round(index / self.info.rate / self.info.time_base)
                    if self.first_pts is None:
                        self.first_pts = pts
                    self._put(_Frame(frame.to_ndarray(format="rgb24"), pts, index))
                    if last_t is not None and t > last_t:
                        widest = max(widest, t - last_t)
                    last_t = t if last_t is None else max(last_t, t)
                    last_len = float(frame.duration * self.info.time_base) if frame.duration else None
                    self.last_good = index
                    index += 1
                if video_done and self.audio_stream is None:
                    break
            else:  # the end of the file, not of the range
                self.error = self._short(last_t, last_len, widest)
        except av.FFmpegError as exc:
            # the demuxer or the decoder gave up mid-stream: the same as a cut file
            self.error = f"corrupt or truncated ({_first(exc)})"
        finally:
            self._put(self._END)

    def _short(self, last_t: float | None, last_len: float | None, widest: float) -> str | None:
        """At the end of the file: why the frames stop short of where the stream says it ends, or None.

        The frame count of an index is not used: AVI counts empty packets, Matroska and WebM keep none.
        """
        declared = _declared_end(self.container, self.stream)
        if declared is None:
            return None  # nothing to compare with (raw streams, live recordings)
        expected = declared if self.end is None else min(declared, self.end)
        if expected <= self.start + widest:
            return None
        reached = self.start if last_t is None else last_t + (last_len or 1 / float(self.info.rate))
        if reached + widest >= expected - 1e-3:  # Matroska rounds times to the millisecond
            return None
        return f"truncated: frames end at {reached:.3f} s, the file says {expected:.3f} s"

    def _in_range(self, t: float) -> bool:
        # from the start, everything: AAC's priming packet has a negative time and must stay
        return (self.start == 0 or t >= self.start - 1e-6) and (self.end is None or t < self.end)

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[_Frame]:
        while (item := self.frames.get()) is not self._END:
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.container.close()


def _declared_end(container: Any, stream: Any) -> float | None:
    """Where the file says the video stream ends (seconds, on the frames' clock), or None.

    Matroska and WebM: the track's DURATION tag (the segment's duration includes the audio, which
    may run longer), taken as an end time: were it a length from a later start, the check would
    only be laxer, never flag a complete clip.
    MP4, MOV, AVI, MPEG-TS: the stream's own start and duration. Otherwise the container's
    duration, only when the video is its only stream.
    """
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            pass
    if stream.duration and stream.time_base:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return ((container.start_time or 0) + container.duration) / 1_000_000
    return None


def _first(exc: BaseException) -> str:
    """FFmpeg's reason without its errno and path ("Invalid data found when processing input")."""
    reason = getattr(exc, "strerror", None)
    return reason or first_line(exc)


class _Encoder:
    """Encodes rendered frames and muxes them with the input's audio, in input order (one thread)."""

    def __init__(self, path: Path, fmt: str, info: VideoInfo, audio_template: Any) -> None:
        av = _av()
        self.spec = VIDEO_FORMATS[fmt]
        self.fmt = fmt
        self.container = av.open(str(path), "w", format=self.spec.muxer)
        self.stream = self.container.add_stream(self.spec.codec, rate=info.rate, options=dict(self.spec.options))
        self.stream.width, self.stream.height, self.stream.pix_fmt = info.width, info.height, self.spec.pix_fmt
        self.stream.codec_context.time_base = info.time_base  # the input's, so pts carry over unchanged
        self.stream.time_base = info.time_base
        if self.spec.codec == "libx264":
            self.stream.codec_context.color_range = 2  # full range: the matte's 0..255 kept as is
        self.audio = self.container.add_stream_from_template(audio_template) if audio_template is not None else None
        self.time_base = info.time_base

    def encode(self, image: np.ndarray, pts: int, audio: deque[Any], audio_shift: float) -> None:
        """``image``: (H, W) uint8 (matte, binary), (H, W, 3) or (H, W, 4) uint8; ``pts`` in the input time base."""
        av = _av()
        if image.ndim == 2:
            # luma = the matte, chroma neutral: what a player shows as gray, read back exactly from Y
            h, w = image.shape
            planes = np.full((h * 3 // 2, w), 128, np.uint8)
            planes[:h] = image
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.color_range = 2
        else:
            frame = av.VideoFrame.from_ndarray(image, format="rgba" if image.shape[2] == 4 else "rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self._mux_audio(audio, audio_shift, float(pts * self.time_base))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def _mux_audio(self, audio: deque[Any], shift: float, until: float | None) -> None:
        while self.audio is not None and audio:
            packet = audio[0]
            if until is not None and float(packet.pts * packet.time_base) - shift > until:
                return
            audio.popleft()
            offset = round(shift / packet.time_base)
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            packet.stream = self.audio
            self.container.mux(packet)

    def finish(self, audio: deque[Any], audio_shift: float) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self._mux_audio(audio, audio_shift, None)
        self.container.close()


@dataclass
class VideoSummary:
    frames: int = 0
    seconds: float = 0.0
    rate: float = 0.0


def segment_video(
    seg: Segmenter,
    source: Path,
    target: Path,
    fmt: str,
    threshold: float = 0.5,
    cutout: Cutout | None = None,
    frames: bool = False,
    start: float = 0.0,
    duration: float | None = None,
    keep_partial: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> VideoSummary:
    """Segment every frame of ``source`` (within ``start`` / ``duration`` seconds) into ``target``.

    ``frames``: ``target`` is a folder of per-frame images (frame_000000.png ...), each written
    like a still image's output. ``progress(done, total or 0, frames/s)`` after each frame.
    Raises MgdRtError naming the file and the last good frame if decoding breaks.
    """
    if start < 0 or (duration is not None and duration <= 0):
        raise MgdRtError(f"--start {start} / --duration {duration}: start must be >= 0, duration > 0")
    spec = VIDEO_FORMATS[fmt]
    decoder = _Decoder(source, start, duration, keep_audio=spec.audio and not frames)
    summary = VideoSummary()
    t0 = time.perf_counter()
    pts_queue: deque[int] = deque()

    def frames_in() -> Iterator[np.ndarray]:
        for frame in decoder:
            pts_queue.append(frame.pts)
            yield frame.rgb

    def outcome(results: Iterator[Result], write: Callable[[Result, int, int], None]) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="mgd-rt-video-encode") as pool:
            pending: deque[Any] = deque()
            for result in results:
                if not result.ok:
                    raise MgdRtError(f"{source}: frame {summary.frames}: {result.error}")
                pending.append(pool.submit(write, result, pts_queue.popleft(), summary.frames))
                summary.frames += 1
                while len(pending) > 2:  # bounded: at most two rendered frames waiting
                    pending.popleft().result()
                if progress is not None:
                    progress(summary.frames, decoder.info.frames, summary.frames / (time.perf_counter() - t0))
            while pending:
                pending.popleft().result()

    def to_clip() -> None:
        shift_pts = 0  # makes a range start at 0; the whole clip keeps its own timestamps
        keep: Path | None = None
        with atomic_write(target) as tmp:
            encoder = _Encoder(tmp, fmt, decoder.info, decoder.audio_stream)
            try:

                def write(result: Result, pts: int, index: int) -> None:
                    nonlocal shift_pts
                    if index == 0 and decoder.start > 0:
                        shift_pts = decoder.first_pts or 0
                    encoder.encode(render(result, fmt, threshold, cutout), pts - shift_pts, decoder.audio,
                                   float(shift_pts * decoder.info.time_base))

                outcome(seg.stream(frames_in()), write)
            finally:
                # closing writes the index, so even a broken clip's partial output plays
                encoder.finish(decoder.audio, float(shift_pts * decoder.info.time_base))
            if decoder.error is not None:
                if keep_partial:
                    keep = partial_path(target)
                    tmp.replace(keep)  # atomic_write then finds nothing to rename or remove
                raise _broken(decoder, source, keep)

    def to_folder() -> None:
        target.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []

        def write(result: Result, pts: int, index: int) -> None:
            written.append(write_result(result, target / f"frame_{index:06d}{FORMATS[fmt]}", fmt, threshold, cutout))

        try:
            outcome(seg.stream(frames_in()), write)
        except BaseException:
            _remove(written, target)
            raise
        if decoder.error is not None:
            if not keep_partial:
                _remove(written, target)
            raise _broken(decoder, source, target if keep_partial else None)

    try:
        (to_folder if frames else to_clip)()
    finally:
        decoder.close()
    summary.seconds = time.perf_counter() - t0
    summary.rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _broken(decoder: _Decoder, source: Path, kept: Path | None) -> MgdRtError:
    last = f"last good frame {decoder.last_good}" if decoder.last_good >= 0 else "no frame decoded"
    where = f"; partial output kept as {kept}" if kept is not None else ""
    return MgdRtError(f"{source}: {decoder.error}; {last}{where}")


def _remove(files: list[Path], folder: Path) -> None:
    for path in files:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()  # only if nothing else is in it
    except OSError:
        pass
