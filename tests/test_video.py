"""Videos through ``mgd-rt infer``: clips made here with PyAV (two codecs, with and without audio,
one truncated); frame counts, rates, timestamps, alpha equal to the image path's matte, audio
kept, ranges, frame folders, partial outputs."""

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


def make_clip(path: Path, codec: str, muxer: str, audio: bool, options: dict[str, str] | None = None) -> Path:
    with av.open(str(path), "w", format=muxer, options=options or {}) as c:
        v = c.add_stream(codec, rate=RATE)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        a = c.add_stream("aac", rate=16000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(N):
            f = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        if a is not None:
            samples = 16000 * N // RATE
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


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    # faststart: the index comes first, so a truncated copy still says how many frames it should have
    mp4 = make_clip(root / "h264_aac.mp4", "libx264", "mp4", audio=True, options={"movflags": "faststart"})
    webm = make_clip(root / "vp9.webm", "libvpx-vp9", "webm", audio=False)
    data = mp4.read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    return {"mp4": mp4, "webm": webm, "cut": root / "cut.mp4"}


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
