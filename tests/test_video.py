"""Videos through ``mgd-rt infer``: clips made here with PyAV (two codecs, with and without audio,
cut copies of mp4, mkv and webm); frame counts, rates, timestamps, alpha equal to the image path's
matte, audio kept, ranges (audio to the range's end), frame folders, partial outputs, no false
alarm on complete clips of several containers, codecs and rates."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgd_rt.cli import main
from mgd_rt.runtime.segmenter import Segmenter

av = pytest.importorskip("av")

W, H, N, RATE = 96, 64, 6, 12


def _frame(i: int) -> np.ndarray:
    """(H, W, 3) uint8: a bright box moving over a dark textured background."""
    rng = np.random.default_rng(i)
    img = (rng.integers(0, 40, (H, W, 3)) + np.array([20, 50, 90])).astype(np.uint8)
    img[16:48, 8 + 6 * i : 40 + 6 * i] = (250, 200, 40)
    return img


def make_clip(path: Path, codec: str, muxer: str, audio: bool, options: dict[str, str] | None = None,
              rate: Fraction | int = RATE, n: int = N, times_ms: list[int] | None = None) -> Path:
    """A clip of ``n`` frames at ``rate``; ``times_ms``: frame times instead (a variable frame rate)."""
    with av.open(str(path), "w", format=muxer, options=options or {}) as c:
        v = c.add_stream(codec, rate=rate)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        if times_ms is not None:
            v.codec_context.time_base = Fraction(1, 1000)
        a = c.add_stream("aac", rate=16000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            f.pts = i if times_ms is None else times_ms[i]
            if times_ms is not None:
                f.time_base = Fraction(1, 1000)
            for p in v.encode(f):
                c.mux(p)
        if a is not None:
            samples = int(16000 * n / rate)
            for s0 in range(0, samples, 1024):
                tone = (0.1 * np.sin(np.arange(s0, min(s0 + 1024, samples)) / 10)).astype(np.float32)[None]
                af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, s0
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    return path


def _cut(path: Path, name: str, packets: int = 3) -> Path:
    """``path`` cut right after its first ``packets`` video packets: a download or a copy that stopped
    mid-way. Cut by packet, not by a fraction of the bytes: the encoders' output size varies, and a
    fixed fraction can land inside the first key frame (then no frame decodes at all)."""
    with av.open(str(path)) as container:
        ends = [p.pos + p.size for p in container.demux(video=0) if p.pos is not None and p.size]
    data = path.read_bytes()
    (cut := path.with_name(name)).write_bytes(data[: max(ends[:packets])])
    return cut


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    # faststart: the index comes first, so a truncated copy still says how many frames it should have
    mp4 = make_clip(root / "h264_aac.mp4", "libx264", "mp4", audio=True, options={"movflags": "faststart"})
    webm = make_clip(root / "vp9.webm", "libvpx-vp9", "webm", audio=False)
    # Matroska and WebM keep no frame count: a cut copy is found by its declared duration
    mkv = make_clip(root / "x264_aac.mkv", "libx264", "matroska", audio=True)
    return {"mp4": mp4, "webm": webm, "mkv": mkv, "cut": _cut(mp4, "cut.mp4"), "cut_mkv": _cut(mkv, "cut_mkv.mkv"),
            "cut_webm": _cut(webm, "cut_webm.webm")}


def _probe(path: Path) -> tuple[list[str], Fraction, list[float], list[np.ndarray]]:
    """Stream types, frame rate, frame times and decoded frames (as the container gives them)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        return [s.type for s in c.streams], v.average_rate, [float(f.time) for f in frames], frames


def _alpha(frame) -> np.ndarray:
    """Exact 8-bit alpha of a ProRes 4444 frame: the decoder gives 12-bit, scaled back."""
    plane = frame.planes[3]
    a12 = np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2)[:, : plane.width]
    return np.rint(a12 / 4095 * 255).astype(np.uint8)


def _inputs(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_rgba_clip_alpha_is_the_image_paths_matte(tiny_onnx_copy, clips, tmp_path):
    model = tiny_onnx_copy(256)
    out = tmp_path / "out"
    assert main(["infer", str(model), str(clips["mp4"]), "-o", str(out), "--format", "rgba", "--batch-size", "2"]) == 0
    types, rate, times, frames = _probe(out / "h264_aac.mov")
    _, in_rate, in_times, _ = _probe(clips["mp4"])
    assert types == ["video"] and rate == in_rate == RATE and len(frames) == N
    assert times == pytest.approx(in_times, abs=1e-6)
    with Segmenter(model) as seg:
        mattes = [r.matte() for r in seg.stream(_inputs(clips["mp4"]))]
    for frame, matte in zip(frames, mattes, strict=True):
        assert frame.format.name.startswith("yuva444p")
        np.testing.assert_array_equal(_alpha(frame), matte)


def test_composite_keeps_audio_and_timestamps(toy_onnx, clips, tmp_path):
    out = tmp_path / "out"
    assert main(["infer", str(toy_onnx), str(clips["mp4"]), "-o", str(out), "--background", "blur"]) == 0
    types, rate, times, frames = _probe(out / "h264_aac.mp4")
    assert types == ["video", "audio"] and rate == RATE and len(frames) == N
    with av.open(str(clips["mp4"])) as a, av.open(str(out / "h264_aac.mp4")) as b:
        packets_in = [p.pts for p in a.demux(audio=0) if p.size]
        packets_out = [p.pts for p in b.demux(audio=0) if p.size]
        assert b.streams.audio[0].codec_context.name == "aac"
    assert packets_out == packets_in  # copied, not re-encoded


def test_webm_matte_video_without_audio(toy_onnx, clips, tmp_path):
    out = tmp_path / "out"
    assert main(["infer", str(toy_onnx), str(clips["webm"]), "-o", str(out)]) == 0  # matte: grayscale H.264
    types, _, times, frames = _probe(out / "vp9.mp4")
    _, _, in_times, _ = _probe(clips["webm"])
    assert types == ["video"] and len(frames) == N and times == pytest.approx(in_times, abs=1e-3)
    with Segmenter(toy_onnx) as seg:
        mattes = [r.matte() for r in seg.stream(_inputs(clips["webm"]))]
    for frame, matte in zip(frames, mattes, strict=True):
        luma = frame.to_ndarray()[:H]  # yuv420p: the first H rows are Y, where the matte is
        assert np.abs(luma.astype(int) - matte).mean() < 2.0  # H.264 at crf 12


def test_range_and_frame_folder(toy_onnx, clips, tmp_path):
    out = tmp_path / "out"
    # frames at 0, 1/12, ...: [0.1, 0.35) holds frames 2, 3, 4
    assert main(["infer", str(toy_onnx), str(clips["mp4"]), "-o", str(out), "--start", "0.1", "--duration", "0.25",
                 "--format", "overlay"]) == 0
    types, _, times, _ = _probe(out / "h264_aac.mp4")
    assert times == pytest.approx([0.0, 1 / 12, 2 / 12], abs=1e-3) and types == ["video", "audio"]
    assert main(["infer", str(toy_onnx), str(clips["webm"]), "-o", str(out), "--frames"]) == 0
    pngs = sorted((out / "vp9").iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(N)]
    with Segmenter(toy_onnx) as seg:
        mattes = [r.matte() for r in seg.stream(_inputs(clips["webm"]))]
    for png, matte in zip(pngs, mattes, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), matte)


def test_truncated_clip_one_line_and_partial_only_when_asked(toy_onnx, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(toy_onnx), str(clips["cut"]), str(clips["webm"]), "-o", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "cut.mp4" in err[0] and "last good frame" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["vp9.mp4"]  # the rest of the batch went on; no temp file
    assert main(["infer", str(toy_onnx), str(clips["cut"]), "-o", str(out), "--keep-partial"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["cut.partial.mp4", "vp9.mp4"]
    _, _, times, _ = _probe(out / "cut.partial.mp4")
    last_good = int(capsys.readouterr().err.split("last good frame ")[1].split(";")[0])
    assert len(times) == last_good + 1


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line]


def test_truncated_mkv_and_webm_and_a_cut_range(toy_onnx, clips, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["infer", str(toy_onnx), str(clips["cut_mkv"]), str(clips["cut_webm"]), str(clips["webm"]), "-o", str(out)]
    assert main(args) == 1
    err = _errors(capsys)
    assert len(err) == 2 and all("truncated" in e and "last good frame" in e for e in err)
    assert "cut_mkv.mkv" in err[0] and "cut_webm.webm" in err[1]
    assert sorted(p.name for p in out.iterdir()) == ["vp9.mp4"]  # the batch went on; nothing else left
    assert main([*args[:3], "-o", str(out), "--keep-partial", "--format", "overlay"]) == 1
    last_good = int(_errors(capsys)[0].split("last good frame ")[1].split(";")[0])
    assert len(_probe(out / "cut_mkv.partial.mp4")[2]) == last_good + 1
    # a range gives no frame count to compare with; the mp4's declared duration still tells
    assert main(["infer", str(toy_onnx), str(clips["cut"]), "-o", str(tmp_path / "r"), "--start", "0.05",
                 "--duration", "10"]) == 1
    assert "cut.mp4" in _errors(capsys)[0] and not (tmp_path / "r" / "cut.mp4").exists()


def test_complete_clips_are_not_flagged(toy_onnx, clips, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    ntsc = Fraction(30000, 1001)
    made = [
        clips["mp4"], clips["webm"], clips["mkv"],
        make_clip(root / "mpeg4_24.mkv", "mpeg4", "matroska", audio=True, rate=24, n=7),
        make_clip(root / "vp8_25.webm", "libvpx", "webm", audio=False, rate=25, n=8),
        make_clip(root / "mpeg4_ntsc.mov", "mpeg4", "mov", audio=False, rate=ntsc, n=8),
        make_clip(root / "h264_plain.mp4", "libx264", "mp4", audio=True, rate=25, n=8),  # index at the end
        make_clip(root / "mpeg4_25.avi", "mpeg4", "avi", audio=False, rate=25, n=8),  # counts empty packets
        # frames 40, 80 and 120 ms long: the slack follows the longest interval
        make_clip(root / "vfr.mkv", "libx264", "matroska", audio=False, rate=25, times_ms=[0, 40, 120, 240, 280, 360]),
        make_clip(root / "vfr_mp4.mp4", "libx264", "mp4", audio=False, rate=25, times_ms=[0, 40, 120, 240, 280, 360]),
    ]
    out = tmp_path / "out"
    assert main(["infer", str(toy_onnx), *map(str, made), "-o", str(out), "--frames"]) == 0
    for clip in made:
        with av.open(str(clip)) as c:
            decoded = sum(1 for _ in c.decode(video=0))
        assert len(list((out / clip.stem).iterdir())) == decoded, clip.name


def test_range_copies_audio_to_the_end_of_the_range(toy_onnx, tmp_path, capsys):
    # the muxer left to write packets as they come: all video first, then the audio, as loosely
    # interleaved files do; the range's audio lies in the file after the range's last frame
    clip = make_clip(tmp_path / "late.mkv", "mpeg4", "matroska", audio=True, options={"max_interleave_delta": "1"},
                     n=12)
    out = tmp_path / "out"
    # [0.1, 0.4): frames at 2/12, 3/12, 4/12; AAC frames of 1024 samples (64 ms) run on to 0.4
    assert main(["infer", str(toy_onnx), str(clip), "-o", str(out), "--start", "0.1", "--duration", "0.3",
                 "--format", "overlay"]) == 0
    assert "frames/s" in capsys.readouterr().out  # the summary's speed is in frames for a clip
    types, _, times, _ = _probe(out / "late.mp4")
    assert types == ["video", "audio"] and len(times) == 3
    with av.open(str(out / "late.mp4")) as c:
        packets = [p for p in c.demux(audio=0) if p.size]
    span = float((packets[-1].pts + packets[-1].duration - packets[0].pts) * packets[0].time_base)
    assert span == pytest.approx(0.3, abs=1024 / 16000)
