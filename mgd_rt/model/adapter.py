"""MPAdapter: the multi-view adapters MGD-SAM2 inserts before every Hiera block.

State-dict names follow the authors' (``image_encoder.trunk.mpadapter.lightweight_mlp{g}_{j}``):
group g (1..4) has width c_g (channels of Hiera stage g), creates ``stages[g-1] + 1`` adapters
and a ``shared_mlp{g}`` Linear. Groups lag the stages by one block, so the first block of a
stage is adapted by the previous group. Adapters past a group's block count and every
``shared_mlp*`` are never used by the forward pass; they exist so checkpoints load strictly.
"""

from __future__ import annotations

import torch
from sam2.modeling.backbones.hieradet import Hiera
from torch import nn

from mgd_rt.model.pair_conv import DepthPairConv
from mgd_rt.model.views import image2patches, patches2image, resize, split_views


class DWConv3DAdapter(nn.Module):
    """Fuses each view with the other scale: globals see resized locals and vice versa."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv_loc = DepthPairConv(dim)
        self.dwconv_glb = DepthPairConv(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, d) -> (N, H, W, d), N = 5B views."""
        views = x.permute(0, 3, 1, 2)  # (N, d, H, W)
        local_views, global_views = split_views(views)
        image = patches2image(local_views)  # (B, d, 2H, 2W)
        new_global = self.dwconv_glb.fuse(global_views, resize(image, global_views.shape[-2:]))
        new_image = self.dwconv_loc.fuse(image, resize(global_views, image.shape[-2:]))
        out = torch.cat([image2patches(new_image), new_global], dim=0)  # (N, d, H, W)
        return out.permute(0, 2, 3, 1) + x  # (N, H, W, d)


def _adapter_mlp(width: int, reduction: int) -> nn.Sequential:
    hidden = width // reduction
    return nn.Sequential(
        nn.Linear(width, hidden),
        DWConv3DAdapter(hidden),
        nn.GELU(),
        nn.Linear(hidden, width),
    )


class MPAdapter(nn.Module):
    """All adapter groups; ``adapt(x, block)`` applies the one that precedes Hiera block ``block``."""

    def __init__(self, widths: list[int], stages: list[int], reduction: int = 32) -> None:
        super().__init__()
        stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        # group g covers blocks [starts[g], starts[g+1]): the first block of each later
        # stage still belongs to the previous group
        starts = [0] + [end + 2 for end in stage_ends[:-1]]
        self.block_to_adapter: list[str] = []
        for block in range(sum(stages)):
            group = max(g for g, start in enumerate(starts) if block >= start)
            self.block_to_adapter.append(f"lightweight_mlp{group + 1}_{block - starts[group]}")
        for g, (width, depth) in enumerate(zip(widths, stages, strict=True), start=1):
            for j in range(depth + 1):
                self.add_module(f"lightweight_mlp{g}_{j}", _adapter_mlp(width, reduction))
            self.add_module(f"shared_mlp{g}", nn.Linear(width // reduction, width))
        used = set(self.block_to_adapter)
        self.unused_prefixes = sorted(name for name, _ in self.named_children() if name not in used)

    def adapt(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """(N, H, W, c) -> (N, H, W, c): x + A(x) for the adapter of Hiera block ``block``."""
        return x + self.get_submodule(self.block_to_adapter[block])(x)


class AdaptedHiera(Hiera):
    """sam2's Hiera with an MPAdapter before every block; returns each stage's last output."""

    def __init__(self, *, adapter_reduction: int = 32, **hiera_kwargs) -> None:
        super().__init__(**hiera_kwargs)
        stages = list(hiera_kwargs.get("stages", (2, 3, 16, 3)))
        widths = [self.blocks[end].dim_out for end in self.stage_ends]
        self.mpadapter = MPAdapter(widths, stages, adapter_reduction)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, s, s) -> [(N, c_g, s/4/2^(g-1), same) for g in 1..4], NCHW."""
        x = self.patch_embed(x)  # (N, H, W, C)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(self.mpadapter.adapt(x, i))
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
