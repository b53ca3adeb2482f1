"""The PyTorch MGD-SAM2: fidelity to the authors' implementation, batching, bf16, structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CHECKPOINT, needs_cuda

import mgd_rt
from mgd_rt.errors import MgdRtError
from mgd_rt.model import MGDSAM2, get_variant, image2patches, make_views, patches2image
from mgd_rt.model.pair_conv import DepthPairConv
from mgd_rt.model.views import patch_major_views
from mgd_rt.numerics import compare_logits


@pytest.fixture(scope="module")
def tiny_model() -> MGDSAM2:
    return mgd_rt.load_model(TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def tiny_logits(tiny_model, tiny_io) -> np.ndarray:
    with torch.inference_mode():
        return tiny_model(torch.from_numpy(tiny_io["image"])).numpy()


def test_reproduces_the_authors_fixture(tiny_logits, tiny_io):
    result = compare_logits(tiny_io["mask_logits"], tiny_logits, "reference", "authors' tiny fixture")
    assert tiny_logits.shape == (2, 1, 512, 512)
    assert result, result.row()
    assert result.max_abs < 1e-5


def test_batch_of_two_equals_two_batches_of_one(tiny_model, tiny_io, tiny_logits):
    image = torch.from_numpy(tiny_io["image"])
    with torch.inference_mode():
        singles = np.concatenate([tiny_model(image[i : i + 1]).numpy() for i in range(2)])
    assert compare_logits(tiny_logits, singles, "rewrite", "batch 2 vs 1+1")


def test_bfloat16_autocast_stays_close_to_fp32(tiny_model, tiny_io, tiny_logits):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = tiny_model(torch.from_numpy(tiny_io["image"]))
    assert logits.dtype == torch.float32  # the DRM computes in FP32 under autocast (MGDSAM2.refine)
    result = compare_logits(tiny_logits, logits.numpy(), "bf16", "bf16 autocast")
    assert result, result.row()
    assert result.max_abs > 0  # autocast really ran in reduced precision


def test_auxiliary_mask_is_the_mask_token_hypernetwork(tiny_model, tiny_io, tiny_logits):
    with torch.inference_mode():
        logits, aux = tiny_model(torch.from_numpy(tiny_io["image"][:1]), with_aux=True)
    assert aux.shape == (5, 1, 64, 64)  # 5 views, stride 4 of a 256 view
    assert torch.isfinite(aux).all() and float(aux.std()) > 0
    assert compare_logits(tiny_logits[:1], logits.numpy(), "rewrite")


def test_views_layout_is_image_major_tl_tr_bl_br():
    image = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    patches = image2patches(image)
    assert patches.shape == (8, 1, 2, 2)
    assert patches[1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # image 0, top-right
    assert patches[6, 0].tolist() == image[1, 0, 2:, :2].tolist()  # image 1, bottom-left
    assert torch.equal(patches2image(patches), image)
    views = make_views(image)
    assert views.shape == (10, 1, 2, 2)
    assert views[8, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]  # global view of image 0: 2x2 means


def test_patch_major_views_are_the_same_patches_in_the_cpu_graph_order():
    image = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    with patch_major_views():
        patches = image2patches(image)
        assert torch.equal(patches2image(patches), image)
    assert patches.shape == (8, 1, 2, 2)
    # every image's TL, then every TR, BL, BR
    assert patches[2, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]  # top-right of image 0
    assert patches[5, 0].tolist() == image[1, 0, 2:, :2].tolist()  # bottom-left of image 1
    assert torch.equal(patches[[0, 2, 4, 6, 1, 3, 5, 7]], image2patches(image))  # outside the context: image-major


def test_patch_major_views_give_the_same_logits(tiny_model, tiny_io):
    """Every module cuts and joins the patches through views.py, so the order never reaches the logits
    (two images: with one the orders coincide)."""
    image = torch.from_numpy(tiny_io["image"][:1]).repeat(2, 1, 1, 1)
    image[1] = image[1].flip(-1)
    with torch.inference_mode():
        image_major = tiny_model(image).numpy()
        with patch_major_views():
            patch_major = tiny_model(image).numpy()
    assert compare_logits(image_major, patch_major, "rewrite", name="patch-major views")
    assert float(abs(image_major[0] - image_major[1]).max()) > 0.1  # two different images


def test_depth_pair_conv_two_conv2d_form_equals_conv3d():
    torch.manual_seed(0)
    conv = DepthPairConv(6)
    a, b = torch.randn(2, 6, 9, 7), torch.randn(2, 6, 9, 7)
    eager = conv.fuse(a, b)
    conv.as_conv2d = True
    assert torch.allclose(conv.fuse(a, b), eager, atol=1e-6)


def test_adapter_groups_lag_stages_by_one_block():
    variant = get_variant("b+")
    model = MGDSAM2(variant, 1024)
    adapter = model.image_encoder.trunk.mpadapter
    mapping = adapter.block_to_adapter
    assert len(mapping) == 24
    assert mapping[:4] == ["lightweight_mlp1_0", "lightweight_mlp1_1", "lightweight_mlp1_2", "lightweight_mlp2_0"]
    assert mapping[5:7] == ["lightweight_mlp2_2", "lightweight_mlp3_0"]
    assert mapping[21:] == ["lightweight_mlp3_15", "lightweight_mlp4_0", "lightweight_mlp4_1"]
    assert adapter.unused_prefixes == [
        "lightweight_mlp2_3", "lightweight_mlp3_16", "lightweight_mlp4_2", "lightweight_mlp4_3",
        "shared_mlp1", "shared_mlp2", "shared_mlp3", "shared_mlp4",
    ]
    # group g works at stage g's width: block 2 (first of stage 2) is adapted at 112 channels
    assert adapter.lightweight_mlp1_2[0].in_features == 112
    assert adapter.lightweight_mlp4_1[0].in_features == 896


@pytest.mark.parametrize("size", [500, 520, 0, 96])
def test_image_size_must_split_into_views_of_multiples_of_32(size):
    with pytest.raises(MgdRtError, match="S/2 must be a multiple of 32"):
        MGDSAM2(get_variant("tiny"), size)


def test_untrained_weights_are_seeded_and_every_module_contributes(tiny_io):
    image = torch.from_numpy(tiny_io["image"][:1])
    model = mgd_rt.load_model(variant="tiny")
    assert not model.trained
    with torch.inference_mode():
        logits = model(image)
        again = mgd_rt.load_model(variant="tiny")(image)
        assert compare_logits(logits.numpy(), again.numpy(), "rewrite")  # same seed, same weights
        std = float(logits.std())
        assert std > 0.05
        for prefix in [
            "image_encoder.trunk.mpadapter.",
            "image_encoder.trunk.pos_embed",
            "sam_mask_decoder.new_multifieldcrossatt.",
            "sam_mask_decoder.new_fusion1.",
            "sam_mask_decoder.new_fusion2.",
            "detail_enhance.img_er.",
            "no_mask_embed.",
        ]:
            ablated = mgd_rt.load_model(variant="tiny")
            for name, tensor in ablated.state_dict().items():
                if name.startswith(prefix) and "running_var" not in name and tensor.is_floating_point():
                    tensor.zero_()
            change = float((ablated(image) - logits).abs().max()) / std
            assert change > 0.03, f"{prefix} barely changes the output ({change:.3f} x std)"


@pytest.mark.parametrize("name", ["t", "s", "l"])
def test_sam21_sizes_build_with_their_trunks(name):
    variant = get_variant(name)
    model = MGDSAM2(variant, 1024)
    trunk = model.image_encoder.trunk
    assert len(trunk.blocks) == sum(variant.stages)
    assert trunk.channel_list == variant.channels[::-1]
    assert [i for i, b in enumerate(trunk.blocks) if b.window_size == 0] == list(variant.global_att_blocks)


@needs_cuda
def test_cuda_fp32_reproduces_the_fixture_and_autocast_stays_close(tiny_io):
    model = mgd_rt.load_model(TINY_CHECKPOINT, device="cuda")
    image = torch.from_numpy(tiny_io["image"]).cuda()
    # TF32 would change FP32 matmuls on Ampere and newer; the fixture is true FP32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        logits = model(image).cpu().numpy()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(image).float().cpu().numpy()
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = model(image).float().cpu().numpy()
    assert compare_logits(tiny_io["mask_logits"], logits, "reference", "cuda fp32")
    assert compare_logits(logits, bf16, "bf16", "cuda bf16 autocast")
    assert compare_logits(logits, fp16, "bf16", "cuda fp16 autocast")


def test_drm_computes_in_fp32_under_autocast(tiny_model, tiny_io, tiny_logits):
    """Under bf16 autocast the encoder and decoder run in bf16 and the DRM (``MGDSAM2.refine``) in FP32: every
    DRM convolution sees float32 input, the logits leave in float32, and the result is closer to FP32 than
    the whole network in bf16 (the DRM's half-precision full-resolution convolutions cost the most)."""
    image = torch.from_numpy(tiny_io["image"])
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, inputs, _out: seen.update(t.dtype for t in inputs))
             for m in tiny_model.detail_enhance.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_model(image)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {torch.float32} and mixed.dtype == torch.float32
    original = type(tiny_model).refine
    type(tiny_model).refine = lambda self, img, up: self.detail_enhance(img, up)  # the DRM under autocast too
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            everywhere = tiny_model(image).float().numpy()
    finally:
        type(tiny_model).refine = original
    mixed_cmp = compare_logits(tiny_logits, mixed.numpy(), "bf16", "bf16, DRM in FP32")
    everywhere_cmp = compare_logits(tiny_logits, everywhere, None, "bf16 everywhere")
    assert mixed_cmp, mixed_cmp.row()
    assert mixed_cmp.max_rel_std < everywhere_cmp.max_rel_std / 2, (mixed_cmp.row(), everywhere_cmp.row())
    assert mixed_cmp.max_rel_std > 1e-4  # bf16 really ran upstream: FP32 reruns differ by ~1e-6
