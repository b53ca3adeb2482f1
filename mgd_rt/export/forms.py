"""The export form of MGDSAM2: the same numbers, in modules that export to clean ONNX.

Three rewrites (four for the CPU graph), all reverted when the context exits (the eager model is
never changed for good):
- every depth-2 depthwise Conv3d runs as two depthwise Conv2d (no 5-D tensors, no Squeeze
  whose dimension the exporter cannot prove is 1, which becomes an If);
- Hiera's position embedding (a bicubic resize of a parameter plus a tiled window code, done
  on every call) is computed once for the exported size and used as a constant;
- the decoder's dense positional code (``pe_layer``: random Fourier features of the E x E grid)
  and MCEM's sine codes are constants for that size too (MCEM caches them per size already;
  one warm-up call fills the cache before tracing);
- for opset >= 23 (the CPU graph) Hiera's attention without query pooling becomes one ONNX Attention
  node on head-major tensors, without the four Transposes sam2's head split and merge cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from sam2.modeling.backbones.hieradet import MultiScaleAttention
from torch import nn

from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
from mgd_rt.model import MGDSAM2, use_conv2d_pairs

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


def onnx_attention(attn: MultiScaleAttention) -> Callable[[torch.Tensor], torch.Tensor]:
    """``attn``'s forward as one ONNX Attention (opset 23) on head-major (B, N, heads * d) tensors.

    sam2 splits q, k, v into (B, heads, N, d) for scaled_dot_product_attention and merges the heads back,
    which the exporter writes as four Transposes per block around the Attention node; Attention's 3-D form
    takes the (B, N, heads * d) tensors as they come out of the qkv projection (q | k | v, each head-major,
    the order sam2's reshape to (B, N, 3, heads, d) reads) and splits the heads itself. Eager, the op
    computes the same scaled dot-product attention. Only for blocks without query pooling, which reshape q.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C_in) -> (B, H, W, C_out)
        b, h, w, _ = x.shape
        q, k, v = attn.qkv(x).reshape(b, h * w, -1).chunk(3, dim=-1)  # each (B, H * W, heads * d)
        out = torch.onnx.ops.attention(q, k, v, q_num_heads=attn.num_heads, kv_num_heads=attn.num_heads)[0]
        return attn.proj(out.reshape(b, h, w, -1))

    return forward


@contextmanager
def export_form(model: MGDSAM2, attention_op: bool = False) -> Iterator[MGDSAM2]:
    """Switch ``model`` to its export form for its own ``image_size``; restore it on exit.

    Inside the context ``model(image)`` for image (B, 3, S, S) gives the eager logits
    (within ``TOLERANCES["rewrite"]``, asserted by tests/test_export.py). ``attention_op``: Hiera's
    attention as ONNX Attention nodes on head-major tensors (:func:`onnx_attention`; ONNX opset >= 23 only).
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
    original_pe_layer = model.pe_layer
    hiera_code = ConstantCode(hiera_pos)
    # an instance attribute shadows the class method only while the context is open. Set past
    # nn.Module.__setattr__: that would register a submodule in _modules, which attribute lookup
    # reaches only after the class's method, so the code was never called, and torch.export's
    # non-strict capture failed on the buffer path through it (the ONNX exporter then retried strict)
    object.__setattr__(trunk, "_get_pos_embed", hiera_code)
    model.pe_layer = ConstantCode(dense_pe)  # type: ignore[assignment]
    attentions = [m for m in trunk.modules() if isinstance(m, MultiScaleAttention) and m.q_pool is None] \
        if attention_op else []
    for attn in attentions:  # the same instance-attribute shadowing as the position code's
        object.__setattr__(attn, "forward", onnx_attention(attn))
    try:
        with torch.no_grad():
            # fills MCEM's per-size code cache, so tracing reads constants, not sin/cos ops
            # (on the model's device: an AOTInductor export for CUDA traces a model on the GPU)
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, model.image_size, model.image_size, device=device))
        yield model
    finally:
        del trunk._get_pos_embed
        for attn in attentions:
            del attn.forward
        model.pe_layer = original_pe_layer
        use_conv2d_pairs(model, False)


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
