"""The pixel input (export --uint8-input): uint8 (B, S, S, 3) in, normalisation inside the artifact.

Same logits as the float32-input graph within TOLERANCES["fp32"], on every path that runs it:
the runtime (which then sends pixels), verify, the FP16 graph, TensorRT-RTX's parser and builder.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from conftest import TINY_CHECKPOINT

from mgd_rt.artifacts import read_sidecar
from mgd_rt.contract import INPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import compare_logits
from mgd_rt.runtime.backends import load_backend
from mgd_rt.runtime.processing import normalise_batch, to_pixels
from mgd_rt.runtime.samples import VERIFY_PHOTOS, sample_photos

SIZE = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(pixel-input export result with its FP16 graph, verified; the float32-input graph) at S=256."""
    from mgd_rt.export import export_onnx

    folder = tmp_path_factory.mktemp("pixels")
    pixels = export_onnx(TINY_CHECKPOINT, image_size=SIZE, output=folder / "tiny_px.onnx", fp16=True,
                         pixel_input=True)
    plain = export_onnx(TINY_CHECKPOINT, image_size=SIZE, output=folder / "tiny.onnx", verify_graph=False)
    return pixels, plain.path


def _photos(n: int = 3) -> np.ndarray:
    """(n, S, S, 3) uint8: scikit-image photos resized as the runtime does."""
    from mgd_rt.runtime.processing import resize_rgb

    return np.stack([resize_rgb(rgb, SIZE, SIZE) for _, rgb in sample_photos(VERIFY_PHOTOS)[:n]])


def test_pixels_round_trip_exactly():
    """to_pixels inverts normalise for every 8-bit value (what lets normalised callers use a pixel model)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    pixels[0, 0, :, :] = np.arange(256, dtype=np.uint8)[:48].reshape(16, 3)  # the extremes and more
    pixels[1, 0, :, :] = np.arange(208, 256, dtype=np.uint8).reshape(16, 3)
    np.testing.assert_array_equal(to_pixels(normalise_batch(pixels)), pixels)


def test_export_writes_a_verified_uint8_graph(exported):
    result, _ = exported
    assert result.passed and len(result.verification) == 2  # the FP32 and FP16 graphs, each vs PyTorch
    for path in (result.path, result.fp16_path):
        model = onnx.load(str(path), load_external_data=False)
        image = next(i for i in model.graph.input if i.name == INPUT_NAME)
        assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", SIZE, SIZE, 3]
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert {p.key: p.value for p in model.metadata_props}["input_format"] == "uint8"
    assert result.report.input_dtype == "uint8"
    # the normalisation is 5 nodes in front of the network: Cast, Transpose, Div, Sub, Div
    report_plain = onnx.load(str(exported[1]), load_external_data=False)
    assert len(onnx.load(str(result.path)).graph.node) - len(report_plain.graph.node) <= 5


def test_drm_inputs_include_the_normalised_image(exported):
    """In a pixel graph the DRM reads the image after the in-graph normalisation: the cut (drm_inputs) names
    that float32 (B, 3, S, S) tensor beside the decoder's features (5B, 32, S/8, S/8)."""
    from mgd_rt.artifacts import DRM_INPUTS_KEY
    from mgd_rt.export.graph import read_metadata

    result, _ = exported
    model = onnx.load(str(result.path), load_external_data=False)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    cut = read_metadata(model)[DRM_INPUTS_KEY].split(",")
    assert sorted(shapes[name] for name in cut) == [["5*batch", 32, SIZE // 8, SIZE // 8], ["batch", 3, SIZE, SIZE]]


def test_runtime_sends_pixels_with_the_float_graphs_logits(exported):
    result, plain = exported
    photos = _photos()
    with load_backend(plain) as reference, load_backend(result.path) as candidate:
        assert candidate.takes_pixels and not reference.takes_pixels
        expected = reference.infer(normalise_batch(photos))
        for got in (candidate.infer_pixels(photos), candidate.infer(normalise_batch(photos)),
                    reference.infer_pixels(photos)):
            assert compare_logits(expected, got, tolerance="fp32")
        with pytest.raises(MgdRtError, match=r"pixels must be uint8 \(B, 256, 256, 3\), got float32"):
            candidate.infer_pixels(photos.astype(np.float32))


def test_segmenter_masks_match_and_fp16_engine_path(exported, tmp_path):
    from mgd_rt.runtime.segmenter import Segmenter

    result, plain = exported
    photos = list(_photos(2))
    with Segmenter(result.path) as pixel_seg, Segmenter(plain) as float_seg:
        assert pixel_seg.sends_pixels and not float_seg.sends_pixels
        for got, want in zip(pixel_seg.batch(photos), float_seg.batch(photos), strict=True):
            assert np.abs(got - want).max() < 1e-5  # probabilities from logits equal within fp32
    with Segmenter(result.path, tta="flip") as flipped:  # augmentations run on normalised input
        assert not flipped.sends_pixels
        assert flipped.batch(photos)[0].shape == (SIZE, SIZE)


def test_calibration_refuses_a_pixel_graph(exported):
    from mgd_rt.calibration import calibrate

    with pytest.raises(MgdRtError, match=r"tiny_px.onnx: a pixel-input graph \(exported with --uint8-input\); "
                                         r"calibrate the float32-input graph"):
        calibrate(exported[0].path)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="tensorrt_rtx not installed (pip install -e '.[rtx]')")
def test_tensorrt_rtx_builds_a_pixel_engine(exported, tmp_path):
    """NVIDIA's parser and builder take the uint8 input; the sidecar and profile say (B, S, S, 3) uint8."""
    from mgd_rt.engine import build_engine

    engine = tmp_path / "tiny_px.fp32.engine"
    build_engine(exported[0].path, output=engine, batch="1:1:2", targets="sm89", opt_level=0,
                 library="tensorrt_rtx")
    side = read_sidecar(engine)
    assert side["profile"] == {"input": "image", "min": [1, SIZE, SIZE, 3], "opt": [1, SIZE, SIZE, 3],
                               "max": [2, SIZE, SIZE, 3]}
    assert side["inputs"] == [{"name": "image", "shape": [-1, SIZE, SIZE, 3], "dtype": "uint8"}]
    assert side["source"]["metadata"]["input_format"] == "uint8"
