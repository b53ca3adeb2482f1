"""Test-time augmentation: flip and the authors' paper protocol (with the MCEM code quirk) on the
tiny model at S=256 (TTA sizes 192/256/320, fast), per-scale graph lookup on toy graphs, and
``mgd-rt infer --tta flip`` against the library."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHECKPOINT
from PIL import Image
from runtime_helpers import make_toy_onnx, toy_logits

from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import compare_logits
from mgd_rt.runtime import Segmenter
from mgd_rt.runtime.processing import preprocess
from mgd_rt.runtime.tta import TTA, paper_logits, paper_sizes, resize_bilinear

torch = pytest.importorskip("torch")
data = pytest.importorskip("skimage.data")
F = torch.nn.functional

S = 256  # the tiny model at 256: paper sizes 192, 256, 320


@pytest.fixture(scope="module")
def backend():
    from mgd_rt import load_model
    from mgd_rt.runtime.backends.torch_backend import TorchBackend

    return TorchBackend(load_model(TINY_CHECKPOINT, image_size=S), device="cpu")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return preprocess(data.coffee(), S)[None]  # (1, 3, S, S)


def _mcems(model):
    from mgd_rt.model.mcem import MCEM

    return [m for m in model.modules() if isinstance(m, MCEM)]


def test_resize_bilinear_is_torch_interpolate():
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 40)).astype(np.float32)
    for size in (30, 40, 50):
        ref = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()
        # torch derives its taps in float32, we in float64: last-bit differences only
        assert compare_logits(ref, resize_bilinear(x, size, size), "rewrite", f"resize to {size}")
    assert paper_sizes(512) == (384, 512, 640) and paper_sizes(1024) == (768, 1024, 1280)
    with pytest.raises(MgdRtError, match="divisible by 256"):
        paper_sizes(640)


def test_flip_is_the_mean_of_image_and_mirror(backend, batch):
    with torch.inference_mode():
        x = torch.from_numpy(batch)
        ref = (backend.model(x) + backend.model(x.flip(-1)).flip(-1)) / 2
    got = TTA("flip", backend)(batch)
    assert compare_logits(ref.numpy(), got, "rewrite", "flip TTA vs manual")


def _manual_paper(model, x: torch.Tensor, code_grid: tuple[int, int] | None) -> np.ndarray:
    """The authors' ttach loop written out: flip x scale, six separate calls, mean of the logits."""
    for m in _mcems(model):
        m.code_grid = code_grid
    outs = []
    try:
        with torch.inference_mode():
            for flip, scale in product((False, True), (0.75, 1.0, 1.25)):  # ttach's order
                a = x.flip(-1) if flip else x
                a = F.interpolate(a, size=(int(S * scale),) * 2, mode="bilinear", align_corners=False)
                y = F.interpolate(model(a), size=(S, S), mode="bilinear", align_corners=False)
                outs.append(y.flip(-1) if flip else y)
    finally:
        for m in _mcems(model):
            m.code_grid = None
    return torch.stack(outs).mean(0).numpy()


def test_paper_on_torch_is_the_authors_protocol_with_the_code_quirk(backend, batch):
    tta = TTA("paper", backend)
    assert "192 grid" in tta.describe()
    (mcem,) = _mcems(backend.model)
    grids = []
    hook = mcem.register_forward_pre_hook(lambda module, args: grids.append(module.code_grid))
    try:
        got = tta(batch)
    finally:
        hook.remove()
    # every scale's MCEM call used the 0.75 grid (192 / 16), restored afterwards
    assert grids == [(12, 12)] * 3 and mcem.code_grid is None
    quirk = _manual_paper(backend.model, torch.from_numpy(batch), (12, 12))  # first call: no flip, 0.75
    assert compare_logits(quirk, got, "rewrite", "paper TTA vs manual protocol")


def test_the_code_quirk_changes_the_numbers(backend):
    """At 320 (1.25 S) codes from the 192 grid differ from codes at 320, and so does MCEM's output.

    The fixture's random MCEM attends little to its codes: its output moves ~6e-5 x std and the
    final logits ~3e-6 x std (measured), so the check is on MCEM's output, far above float noise.
    """
    (mcem,) = _mcems(backend.model)
    outs = []
    hook = mcem.register_forward_hook(lambda module, args, out: outs.append(out[0]))
    x = torch.from_numpy(preprocess(data.coffee(), 320)[None])
    try:
        with torch.inference_mode():
            backend.model(x)
            backend.model(x)  # same grid twice: bit-identical
            mcem.code_grid = (12, 12)
            backend.model(x)
    finally:
        mcem.code_grid = None
        hook.remove()
    assert torch.equal(outs[0], outs[1])
    moved = float((outs[2] - outs[0]).abs().max() / outs[0].std())
    assert moved > 1e-5, moved


def _toy_scales(folder: Path, sizes, code_size: int | None = None) -> Path:
    import onnx

    for size in sizes:
        path = make_toy_onnx(folder / f"toy.s{size}.onnx", size=size)
        if code_size is not None:
            proto = onnx.load(str(path))
            proto.metadata_props.add(key="mcem_code_size", value=str(code_size))
            onnx.save(proto, str(path))
    return folder / f"toy.s{sizes[1]}.onnx"


def test_paper_on_graphs_picks_one_artifact_per_scale(tmp_path, batch):
    from mgd_rt.runtime.backends import load_backend

    main = _toy_scales(tmp_path, (192, 256, 320))
    with load_backend(main, device="cpu") as base:
        tta = TTA("paper", base, main, device="cpu")
        got = tta(batch)
        assert "NOT the authors' quirk" in tta.describe()
        tta.close()
    ref = paper_logits({s: toy_logits for s in (192, 256, 320)}, batch)
    np.testing.assert_allclose(got, ref, atol=1e-5)

    baked = tmp_path / "baked"
    baked.mkdir()
    main = _toy_scales(baked, (192, 256, 320), code_size=192)
    with Segmenter(main, device="cpu", tta="paper") as seg:
        assert "192 grid (the authors' quirk, baked" in seg.describe()
    (tmp_path / "toy.s320.onnx").unlink()
    with pytest.raises(MgdRtError, match=r"toy.s320.onnx is missing.*--image-size 192,256,320 --paper-codes"):
        Segmenter(tmp_path / "toy.s256.onnx", device="cpu", tta="paper")


def test_infer_cli_tta_flip_writes_the_library_matte(tmp_path):
    from mgd_rt.cli import main

    photo = tmp_path / "in" / "coffee.png"
    photo.parent.mkdir()
    Image.fromarray(data.coffee()).resize((120, 80)).save(photo)
    assert main(["infer", str(TINY_CHECKPOINT), str(photo), "-o", str(tmp_path / "out"), "--tta", "flip",
                 "--device", "cpu"]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "coffee.png"))
    with Segmenter(TINY_CHECKPOINT, device="cpu", tta="flip") as seg:
        (result,) = seg.stream([photo])
    np.testing.assert_array_equal(written, result.matte())


@pytest.mark.slow
def test_paper_on_exported_graphs_matches_pytorch(tmp_path):
    """The tiny model exported at 384/512/640 with --paper-codes: ONNX Runtime paper TTA = PyTorch's (minutes)."""
    from mgd_rt.export import export_onnx_sizes

    results = export_onnx_sizes([384, 512, 640], tmp_path / "tiny.onnx", paper_codes=True,
                                checkpoint=TINY_CHECKPOINT, verify_graph=False)
    assert [r.path.name for r in results] == ["tiny.s384.onnx", "tiny.s512.onnx", "tiny.s640.onnx"]
    photo = data.coffee()
    with Segmenter(tmp_path / "tiny.s512.onnx", device="cpu", tta="paper") as graphs, \
            Segmenter(TINY_CHECKPOINT, device="cpu", tta="paper") as eager:
        assert "384 grid (the authors' quirk, baked" in graphs.describe()
        (a,), (b,) = eager.stream([photo]), graphs.stream([photo])
    assert compare_logits(a.logits, b.logits, "fp32", "paper TTA: ONNX Runtime vs PyTorch")
