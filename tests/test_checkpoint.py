"""Checkpoints: every accepted format, strict accounting, SAM2.1 weights, and each error."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conftest import BPLUS_SHAPES, TINY_CHECKPOINT
from safetensors.torch import save_file

import mgd_rt
from mgd_rt.checkpoint import detect_variant, load_checkpoint, read_state_dict
from mgd_rt.errors import MgdRtError
from mgd_rt.model import MGDSAM2, get_variant

# what the authors' tiny model creates but never runs (tiny stages 1, 2, 2, 2)
TINY_UNUSED = [
    "lightweight_mlp2_2", "lightweight_mlp3_2", "lightweight_mlp4_1", "lightweight_mlp4_2",
    "shared_mlp1", "shared_mlp2", "shared_mlp3", "shared_mlp4",
]


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return torch.load(TINY_CHECKPOINT, map_location="cpu", weights_only=True)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap", ["model", "state_dict", "module_prefix", "safetensors"],
)
def test_every_accepted_format_reads_the_same_tensors(tmp_path, tiny_state, wrap):
    if wrap == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        path = tmp_path / "ckpt.pth"
        obj = {
            "model": {"model": tiny_state, "epoch": 3},
            "state_dict": {"state_dict": tiny_state},
            "module_prefix": {f"module.{k}": v for k, v in tiny_state.items()},
        }[wrap]
        torch.save(obj, path)
    _assert_same_tensors(read_state_dict(path), tiny_state)
    assert mgd_rt.load_model(path).trained


def test_strict_load_accounts_for_every_tensor(tiny_state):
    model = MGDSAM2(get_variant("tiny"), 512)
    report = load_checkpoint(model, TINY_CHECKPOINT)
    assert report.kind == "mgd-sam2" and report.variant == "tiny"
    assert sorted(report.loaded) == sorted(tiny_state) and len(report.loaded) == 464
    unused = {name.split(".")[3] for name in report.unused_by_forward}
    assert sorted(unused) == TINY_UNUSED
    assert len(report.unused_by_forward) == 4 * 8 + 4 * 2  # 4 adapters x 8 tensors, 4 shared Linears
    assert report.kept_init == [] and report.ignored == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, tiny_state[name])


def test_bplus_checkpoint_shapes_load_strictly_and_detect_bplus():
    shapes = json.loads(BPLUS_SHAPES.read_text())
    generator = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(v, generator=generator) if v else torch.tensor(0, dtype=torch.long))
        for k, v in shapes.items()
    }
    assert len(state) == 804
    assert detect_variant(state) == "b+"
    model = MGDSAM2(get_variant("b+"), 1024)
    report = load_checkpoint(model, "bplus-from-shapes", state_dict=state)
    assert len(report.loaded) == 804
    assert {n.split(".")[3] for n in report.unused_by_forward} == {
        "lightweight_mlp2_3", "lightweight_mlp3_16", "lightweight_mlp4_2", "lightweight_mlp4_3",
        "shared_mlp1", "shared_mlp2", "shared_mlp3", "shared_mlp4",
    }
    assert torch.equal(model.detail_enhance.out_conv.weight, state["detail_enhance.out_conv.weight"])


def test_sam21_checkpoint_loads_encoder_and_decoder(tmp_path):
    from sam2.build_sam import build_sam2

    sam2_model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    sam2_state = sam2_model.state_dict()
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam2_state}, path)  # Meta's release layout

    model = MGDSAM2(get_variant("t"), 1024)
    report = load_checkpoint(model, path)
    assert report.kind == "sam2" and report.variant == "t"
    ours = model.state_dict()
    for name in [
        "image_encoder.trunk.blocks.9.attn.qkv.weight",
        "image_encoder.neck.convs.0.conv.weight",
        "sam_mask_decoder.transformer.layers.1.mlp.layers.0.weight",
        "sam_mask_decoder.output_upscaling.0.weight",
    ]:
        assert torch.equal(ours[name], sam2_state[name])
    assert torch.equal(ours["no_mask_embed.weight"], sam2_state["sam_prompt_encoder.no_mask_embed.weight"])
    assert torch.equal(
        ours["pe_layer.positional_encoding_gaussian_matrix"],
        sam2_state["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )
    # SAM2.1 predicts 3 multimask outputs (4 mask tokens); MGD-SAM2 has 2
    assert "sam_mask_decoder.mask_tokens.weight" in report.kept_init
    assert any(k.startswith("detail_enhance.") for k in report.kept_init)
    assert any(k.startswith("memory_attention.") for k in report.ignored)
    assert not model.trained


def test_variant_mismatch_is_refused():
    with pytest.raises(MgdRtError, match="variant 'tiny' but variant 'b\\+' was asked for"):
        mgd_rt.load_model(TINY_CHECKPOINT, variant="b+")


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_incomplete_or_foreign_tensors_are_listed(tmp_path, tiny_state, problem):
    state = dict(tiny_state)
    if problem == "missing":
        del state["detail_enhance.out_conv.bias"]
        expected = "missing 1: detail_enhance.out_conv.bias \\[1\\]"
    elif problem == "unexpected":
        state["detail_enhance.extra.weight"] = torch.zeros(3, 4)
        expected = "unexpected 1: detail_enhance.extra.weight \\[3, 4\\]"
    else:
        state["no_mask_embed.weight"] = torch.zeros(1, 128)
        expected = "wrong shape 1: no_mask_embed.weight \\[1, 128\\] \\(model \\[1, 256\\]\\)"
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(MgdRtError, match=expected):
        mgd_rt.load_model(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(MgdRtError, match="notes.pth: not a PyTorch checkpoint|notes.pth: unreadable"):
        read_state_dict(path)


def test_truncated_checkpoint(tmp_path):
    data = TINY_CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MgdRtError, match="truncated.pth: unreadable checkpoint, truncated"):
        read_state_dict(path)


def test_pickle_that_needs_code_is_refused(tmp_path, tiny_state):
    path = tmp_path / "with_code.pth"
    torch.save({"model": tiny_state, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(MgdRtError, match="needs code to load, which mgd-rt refuses"):
        read_state_dict(path)


def test_broken_safetensors_and_missing_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(MgdRtError, match="broken.safetensors: not a readable safetensors file"):
        read_state_dict(path)
    with pytest.raises(MgdRtError, match="absent.pth: no such checkpoint file"):
        read_state_dict(tmp_path / "absent.pth")


def test_pickle_without_tensors(tmp_path):
    path = tmp_path / "config.pth"
    torch.save({"lr": 1e-4, "epochs": 10}, path)
    with pytest.raises(MgdRtError, match="holds no state dict of tensors"):
        read_state_dict(path)
