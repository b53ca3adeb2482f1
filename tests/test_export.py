"""ONNX export: rewrites equal eager, graph hygiene, metadata, ORT verification, FP16, TensorRT-RTX.

The tiny variant is exported once per module (FP32 + FP16, ~45 s on 2 cores); B+ at S=1024
is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CHECKPOINT, TINY_IO

from mgd_rt.artifacts import DRM_INPUTS_KEY, METADATA_KEYS, fp16_path
from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError
from mgd_rt.export import MAX_NODES, export_onnx, verify
from mgd_rt.export.forms import export_form
from mgd_rt.export.graph import graph_report, read_metadata
from mgd_rt.model import use_conv2d_pairs
from mgd_rt.numerics import compare_logits

CKPT = TINY_CHECKPOINT
IO = TINY_IO


@pytest.fixture(scope="module")
def tiny_model():
    import mgd_rt

    return mgd_rt.load_model(CKPT)


@pytest.fixture(scope="module")
def fixture_image() -> torch.Tensor:
    return torch.from_numpy(np.load(IO)["image"])  # (2, 3, 512, 512)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export_onnx(CKPT, output=out, fp16=True, verify_graph=False)


def test_rewrites_equal_eager(tiny_model, fixture_image):
    """Each export-form rewrite, alone and together, gives the eager logits (TOLERANCES['rewrite'])."""
    with torch.no_grad():
        eager = tiny_model(fixture_image).numpy()
        use_conv2d_pairs(tiny_model, True)
        try:
            pairs = tiny_model(fixture_image).numpy()
        finally:
            use_conv2d_pairs(tiny_model, False)
        with export_form(tiny_model):
            form = tiny_model(fixture_image).numpy()
        after = tiny_model(fixture_image).numpy()
    assert compare_logits(eager, pairs, "rewrite", name="conv2d pairs")
    assert compare_logits(eager, form, "rewrite", name="export form (pairs + constant codes)")
    # the context restores the eager model exactly
    assert np.array_equal(eager, after)
    assert "_get_pos_embed" not in dict(tiny_model.image_encoder.trunk.named_children())


@pytest.mark.parametrize("attention_op", [False, True], ids=["sdpa", "onnx-attention"])
@pytest.mark.parametrize("tokens", [(9, 11), (3, 5), (8, 12)], ids=["edges", "smaller-than-a-window", "no-padding"])
def test_padless_window_block_equals_sam2(tokens, attention_op):
    """One windowed Hiera block without its zero padding gives sam2's block output (TOLERANCES['rewrite']) with
    runs of whole, edge and corner windows, a side shorter than a window, and no padding at all."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    from mgd_rt.export.forms import padless_window_block

    torch.manual_seed(0)
    block = MultiScaleBlock(dim=32, dim_out=32, num_heads=2, window_size=4).eval()
    torch.nn.init.normal_(block.attn.qkv.bias, std=1.0)  # the padding's keys and values are this bias
    x = torch.randn(2, *tokens, 32)
    with torch.no_grad():
        expected = block(x).numpy()
        got = padless_window_block(block, attention_op)(x).numpy()
    assert got.shape == expected.shape
    assert compare_logits(expected, got, "rewrite", name=f"padless block {tokens}")


@pytest.mark.parametrize("attention_op", [False, True], ids=["sdpa", "onnx-attention"])
@pytest.mark.parametrize("tokens", [(10, 14), (12, 6), (2, 6), (8, 12)],
                         ids=["edges", "one-padded-side", "smaller-than-a-window", "no-padding"])
def test_padless_pooling_block_equals_sam2(tokens, attention_op):
    """A stage's first block (query pooling, 16 -> 32 channels) without its window padding gives sam2's block
    output (TOLERANCES['rewrite']): runs of whole, edge and corner windows, padding on one side, a side shorter
    than a window, and no padding at all (sam2's block takes even sides only)."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    from mgd_rt.export.forms import padless_pooling_block

    torch.manual_seed(0)
    block = MultiScaleBlock(dim=16, dim_out=32, num_heads=2, q_stride=(2, 2), window_size=4).eval()
    torch.nn.init.normal_(block.attn.qkv.bias, std=1.0)  # the padding's keys and values are this bias
    x = torch.randn(2, *tokens, 16)
    with torch.no_grad():
        expected = block(x).numpy()
        got = padless_pooling_block(block, attention_op)(x).numpy()
    assert got.shape == expected.shape == (2, tokens[0] // 2, tokens[1] // 2, 32)
    assert compare_logits(expected, got, "rewrite", name=f"padless pooling block {tokens}")


@pytest.mark.parametrize("stride", [(2, 2), (1, 2)], ids=["sam2", "rows-only"])
def test_max_pool_tokens_is_do_pool(stride):
    """Pooling channels-last tokens by maxima gives sam2's do_pool bit for bit; a pooling it does not cover
    (kernel other than the stride) goes to do_pool itself."""
    from sam2.modeling.backbones.hieradet import do_pool

    from mgd_rt.export.forms import max_pool_tokens

    torch.manual_seed(0)
    x = torch.randn(3, 8, 12, 16)
    pool = torch.nn.MaxPool2d(kernel_size=stride, stride=stride)
    got = max_pool_tokens(x, pool)
    assert got.shape == (3, 8 // stride[0], 12 // stride[1], 16)
    assert torch.equal(got, do_pool(x, pool))
    overlapping = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    assert torch.equal(max_pool_tokens(x, overlapping), do_pool(x, overlapping))


@pytest.mark.parametrize("shape", [(2, 7, 9, 32), (2, 10, 32)], ids=["tokens", "rows"])
def test_token_layer_norm_is_the_layer_norm(shape):
    from mgd_rt.export.forms import token_layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(32).eval()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(*shape) * 3 + 1
    with torch.no_grad():
        assert torch.equal(token_layer_norm(norm)(x), norm(x))


@pytest.mark.parametrize("with_norm", [False, True], ids=["plain", "batch-norm"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["alone", "residual"])
def test_summed_concat_conv_equals_the_concatenation(with_norm, with_residual):
    """A 1x1 convolution over concatenated parts, as the sum of one convolution per part (the BatchNorm folded
    into them, the residual the sum's first term), gives the concatenated form's numbers (TOLERANCES['rewrite']);
    its parameters keep nn.Conv2d's names, so checkpoints load unchanged."""
    from mgd_rt.model.concat_conv import ConcatConv, use_summed_concat_convs

    torch.manual_seed(0)
    conv = ConcatConv(3 * 16, 32).eval()
    assert list(conv.state_dict()) == ["weight", "bias"]
    norm = torch.nn.BatchNorm2d(32).eval() if with_norm else None
    if norm is not None:
        for tensor in (norm.weight, norm.bias, norm.running_mean):
            torch.nn.init.normal_(tensor)
        norm.running_var.uniform_(0.5, 2.0)
    parts = [torch.randn(2, 16, 9, 11) for _ in range(3)]
    residual = torch.randn(2, 32, 9, 11) if with_residual else None
    with torch.no_grad():
        expected = conv.of(*parts, norm=norm, residual=residual)
        reference = conv(torch.cat(parts, dim=1))
        reference = reference if norm is None else norm(reference)
        assert torch.equal(expected, reference if residual is None else reference + residual)
        assert use_summed_concat_convs(conv) == 1 and conv.as_sum
        summed = conv.of(*parts, norm=norm, residual=residual)
    assert compare_logits(expected.numpy(), summed.numpy(), "rewrite", name="summed concat conv")
    assert not torch.equal(summed, expected)  # the summed form really ran: its rounding differs


def test_cpu_form_runs_the_windowed_residual_stream_as_rows(tiny_model):
    """The CPU form's windowed blocks (those of the stages' first, query-pooling blocks too) add their residuals
    and run their MLP on (B, H * W, C) rows; the global blocks and the eager model keep sam2's (B, H, W, C)."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    blocks = [b for b in tiny_model.image_encoder.trunk.modules() if isinstance(b, MultiScaleBlock)]
    ranks: dict[str, list[int]] = {"eager": [], "form": []}

    def run(form: str) -> None:
        hooks = [b.mlp.register_forward_pre_hook(lambda m, args: ranks[form].append(args[0].dim())) for b in blocks]
        try:
            tiny_model(torch.zeros(1, 3, tiny_model.image_size, tiny_model.image_size))
        finally:
            for h in hooks:
                h.remove()

    with torch.no_grad():
        run("eager")
        with export_form(tiny_model, cpu_graph=True):
            run("form")
    assert ranks["eager"] == [4] * len(blocks)
    assert ranks["form"] == [3 if b.window_size > 0 else 4 for b in blocks] != ranks["eager"]


def test_windows_skip_the_padding(tiny_model, fixture_image):
    """The windowed blocks' projections (those of the stages' first, query-pooling blocks too) run on the H x W
    tokens, not on the windows' zero padding: the export form's trunk does exactly 2 C_in C_out fewer projection
    FLOPs per padding token, fewer attention FLOPs, and gives the eager logits (TOLERANCES['rewrite'])."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    blocks = [b for b in tiny_model.image_encoder.trunk.modules()
              if isinstance(b, MultiScaleBlock) and b.window_size > 0]
    projections = [p for b in blocks for p in (b.attn.qkv, b.attn.proj)]
    # rows each projection multiplies, summed over its calls (the form projects each run of windows apart)
    rows: dict[str, list[int]] = {"eager": [0] * len(projections), "form": [0] * len(projections)}
    tokens: list[int] = []  # (views x H x W) entering each block

    def count(form: str, i: int):
        def hook(m, args, out) -> None:
            rows[form][i] += args[0].numel() // m.in_features
        return hook

    def measure(form: str) -> tuple[np.ndarray, dict[str, int]]:
        hooks = [p.register_forward_hook(count(form, i)) for i, p in enumerate(projections)]
        if form == "eager":
            hooks += [b.register_forward_pre_hook(lambda m, args: tokens.append(args[0].numel() // m.dim))
                      for b in blocks]
        try:
            with FlopCounterMode(display=False) as flops, sdpa_kernel(SDPBackend.MATH):
                logits = tiny_model(fixture_image).numpy()
        finally:
            for h in hooks:
                h.remove()
        # the trunk's own: outside it the form's constant position codes leave out the dense code's matmul
        return logits, {str(op): n for op, n in flops.get_flop_counts()["MGDSAM2.image_encoder.trunk"].items()}

    with torch.no_grad():
        eager, eager_flops = measure("eager")
        with export_form(tiny_model, cpu_graph=True):
            form, form_flops = measure("form")
    # qkv and proj see the real tokens only (proj the pooled ones in a query-pooling block)
    pooled = [b.q_stride[0] * b.q_stride[1] if b.q_stride else 1 for b in blocks]
    assert rows["form"] == [r for n, p in zip(tokens, pooled, strict=True) for r in (n, n // p)]
    padded = [e > f for e, f in zip(rows["eager"], rows["form"], strict=True)]
    # tiny at 512: two blocks are padded (their qkv and proj): stage 4's first, whose 16 x 16 tokens per view
    # fill 2 x 2 windows of stage 3's 14 (pooled: 7), and stage 4's windowed one, whose 8 x 8 fill 2 x 2 of 7
    assert padded == [False] * 8 + [True] * 4
    assert [e / f for e, f in zip(rows["eager"][-4:], rows["form"][-4:], strict=True)] == [
        28 * 28 / (16 * 16), 14 * 14 / (8 * 8), 14 * 14 / (8 * 8), 14 * 14 / (8 * 8)]
    saved = sum(2 * p.in_features * p.out_features * (e - f) for p, e, f in zip(projections, rows["eager"],
                                                                                rows["form"], strict=True))
    linear = ("aten.addmm", "aten.mm")
    assert sum(eager_flops[op] - form_flops[op] for op in linear) == saved > 0
    assert 0 < form_flops["aten.bmm"] < eager_flops["aten.bmm"]
    assert compare_logits(eager, form, "rewrite", name="export form")


def test_graph_hygiene_and_io(tiny_export):
    model = onnx.load(str(tiny_export.path))
    report = graph_report(model, max_nodes=MAX_NODES)
    assert report.violations == []
    assert report.forbidden == {}
    assert report.non_batch_shape_nodes == 0
    assert report.nodes < MAX_NODES
    assert tiny_export.nodes_final <= tiny_export.nodes_exported
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    assert report.input_shape == ["batch", 3, 512, 512]
    assert report.output_shape == ["batch", 1, 512, 512]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    onnx.checker.check_model(model, full_check=True)


def test_metadata(tiny_export):
    from mgd_rt import __version__
    from mgd_rt.artifacts import file_sha256

    for path, precision in ((tiny_export.path, "fp32"), (tiny_export.fp16_path, "fp16")):
        meta = read_metadata(onnx.load(str(path), load_external_data=False))
        assert set(METADATA_KEYS) <= set(meta)
        assert meta["variant"] == "tiny"
        assert meta["image_size"] == "512"
        assert meta["precision"] == precision
        assert meta["opset"] == "20"
        assert meta["mean"] == "0.485,0.456,0.406"
        assert meta["std"] == "0.229,0.224,0.225"
        assert meta["mgd_rt_version"] == __version__
        assert meta["checkpoint_sha256"] == file_sha256(CKPT)


def test_drm_inputs_cut_the_graph_where_the_drm_starts(tiny_export):
    """The drm_inputs prop names the decoder's features (5B, 32, S/8, S/8): the graph from them and the image
    to the output holds every DRM convolution and nothing of the encoder or decoder (OpenVINO's bf16 cut)."""
    from onnx.utils import Extractor

    model = onnx.load(str(tiny_export.path))
    cut = read_metadata(model)[DRM_INPUTS_KEY].split(",")
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    assert len(cut) == 1 and shapes[cut[0]] == ["5*batch", 32, 64, 64]

    def convolutions(graph: onnx.GraphProto) -> dict[str, int]:
        """Conv nodes per top-level module their parameters are named after (the exporter's folded weights
        lose the name; a bias or weight keeps it)."""
        weights = {i.name for i in graph.initializer}
        found: dict[str, int] = {}
        for node in graph.node:
            modules = {name.split(".")[0] for name in node.input if name in weights and "." in name}
            if node.op_type == "Conv":
                for module in modules:
                    found[module] = found.get(module, 0) + 1
        return found

    tail = Extractor(model).extract_model([INPUT_NAME, *cut], [OUTPUT_NAME])
    whole = convolutions(model.graph)
    assert whole["detail_enhance"] == 12 and whole["image_encoder"] > 0 and whole["sam_mask_decoder"] > 0
    assert convolutions(tail.graph) == {"detail_enhance": 12}


def test_file_size(tiny_export):
    """The file is the graph's weights and constants plus < 2% protobuf; the unused adapters are
    not in it. Beyond the used parameters it holds the precomputed position codes."""
    model = onnx.load(str(tiny_export.path))
    report = graph_report(model)
    assert abs(tiny_export.file_bytes - report.initializer_bytes) / report.initializer_bytes < 0.02
    # the unused adapters (and the aux heads) are dropped: below all parameters + codes
    assert report.initializer_bytes < tiny_export.all_param_bytes + tiny_export.constant_bytes
    assert tiny_export.constant_bytes == report.initializer_bytes - tiny_export.used_param_bytes
    assert tiny_export.fp16_file_bytes < 0.55 * tiny_export.file_bytes


def test_verify_fp32_and_fp16(tiny_export, tiny_model):
    fp32 = verify(tiny_export.path, CKPT, model=tiny_model)
    assert fp32, "\n".join(fp32.lines())
    assert [c.name for c in fp32.comparisons] == ["astronaut", "chelsea", "coffee", "random x2"]
    assert max(c.max_rel_std for c in fp32.comparisons) < 1e-4
    fp16 = verify(tiny_export.fp16_path, CKPT, model=tiny_model)
    # within TOLERANCES["fp16"] (sigmoid MAE, top-10% IoU) on every input; measured MAE ~2e-5
    assert fp16, "\n".join(fp16.lines())
    assert min(c.iou_05 for c in fp16.comparisons) >= 0.999


def test_fp16_graph_types(tiny_export):
    model = onnx.load(str(tiny_export.fp16_path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > 100
    # the DRM's 10 full-resolution convolutions stay FP32 (fp16.py says why)
    weights = {t.name: t.data_type for t in model.graph.initializer}
    cast_to = {
        n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "Cast"
    }  # the converter stores blocked nodes' weights in FP16 and casts them back
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    fp32_convs = [
        n for n in convs
        if onnx.TensorProto.FLOAT in (weights.get(n.input[1]), cast_to.get(n.input[1]))
    ]
    assert len(fp32_convs) == 10 and len(convs) > 50
    assert graph_report(model).forbidden == {}


def test_verify_refuses_wrong_checkpoint(tiny_export, tmp_path):
    other = tmp_path / "other.pth"
    other.write_bytes(CKPT.read_bytes() + b"\0")
    with pytest.raises(MgdRtError, match="not the checkpoint"):
        verify(tiny_export.path, other)
    with pytest.raises(MgdRtError, match="pass --checkpoint"):
        verify(tiny_export.path, None)


def test_bad_input_writes_nothing(tmp_path):
    with pytest.raises(MgdRtError, match="no such checkpoint"):
        export_onnx(tmp_path / "missing.pth", output=tmp_path / "m.onnx", verify_graph=False)
    with pytest.raises(MgdRtError, match="does not exist"):
        export_onnx(CKPT, output=tmp_path / "nope" / "m.onnx", verify_graph=False)
    with pytest.raises(MgdRtError, match="image size"):
        export_onnx(CKPT, image_size=500, output=tmp_path / "m.onnx", verify_graph=False)
    with pytest.raises(MgdRtError):
        export_onnx(CKPT, variant="b+", output=tmp_path / "m.onnx", verify_graph=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_flags_match_script():
    """`mgd-rt export` and export/to_onnx.py share one parser builder."""
    import argparse

    from mgd_rt.cli import build_parser
    from mgd_rt.cli.export import add_export_arguments

    script = argparse.ArgumentParser()
    add_export_arguments(script)
    sub = build_parser()._subparsers._group_actions[0].choices["export"]
    assert sorted(a.dest for a in script._actions) == sorted(a.dest for a in sub._actions)
    assert sub.parse_args(["--batch", "4"]).batch == 4
    assert sub.parse_args([]).batch is None


def _rtx_build(path: Path) -> int:
    """Parse ``path`` with TensorRT-RTX's ONNX parser and build an SM 8.9 engine on the CPU (the build stage)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx not installed (pip install -e '.[rtx]')")
    from mgd_rt.engine import build_engine

    result = build_engine(path, output=path.with_suffix(".engine"), batch="1:1:2", targets="sm89",
                          library="tensorrt_rtx")
    return result.engine_bytes


def test_tensorrt_rtx_parse_and_build(tiny_export):
    assert _rtx_build(tiny_export.path) > 0
    assert _rtx_build(tiny_export.fp16_path) > 0


@pytest.mark.slow
def test_bplus_1024(tmp_path):
    result = export_onnx(None, variant="b+", image_size=1024, output=tmp_path / "bplus.onnx", fp16=True)
    assert result.report.violations == []
    assert result.nodes_final < MAX_NODES
    assert result.verification[0], "\n".join(result.verification[0].lines())
    assert max(c.sigmoid_mae for c in result.verification[1].comparisons) < 2e-3
    assert _rtx_build(result.path) > 0
    assert _rtx_build(fp16_path(result.path)) > 0


def test_export_is_the_same_file_whatever_the_hash_seed(tmp_path):
    """Two exports of one checkpoint in processes with different Python hash seeds are byte-identical
    (the passes used to leave a seed-dependent number of duplicate value_info entries)."""
    import hashlib
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}.onnx"
        code = ("from mgd_rt.export import export_onnx; "
                f"export_onnx({str(CKPT)!r}, image_size=256, output={str(out)!r}, verify_graph=False)")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        names = [v.name for v in onnx.load(str(out)).graph.value_info]
        assert len(names) == len(set(names))  # no duplicate shape entries
    assert digests[0] == digests[1]
