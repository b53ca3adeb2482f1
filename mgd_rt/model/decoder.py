"""The mask decoder: sam2's MaskDecoder weights plus MCEM and two HMIM levels."""

from __future__ import annotations

import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer

from mgd_rt.model.hmim import HMIM
from mgd_rt.model.mcem import MCEM
from mgd_rt.model.views import split_views


class MGDMaskDecoder(MaskDecoder):
    """No prompts: the output tokens attend to each view's stride-16 embedding, then the views
    exchange context (MCEM, HMIM) and are upscaled to stride 4."""

    def __init__(self, transformer_dim: int = 256) -> None:
        super().__init__(
            num_multimask_outputs=1,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=transformer_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=True,
            pred_obj_scores=True,
            pred_obj_scores_mlp=False,
            use_multimask_token_for_obj_ptr=True,
        )
        self.new_multifieldcrossatt = MCEM(transformer_dim, num_heads=8, mlp_dim=512)
        self.new_fusion1 = HMIM(transformer_dim)
        self.new_fusion2 = HMIM(transformer_dim)

    def forward(
        self,
        image_embed: torch.Tensor,
        image_pe: torch.Tensor,
        feat_s0: torch.Tensor,
        feat_s1: torch.Tensor,
        with_aux: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upscaled embedding of every view, and optionally the auxiliary mask M_s.

        image_embed (N, C, E, E) with no_mask_embed added; image_pe (1, C, E, E);
        feat_s0 (N, C, 4E, 4E) and feat_s1 (N, C, 2E, 2E): the neck's stride-4 and -8 levels.
        Returns up (N, C/8, 4E, 4E) and M_s (N, 1, 4E, 4E) or None.
        """
        n, c, h, w = image_embed.shape
        tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )  # (4, C): object score, IoU, two mask tokens
        tokens = tokens.unsqueeze(0).expand(n, -1, -1)
        hs, src = self.transformer(image_embed, image_pe, tokens)  # (N, 4, C), (N, E*E, C)
        src = src.transpose(1, 2).reshape(n, c, h, w)

        local_src, global_src = split_views(src)
        src, image = self.new_multifieldcrossatt(local_src, global_src)
        feat_s1, image = self.new_fusion2(feat_s1, image)
        feat_s0, _ = self.new_fusion1(feat_s0, image)

        upconv1, norm1, act1, upconv2, act2 = self.output_upscaling
        up = act1(norm1(upconv1(src) + self.conv_s1(feat_s1)))
        up = act2(upconv2(up) + self.conv_s0(feat_s0))  # (N, C/8, 4E, 4E)
        if not with_aux:
            return up, None
        # the authors' multimask output keeps mask token 1 (token 0 is the single-mask one)
        hyper = self.output_hypernetworks_mlps[1](hs[:, 3, :])  # (N, C/8)
        aux = hyper.unsqueeze(1) @ up.flatten(2)  # (N, 1, 4E*4E)
        return up, aux.reshape(n, 1, *up.shape[-2:])
