"""The runtime on the real tiny model: PyTorch backend vs the authors' pipeline, tiling on a
real photo, and PyTorch vs ONNX Runtime agreement on written mattes (exported tiny graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHECKPOINT, needs_cuda
from PIL import Image

from mgd_rt.cli import main
from mgd_rt.numerics import compare_logits
from mgd_rt.runtime import Segmenter
from mgd_rt.runtime.infer import infer
from mgd_rt.runtime.processing import resize_logits

torch = pytest.importorskip("torch")
data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def torch_seg() -> Segmenter:
    return Segmenter(TINY_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def onnx_path(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.coffee()).save(root / "coffee.jpg", quality=95)
    Image.fromarray(data.camera()).save(root / "camera.png")  # grayscale
    return root


def test_torch_backend_is_the_authors_pipeline(torch_seg):
    """PIL resize + ToTensor + Normalize, model, F.interpolate to the original size, sigmoid."""
    import torchvision.transforms.functional as tf

    photo = data.coffee()
    x = tf.normalize(tf.to_tensor(tf.resize(Image.fromarray(photo), [512, 512])),
                     [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]
    with torch.inference_mode():
        ref = torch_seg.backend.model(x)
        ref_full = torch.nn.functional.interpolate(ref, size=photo.shape[:2], mode="bilinear", align_corners=False)
    (result,) = torch_seg.stream([photo])
    assert compare_logits(ref[0, 0].numpy(), result.logits, "rewrite", "runtime vs authors' pipeline")
    assert compare_logits(ref_full[0, 0].numpy(), resize_logits(result.logits, *photo.shape[:2]), "rewrite")
    mask = torch_seg(photo)
    assert mask.shape == photo.shape[:2]
    np.testing.assert_allclose(mask, torch.sigmoid(ref_full)[0, 0].numpy(), atol=1e-5)


def test_tiled_equals_plain_on_an_s_by_s_photo(torch_seg):
    photo = data.astronaut()  # 512 x 512 = S of the tiny model
    assert photo.shape[:2] == (512, 512)
    tiled = Segmenter(torch_seg.backend, tile=True)
    (result,) = tiled.stream([photo])
    assert result.tile.windows_total == result.tile.windows_run == 1
    np.testing.assert_array_equal(tiled(photo), torch_seg(photo))


def test_tiled_matte_on_a_real_photo_has_no_seams(torch_seg):
    photo = data.coffee()  # 400 x 600 -> working scale 512 x 768 -> 2 windows, overlap at x 256..512
    tiled = Segmenter(torch_seg.backend, tile=True)
    (result,) = tiled.stream([photo])
    assert (result.tile.height, result.tile.width, result.tile.windows_total) == (512, 768, 2)
    logits = result.logits
    assert np.isfinite(logits).all()
    # a seam would be a jump between neighbouring columns at a window edge larger than the
    # image's own column-to-column changes
    jumps = np.abs(np.diff(logits, axis=1)).max(axis=0)  # (w - 1,)
    edges = [255, 511]  # columns x | x + 1 where the second window starts / the first ends
    inside = np.delete(jumps, edges)
    assert jumps[edges].max() <= np.quantile(inside, 0.99)
    mask = result.mask()
    assert mask.shape == photo.shape[:2] and 0 <= mask.min() and mask.max() <= 1


def test_torch_and_onnxruntime_write_the_same_mattes(onnx_path, photos, tmp_path, capsys):
    """Both backends through the CLI, then the library with every format on ONNX Runtime."""
    out_t, out_o = tmp_path / "torch", tmp_path / "ort"
    assert main(["infer", str(TINY_CHECKPOINT), str(photos), "-o", str(out_t), "--device", "cpu"]) == 0
    assert main(["infer", str(onnx_path), str(photos), "-o", str(out_o), "--batch-size", "2"]) == 0
    assert "onnxruntime on CPUExecutionProvider" in capsys.readouterr().out
    for name in ("coffee.png", "camera.png"):
        a = np.asarray(Image.open(out_t / name), dtype=np.int16)
        b = np.asarray(Image.open(out_o / name), dtype=np.int16)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of probabilities that agree to ~1e-5
    torch_seg = Segmenter(TINY_CHECKPOINT, device="cpu")
    ort_seg = Segmenter(onnx_path)
    photo = data.coffee()
    (rt,) = torch_seg.stream([photo])
    (ro,) = ort_seg.stream([photo])
    assert compare_logits(rt.logits, ro.logits, "fp32", "torch vs onnxruntime")
    for fmt in ("binary", "rgba", "overlay"):
        summary = infer(ort_seg, [photos], tmp_path / fmt, format=fmt)
        assert summary.done == 2 and not summary.failed
        assert len(list((tmp_path / fmt).iterdir())) == 2


@needs_cuda
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_torch_backend_on_cuda_matches_cpu(torch_seg, tta):
    """`--device cuda` (TF32 off, as for any FP32 comparison) gives the CPU logits, with and without TTA."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    photo = data.coffee()
    cuda_seg = Segmenter(TINY_CHECKPOINT, device="cuda", tta=tta)
    cpu_seg = torch_seg if tta == "none" else Segmenter(TINY_CHECKPOINT, device="cpu", tta=tta)
    (on_gpu,) = cuda_seg.stream([photo])
    (on_cpu,) = cpu_seg.stream([photo])
    assert "cuda" in cuda_seg.describe()
    assert compare_logits(on_cpu.logits, on_gpu.logits, "fp32", f"cuda vs cpu, tta={tta}")
