"""The export form of MGDSAM2: the same numbers, in modules that export to clean ONNX.

Four rewrites (ten for the CPU graph), all reverted when the context exits (the eager model is
never changed for good):
- every depth-2 depthwise Conv3d runs as two depthwise Conv2d (no 5-D tensors, no Squeeze
  whose dimension the exporter cannot prove is 1, which becomes an If);
- Hiera's position embedding (a bicubic resize of a parameter plus a tiled window code, done
  on every call) is computed once for the exported size and used as a constant;
- the decoder's dense positional code (``pe_layer``: random Fourier features of the E x E grid)
  and MCEM's sine codes are constants for that size too (MCEM caches them per size already;
  one warm-up call fills the cache before tracing);
- Hiera's windowed blocks project the attention's output after cropping the zero padding the windows
  needed, not before (:func:`cropped_window_block`), or, for the CPU graph, compute nothing for that
  padding at all (:func:`padless_window_block`, :func:`padless_pooling_block`);
- for opset >= 23 (the CPU graph) Hiera's attention without query pooling becomes one ONNX Attention
  node on head-major tensors, without the four Transposes sam2's head split and merge cost, and every
  Hiera attention projects q, k and v apart (no Split of a packed projection);
- for the CPU graph, five layouts its runtimes handle better: Hiera's max pooling as maxima over the
  channels-last tokens (:func:`max_pool_tokens`), its layer norms and its windowed blocks' residual
  stream on (B, H * W, C) rows (:func:`token_layer_norm`, :func:`_residual_and_mlp`), every 1x1
  convolution over a concatenation (HMIM's fusions, the DRM's ME projector) as a sum of convolutions
  over the parts (:class:`mgd_rt.model.concat_conv.ConcatConv`), and the local patches patch-major, cut
  and joined by slices and concatenations (:func:`mgd_rt.model.views.patch_major_views`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleAttention, MultiScaleBlock, do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
from mgd_rt.model import MGDSAM2, use_conv2d_pairs
from mgd_rt.model.concat_conv import use_summed_concat_convs
from mgd_rt.model.views import patch_major_views

# Hiera's patch embedding has stride 4; the trunk sees S/2 views
_PATCH_STRIDE = 4
# the decoder's image embedding is at stride 16 of each S/2 view
_EMBED_STRIDE = 16


class ConstantCode(nn.Module):
    """Returns one precomputed tensor whatever it is asked; stands in for a positional code."""

    def __init__(self, code: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("code", code.detach().clone(), persistent=False)

    def forward(self, *args, **kwargs) -> torch.Tensor:  # noqa: ARG002 - same call signature as the original
        return self.code


def attend(
    attn: MultiScaleAttention,
    x: torch.Tensor,
    attention_op: bool,
    padding: PaddingKey | None = None,
    pool_queries: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attn``'s multi-head scaled dot-product attention of the tokens x (B, ..., C_in), its output projection
    left to the caller: -> (B, N_q, heads * d), N the tokens of x (its middle dimensions, flattened).

    ``attention_op``: one ONNX Attention (opset 23) on the (B, N, heads * d) tensors as they come, which splits
    the heads itself, with q, k and v projected by three products on the thirds of sam2's packed qkv weight: a
    Split of the packed projection runs as OpenVINO's reference Split (87 ms per B+ image at 1024); three
    products measured (B+ 1024, interleaved pairs, Emerald Rapids) 1.04x on OpenVINO fp32, 1.05x bf16, 1.04x
    on ONNX Runtime fp32, logits bit-identical in fp32. Else sam2's own form: the packed projection, q, k, v
    split into (B, heads, N, d) for scaled_dot_product_attention and the heads merged back, which the exporter
    writes as four Transposes around the attention. Eager, both compute the same attention. ``padding``: the
    window's zero tokens as one extra key (:class:`PaddingKey`). ``pool_queries``: (B, N, heads * d) ->
    (B, N_q, heads * d), the query pooling of a stage's first block; without it N_q = N.
    """
    heads = attn.num_heads
    mask = None
    if attention_op:
        tokens = x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 3 else x
        q, k, v = (F.linear(tokens, weight, bias) for weight, bias in _qkv_thirds(attn))  # each (B, N, heads * d)
        if pool_queries is not None:
            q = pool_queries(q)
        if padding is not None:
            k, v, mask = padding.extend(k, v, q.shape[1])
        return torch.onnx.ops.attention(q, k, v, attn_mask=mask, q_num_heads=heads, kv_num_heads=heads)[0]
    qkv = attn.qkv(x)
    b = qkv.shape[0]
    if qkv.dim() > 3:
        qkv = qkv.reshape(b, -1, qkv.shape[-1])
    n = qkv.shape[1]
    q, k, v = qkv.reshape(b, n, 3, heads, -1).unbind(2)  # each (B, N, heads, d)
    if pool_queries is not None:
        q = pool_queries(q.reshape(b, n, -1)).reshape(b, -1, heads, q.shape[-1])
    if padding is not None:
        k, v, mask = padding.extend(k.reshape(b, n, -1), v.reshape(b, n, -1), q.shape[1])
        k, v = k.reshape(b, n + 1, heads, -1), v.reshape(b, n + 1, heads, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, q.shape[1], -1)


def _qkv_thirds(attn: MultiScaleAttention) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight (C_out, C_in), bias (C_out,) or None) of the q, k and v projections packed in ``attn.qkv``."""
    width, bias = attn.qkv.out_features // 3, attn.qkv.bias
    # slices, not chunk: the exporter folds a Slice of a constant; a Split it leaves to the simplifier
    return [(attn.qkv.weight[i * width:(i + 1) * width], None if bias is None else bias[i * width:(i + 1) * width])
            for i in range(3)]


class PaddingKey:
    """The zero tokens sam2 pads a window with, as one key: ``count`` identical tokens whose projections are
    the qkv bias (k_pad, v_pad) weigh in the softmax as one key k_pad with ``log(count)`` added to its score,
    carrying the value v_pad. The padded queries' outputs are cropped, so they need not be computed at all.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor, count: int) -> None:
        self.key = key.reshape(1, 1, -1)  # (1, 1, C)
        self.value = value.reshape(1, 1, -1)
        self.count = count

    def extend(self, k: torch.Tensor, v: torch.Tensor, queries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v (B, N, C) -> k, v (B, N + 1, C) and the additive score mask (queries, N + 1) (ONNX Runtime's
        Attention wants the query length in the mask, not 1 to broadcast)."""
        b, n, c = k.shape
        k = torch.cat([k, self.key.expand(b, 1, c)], dim=1)
        v = torch.cat([v, self.value.expand(b, 1, c)], dim=1)
        mask = torch.zeros(queries, n + 1, dtype=k.dtype, device=k.device)
        mask[:, n] = math.log(self.count)
        return k, v, mask

    @staticmethod
    def of(attn: MultiScaleAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) of a zero token under ``attn``'s qkv projection: the k and v thirds of its bias."""
        _, (k_weight, k_bias), (_, v_bias) = _qkv_thirds(attn)
        zeros = k_weight.new_zeros(k_weight.shape[0])  # sam2's qkv without a bias
        return (zeros if k_bias is None else k_bias.detach()), (zeros if v_bias is None else v_bias.detach())


def onnx_attention(attn: MultiScaleAttention) -> Callable[[torch.Tensor], torch.Tensor]:
    """``attn``'s forward as one ONNX Attention (opset 23) on head-major (B, N, heads * d) tensors
    (:func:`attend`). Only for attentions without query pooling, which reshape q."""

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C_in) -> (B, H, W, C_out)
        b, h, w, _ = x.shape
        return attn.proj(attend(attn, x, attention_op=True).reshape(b, h, w, -1))

    return forward


def token_layer_norm(norm: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    """``norm`` (over the channels) on the tokens as one row each: (B, H, W, C) -> (B, H, W, C) through
    (B, H * W, C), the same numbers. OpenVINO 2026.4 fuses a LayerNormalization of 3-D tokens into one MVN;
    of 4-D ones it runs a mean, a subtraction and an RMS norm, about twice the time (B+ at 1024: 78 ms of 2.8 s,
    fp32, Emerald Rapids)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # already rows when x is (B, N, C)
        return F.layer_norm(rows, norm.normalized_shape, norm.weight, norm.bias, norm.eps).reshape(x.shape)

    return forward


def _window_runs(tokens: int, size: int) -> list[tuple[int, int, int]]:
    """(start, stop, window) along one side of ``tokens``: whole windows of ``size`` over the largest multiple
    of it, then one window of the tokens left over (the one sam2 pads up to ``size``)."""
    whole = tokens - tokens % size
    runs = [(0, whole, size)] if whole else []
    return runs + ([(whole, tokens, tokens - whole)] if tokens % size else [])


def _to_windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, h, w, C) -> (B * h/wh * w/ww, wh * ww, C), windows row-major within each image."""
    _, h, w, c = x.shape
    x = x.reshape(-1, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def _from_windows(x: torch.Tensor, h: int, w: int, wh: int, ww: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: (B * h/wh * w/ww, wh * ww, C) -> (B, h, w, C)."""
    c = x.shape[-1]
    x = x.reshape(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def padless_window_block(block: MultiScaleBlock, attention_op: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``block``'s forward without the window padding: the same numbers on the H x W tokens alone.

    sam2 pads the normed tokens with zeros up to a multiple of the window, then projects, attends and
    projects back every token, padding included: B+ at 1024 pads stage 3's 32 x 32 tokens per view to
    42 x 42 for its 14 x 14 windows (1.72x the tokens) and stage 4's 16 x 16 to 21 x 21 for 7 x 7. Here the
    windows are cut in up to four runs of equal shape (the whole windows; those of the right and bottom
    edge, narrower or shorter; the corner), each projected and attended on its real tokens with the padding
    folded into one extra key (:class:`PaddingKey`): B+ at 1024 963 -> 860 GFLOP (849 with
    :func:`padless_pooling_block`), 6-10% faster on ONNX Runtime and OpenVINO (fp32 and bf16, AMX). Each
    run is cut from the normed tokens and then projected, so the windows' layout moves C channels, not the
    3C of q, k, v: projecting the whole map first and cutting q, k, v was 5% slower on OpenVINO fp32, 7% on
    bf16, 2% on ONNX Runtime (B+ at 1024, interleaved pairs, Emerald Rapids). For windowed blocks without
    query pooling (the same width in and out).
    """
    attend_runs = _padless_attention(block, attention_op)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        return _residual_and_mlp(block, x, attend_runs(block.norm1(x)), rows=True)

    return forward


def _padless_attention(block: MultiScaleBlock, attention_op: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``block``'s windowed attention, output projection included, on the real tokens in runs of windows:
    normed tokens (B, H, W, C) -> (B, H / sh, W / sw, C_out), (sh, sw) the block's query stride (1 without
    query pooling). Shared by :func:`padless_window_block` and :func:`padless_pooling_block`."""
    attn = block.attn
    size = block.window_size
    key, value = PaddingKey.of(attn)
    sh, sw = block.q_stride if attn.q_pool is not None else (1, 1)

    def forward(normed: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = normed.shape
        rows = []
        for top, bottom, wh in _window_runs(h, size):
            parts = []
            for left, right, ww in _window_runs(w, size):
                ph, pw = wh // sh, ww // sw  # a window's (pooled) queries
                pad = size * size - wh * ww
                windows = _to_windows(normed[:, top:bottom, left:right], wh, ww)  # (Bw, wh ww, C)
                pool = partial(_pool_queries, attn, wh, ww) if attn.q_pool is not None else None
                out = attend(attn, windows, attention_op, PaddingKey(key, value, pad) if pad else None,
                             pool_queries=pool)
                # projected per run: a quantized MatMul after the Concat along H below broke OpenVINO 2026.4's
                # INT8 transformations (a per-row dequantization scale it then could not broadcast)
                parts.append(_from_windows(attn.proj(out), (bottom - top) // wh * ph, (right - left) // ww * pw,
                                           ph, pw))
            rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
        return torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]

    return forward


def padless_pooling_block(block: MultiScaleBlock, attention_op: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stage's first block (query pooling, C -> C_out channels) without its window padding: the same numbers.

    sam2 pads the normed tokens to whole windows of the previous stage's size, projects q, k, v for every
    token, max-pools q within each window and crops the pooled padding after the output projection (B+ at 1024:
    stage 3's 32 x 32 tokens per view padded to 42 x 42 for its 14 x 14 windows before stage 4). Here, as in
    :func:`padless_window_block`, the qkv projection runs on the H x W tokens and the windows go in runs of
    equal shape, the padding folded into one extra key, and q is pooled inside each run's windows: sam2's
    pooled queries, as its tokens and windows have even sides (its residual fails on odd ones), so no pooling
    cell mixes tokens and padding. For windows a whole number of pooling cells wide.
    """
    attend_runs = _padless_attention(block, attention_op)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H / sh, W / sw, C_out)
        normed = block.norm1(x)
        shortcut = max_pool_tokens(block.proj(normed), block.pool)  # (B, H / sh, W / sw, C_out)
        return _residual_and_mlp(block, shortcut, attend_runs(normed), rows=True)

    return forward


def _pool_queries(attn: MultiScaleAttention, wh: int, ww: int, q: torch.Tensor) -> torch.Tensor:
    """``attn``'s query pooling inside windows of wh x ww tokens: q (Bw, wh * ww, C) -> (Bw, wh * ww / stride^2, C)."""
    return max_pool_tokens(q.reshape(-1, wh, ww, q.shape[-1]), attn.q_pool).reshape(q.shape[0], -1, q.shape[-1])


def max_pool_tokens(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """sam2's ``do_pool`` for its max pooling (kernel = stride, no padding) on tokens with sides a whole
    number of cells: (B, H, W, C) -> (B, H / sh, W / sw, C) as one maximum over each cell's tokens, where
    do_pool transposes to (B, C, H, W) for MaxPool2d and back: two Transposes of the map per pooling (B+ at 1024:
    9 MaxPools, 18 Transposes; the 18 maxima here take 44 ms of OpenVINO's 2.7 s, fp32, Emerald Rapids). The same
    numbers: a maximum rounds nothing."""
    sh, sw = _pair(pool.stride)
    if _pair(pool.kernel_size) != (sh, sw) or _pair(pool.padding) != (0, 0) or _pair(pool.dilation) != (1, 1):
        return do_pool(x, pool)
    _, h, w, c = x.shape
    # two single-axis maxima, rows first: OpenVINO runs a maximum over two axes of a 6-D tensor with its
    # reference kernel (4x slower than the Transposes it replaces)
    rows = x.reshape(-1, sh, w * c).amax(dim=1)  # (B * H / sh, W * C)
    return rows.reshape(-1, h // sh, w // sw, sw, c).amax(dim=3)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _residual_and_mlp(block: MultiScaleBlock, x: torch.Tensor, projected: torch.Tensor,
                      rows: bool = False) -> torch.Tensor:
    """The rest of a windowed block after its attention's output projection: x, projected (B, H, W, C) ->
    (B, H, W, C).

    ``rows``: the residual stream as (B, H * W, C) rows, the same numbers. OpenVINO gives a 4-D sum the
    layout of its first input, and the stream starts channels-last (the patch embedding's convolution), so
    each 4-D sum reordered both its inputs and its output around the planar products (B+ at 1024: 150 ms of
    stage 1's 2 blocks, fp32, Emerald Rapids); 3-D rows have one layout.
    """
    shape = x.shape
    if rows:
        x, projected = x.reshape(shape[0], -1, shape[-1]), projected.reshape(shape[0], -1, shape[-1])
    x = x + block.drop_path(projected)
    x = x + block.drop_path(block.mlp(block.norm2(x)))
    return x.reshape(shape) if rows else x


def cropped_window_block(block: MultiScaleBlock, attention_op: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``block``'s forward with its attention's output projection after the window padding is cropped.

    sam2 pads the normed tokens with zeros up to a multiple of the window and projects every token, padding
    included, on the way in (qkv) and out (proj): B+ at 1024 pads stage 3's 32 x 32 tokens to 42 x 42 for its
    14 x 14 windows (1.72x the rows) and stage 4's 16 x 16 to 21 x 21 for 7 x 7. The output projection is per
    token, so cropping first gives the same tokens: 21 of B+'s 963 GFLOP at 1024, in the same one attention
    per block (the form of the graphs for GPUs; :func:`padless_window_block` skips the padding altogether).
    For windowed blocks without query pooling (the same width in and out).
    """
    attn = block.attn
    size = block.window_size

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        _, h, w, _ = x.shape
        windows, padded = window_partition(block.norm1(x), size)  # (B * windows, size, size, C)
        out = attend(attn, windows, attention_op)
        out = window_unpartition(out.reshape(-1, size, size, out.shape[-1]), size, padded, (h, w))
        return _residual_and_mlp(block, x, attn.proj(out))

    return forward


@contextmanager
def export_form(model: MGDSAM2, attention_op: bool = False, cpu_graph: bool = False) -> Iterator[MGDSAM2]:
    """Switch ``model`` to its export form for its own ``image_size``; restore it on exit.

    Inside the context ``model(image)`` for image (B, 3, S, S) gives the eager logits
    (within ``TOLERANCES["rewrite"]``, asserted by tests/test_export.py). ``attention_op``: Hiera's
    attention as ONNX Attention nodes on head-major tensors (:func:`onnx_attention`; ONNX opset >= 23 only).
    ``cpu_graph``: the windowed blocks skip their padding (:func:`padless_window_block`, and
    :func:`padless_pooling_block` for the stages' first blocks; B+ at 1024: 963 -> 849 GFLOP, faster on the
    CPU runtimes, but four attentions per block where there was one), else they crop it before the output
    projection (:func:`cropped_window_block`, 942); and the CPU layouts (:func:`max_pool_tokens`,
    :func:`token_layer_norm`, the residual rows, summed ConcatConv, patch-major local patches).
    """
    side = model.image_size // 2  # each view is (S/2, S/2)
    trunk = model.image_encoder.trunk
    tokens = side // _PATCH_STRIDE
    embed = side // _EMBED_STRIDE
    with torch.no_grad():
        # (1, S/8, S/8, C): interpolated parameter + tiled window code, NHWC like the tokens
        hiera_pos = trunk._get_pos_embed((tokens, tokens)).detach()
        # (1, 256, E, E), E = S/32
        dense_pe = model.pe_layer((embed, embed)).detach()
    use_conv2d_pairs(model, True)
    use_summed_concat_convs(model, cpu_graph)
    original_pe_layer = model.pe_layer
    hiera_code = ConstantCode(hiera_pos)
    # an instance attribute shadows the class method only while the context is open. Set past
    # nn.Module.__setattr__: that would register a submodule in _modules, which attribute lookup
    # reaches only after the class's method, so the code was never called, and torch.export's
    # non-strict capture failed on the buffer path through it (the ONNX exporter then retried strict)
    object.__setattr__(trunk, "_get_pos_embed", hiera_code)
    model.pe_layer = ConstantCode(dense_pe)  # type: ignore[assignment]
    windowed = [m for m in trunk.modules() if isinstance(m, MultiScaleBlock) and m.window_size > 0
                and m.attn.q_pool is None and m.dim == m.dim_out]
    rewrite = padless_window_block if cpu_graph else cropped_window_block
    for block in windowed:  # the same instance-attribute shadowing as the position code's
        object.__setattr__(block, "forward", rewrite(block, attention_op))
    pooling = [m for m in trunk.modules() if isinstance(m, MultiScaleBlock) and m.window_size > 0
               and m.q_stride and m.window_size % m.q_stride[0] == 0 and m.window_size % m.q_stride[1] == 0
               ] if cpu_graph else []
    for block in pooling:
        object.__setattr__(block, "forward", padless_pooling_block(block, attention_op))
    norms = [m for m in trunk.modules() if isinstance(m, nn.LayerNorm)] if cpu_graph else []
    for norm in norms:
        object.__setattr__(norm, "forward", token_layer_norm(norm))
    # the global blocks' attentions (the windowed blocks' forward above calls attend itself)
    attentions = [b.attn for b in trunk.modules() if isinstance(b, MultiScaleBlock) and b not in windowed
                  and b.attn.q_pool is None] if attention_op else []
    for attn in attentions:
        object.__setattr__(attn, "forward", onnx_attention(attn))
    try:
        with patch_major_views(cpu_graph):
            with torch.no_grad():
                # fills MCEM's per-size code cache, so tracing reads constants, not sin/cos ops
                # (on the model's device: an AOTInductor export for CUDA traces a model on the GPU)
                device = next(model.parameters()).device
                model(torch.zeros(1, 3, model.image_size, model.image_size, device=device))
            yield model
    finally:
        del trunk._get_pos_embed
        for module in [*windowed, *pooling, *attentions, *norms]:
            del module.forward
        model.pe_layer = original_pe_layer
        use_conv2d_pairs(model, False)
        use_summed_concat_convs(model, False)


class PixelInput(nn.Module):
    """``model`` behind a pixel input: uint8 (B, S, S, 3) RGB -> (B, 1, S, S) float32 logits.

    The runtime's normalisation (mgd_rt.runtime.processing.normalise), inside the artifact and in
    the same float32 order (/255, -mean, /std), so a client sends raw resized pixels: a quarter of
    the bytes and no float work on the host.
    """

    def __init__(self, model: MGDSAM2, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.image_size = model.image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # cast first: TensorRT takes a uint8 tensor into a Cast only (its Transpose refuses uint8)
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S)
        x = x / 255.0
        return self.model((x - self.mean) / self.std)
