"""Ray Data: mgd-rt infer --ray on a local cluster with two actors gives plain mgd-rt infer's files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgd_rt.errors import MgdRtError

SIZE = 256  # tiny variant at S=256: quick on 2 cores, the pipeline is what is tested


@pytest.fixture(scope="module")
def tiny_onnx(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy(SIZE)


def _photos(folder: Path) -> list[str]:
    """Six real photos from scikit-image in a tree, plus broken files; returns the good names."""
    data = pytest.importorskip("skimage.data")
    good = []
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field"]):
        sub = folder / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        path = sub / f"{name}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.fromarray(getattr(data, name)()).save(path)
        good.append(str(path.relative_to(folder).with_suffix(".png")))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notanimage.png").write_bytes(b"this is text, not a PNG")
    full = (folder / "chelsea.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 3])  # cut mid-scan
    return sorted(good)


def test_ray_two_actors_equal_plain_infer(tiny_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    from mgd_rt.ray import segment_dataset
    from mgd_rt.runtime.infer import infer

    photos = tmp_path / "photos"
    photos.mkdir()
    good = _photos(photos)
    plain = infer(tiny_onnx, [photos], tmp_path / "plain", recursive=True, show_progress=False)
    assert plain.done == len(good)

    t0 = time.perf_counter()
    summary = segment_dataset(tiny_onnx, [photos], tmp_path / "ray", recursive=True, actors=2,
                              cpus_per_actor=0.5)
    seconds = time.perf_counter() - t0
    print(f"ray: {summary.line()} (call {seconds:.1f} s)")
    assert summary.done == len(good) and "2 actor(s)" in summary.backend
    # broken files: reported by name, skipped, nothing written for them
    assert len(summary.failed) == 3
    for name in ("empty.jpg", "notanimage.png", "truncated.jpg"):
        assert sum(name in line for line in summary.failed) == 1, summary.failed
    written = sorted(str(p.relative_to(tmp_path / "ray")) for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert written == good  # no temporary or half-written file, nothing for broken inputs
    for rel in good:
        a = np.asarray(Image.open(tmp_path / "plain" / rel))
        b = np.asarray(Image.open(tmp_path / "ray" / rel))
        assert a.shape == b.shape and np.array_equal(a, b), rel

    # a second run keeps existing outputs and starts no work for them
    again = segment_dataset(tiny_onnx, [photos], tmp_path / "ray", recursive=True, actors=1)
    assert again.skipped == len(good) and again.done == 0


def test_ray_refuses_before_starting(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from mgd_rt.ray import segment_dataset

    with pytest.raises(MgdRtError, match="no such ONNX file"):
        segment_dataset(tmp_path / "missing.onnx", [tmp_path], tmp_path / "out")
    with pytest.raises(MgdRtError, match="--ray-actors"):
        segment_dataset(tmp_path / "missing.onnx", [tmp_path], tmp_path / "out", actors=0)
