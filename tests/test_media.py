"""Cut-outs and pipes: foreground colour estimation removes the halo on a composite with a known
answer, --background / --invert composites, and ``-`` / ``-o -`` through a real pipe."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from runtime_helpers import toy_logits

from mgd_rt.cli import main
from mgd_rt.runtime.compose import ESTIMATORS, Cutout, cover
from mgd_rt.runtime.processing import postprocess_uint8, preprocess

data = pytest.importorskip("skimage.data")


def _composite(width: int = 400, height: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, alpha uint8, true F float32): astronaut over coffee through a disc with a 4 px soft edge."""
    fg = cv2.resize(data.astronaut(), (width, height)).astype(np.float32)
    bg = cv2.resize(data.coffee(), (width, height)).astype(np.float32)
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot(yy - height / 2, xx - width / 2)
    alpha = np.rint(np.clip((0.35 * height - r) / 4 + 0.5, 0, 1) * 255).astype(np.uint8)
    a = alpha.astype(np.float32)[:, :, None] / 255
    image = np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
    return image, alpha, fg


@pytest.mark.parametrize("method", [m for m in ESTIMATORS if m != "raw"])
def test_estimator_reduces_the_halo(method):
    if method == "multilevel":
        pytest.importorskip("pymatting")
    image, alpha, fg = _composite()
    soft = (alpha > 0) & (alpha < 255)

    def halo(estimate: np.ndarray) -> float:
        a = alpha[soft].astype(np.float32)[:, None] / 255
        return float((a * np.abs(estimate.astype(np.float32) - fg)[soft]).mean())

    raw, estimated = halo(ESTIMATORS["raw"](image, alpha)), halo(ESTIMATORS[method](image, alpha))
    assert estimated < 0.7 * raw, (method, estimated, raw)  # measured: blur-fusion 0.61, multilevel 0.46
    out = ESTIMATORS[method](image, alpha)
    np.testing.assert_array_equal(out[alpha == 255], image[alpha == 255])  # opaque pixels untouched


def test_cover_and_colour_backdrop():
    src = np.zeros((100, 300, 3), np.uint8)
    src[:, 100:200] = 255  # a white middle third
    covered = cover(src, 50, 50)
    assert covered.shape == (50, 50, 3) and covered[25, 25].min() > 200  # centre-cropped: the middle
    backdrop = Cutout(background="#ff0000").backdrop(np.zeros((4, 5, 3), np.uint8))
    assert backdrop.shape == (4, 5, 3) and (backdrop == [255, 0, 0]).all()


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()[::4, ::4]).save(path)
    return path


def _matte(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return postprocess_uint8(toy_logits(preprocess(rgb, 32)[None])[0, 0], *rgb.shape[:2])


def test_background_colour_image_blur_and_invert(toy_onnx, photo, tmp_path):
    """With --foreground raw each composite is photo * a + backdrop * (1 - a), checked independently."""
    out = tmp_path / "out"
    matte = _matte(photo)
    rgb = np.asarray(Image.open(photo)).astype(np.float64)
    a = matte[:, :, None] / 255.0
    other = tmp_path / "other.png"
    Image.fromarray(np.full((10, 30, 3), (0, 0, 255), np.uint8)).save(other)  # covers the photo: all blue
    blur = cv2.GaussianBlur(rgb.astype(np.uint8), (0, 0), max(rgb.shape[:2]) * 0.02)
    for name, spec, backdrop in (("red", "#ff0000", [255, 0, 0]), ("img", str(other), [0, 0, 255]),
                                 ("blur", "blur", blur)):
        assert main(["infer", str(toy_onnx), str(photo), "-o", str(out / name), "--background", spec,
                     "--foreground", "raw"]) == 0
        got = np.asarray(Image.open(out / name / "chelsea.jpg")).astype(np.float64)
        expected = rgb * a + np.asarray(backdrop, np.float64) * (1 - a)
        assert got.shape == expected.shape and np.abs(got - expected).mean() < 5, name  # JPEG (4:2:0 chroma) only
    assert main(["infer", str(toy_onnx), str(photo), "-o", str(out / "inv"), "--invert"]) == 0
    inverted = np.asarray(Image.open(out / "inv" / "chelsea.png")).astype(int)
    assert np.abs(inverted - (255 - matte.astype(int))).max() <= 1
    assert main(["infer", str(toy_onnx), str(photo), "-o", str(out / "cut"), "--format", "rgba", "--invert"]) == 0
    cut = np.asarray(Image.open(out / "cut" / "chelsea.png"))
    np.testing.assert_array_equal(cut[:, :, 3], np.asarray(Image.open(out / "inv" / "chelsea.png")))


def test_cutout_usage_errors_exit_2(toy_onnx, photo, tmp_path, capsys):
    for extra in (["--background", "red", "--format", "matte"], ["--foreground", "raw"], ["--start", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["infer", str(toy_onnx), str(photo), "-o", str(tmp_path / "o"), *extra])
        assert exc.value.code == 2, extra
    capsys.readouterr()
    assert main(["infer", str(toy_onnx), str(photo), "-o", str(tmp_path / "o"), "--background", "nocolour"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--background nocolour" in err[0]


def test_pipe_stdin_to_stdout(toy_onnx, photo, tmp_path):
    """``mgd-rt infer model - -o - < in.png > out.png``: the same bytes as the file path gives."""
    assert main(["infer", str(toy_onnx), str(photo), "-o", str(tmp_path / "files"), "--format", "rgba"]) == 0
    cmd = [sys.executable, "-m", "mgd_rt.cli", "infer", str(toy_onnx), "-", "-o", "-", "--format", "rgba"]
    proc = subprocess.run(cmd, input=photo.read_bytes(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == (tmp_path / "files" / "chelsea.png").read_bytes()
    assert Image.open(io.BytesIO(proc.stdout)).mode == "RGBA"
    bad = subprocess.run(cmd, input=b"not an image", capture_output=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == b"" and b"<stdin>: not an image" in bad.stderr


def test_watch_segments_arrivals_once_and_reports_a_bad_file_once(toy_onnx, tmp_path):
    import threading
    import time

    from mgd_rt.runtime.infer import Outputs
    from mgd_rt.runtime.segmenter import Segmenter
    from mgd_rt.runtime.watch import watch

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    Image.fromarray(data.chelsea()[::8, ::8]).save(inbox / "first.png")  # there before the watch starts
    messages: list[str] = []
    stop = threading.Event()
    with Segmenter(toy_onnx) as seg:
        thread = threading.Thread(target=lambda: messages.append(watch(
            seg, [inbox], out, Outputs("matte"), poll=0.05, stop=stop, on_message=messages.append)))
        thread.start()

        def wait_for(path: Path) -> None:
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert path.exists(), path

        wait_for(out / "first.png")
        # a copy in progress: the first half now, the rest later; only the whole file is segmented
        encoded = io.BytesIO()
        Image.fromarray(data.astronaut()[::8, ::8]).save(encoded, format="PNG")
        with open(inbox / "late.png", "wb") as f:
            f.write(encoded.getvalue()[: 500])
            f.flush()
            time.sleep(0.02)
            f.write(encoded.getvalue()[500:])
        (inbox / "bad.jpg").write_text("not a JPEG")
        wait_for(out / "late.png")
        time.sleep(0.5)  # ten more polls: the bad file must not be tried again
        stop.set()
        thread.join(10)
    summary = messages[-1]
    assert summary.done == 2 and len(summary.failed) == 1 and "bad.jpg" in summary.failed[0]
    assert sum("bad.jpg" in str(m) for m in messages[:-1]) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(out / "late.png")), _matte(inbox / "late.png"))
