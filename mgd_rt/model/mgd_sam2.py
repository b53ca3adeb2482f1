"""The assembled MGD-SAM2 network: views -> adapted Hiera + FPN -> decoder -> DRM."""

from __future__ import annotations

import torch
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingRandom, PositionEmbeddingSine
from torch import nn

from mgd_rt.model.adapter import AdaptedHiera
from mgd_rt.model.decoder import MGDMaskDecoder
from mgd_rt.model.drm import DetailRefinement
from mgd_rt.model.variants import Variant, check_image_size
from mgd_rt.model.views import make_views

DECODER_DIM = 256
# the attribute holding the DRM: its module path in traces and exported graphs (see MGDSAM2.refine)
DRM_MODULE = "detail_enhance"


class FeaturePyramid(FpnNeck):
    """sam2's FpnNeck without its sine position code, which nothing downstream reads."""

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        """[(N, c_g, ., .)] low to high stride -> [(N, 256, ., .)] same order."""
        out: list[torch.Tensor] = [None] * len(self.convs)  # type: ignore[list-item]
        prev = None
        last = len(self.convs) - 1
        for i in range(last, -1, -1):
            lateral = self.convs[last - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                # interpolated in float32, as sam2 does, whatever the autocast dtype
                top_down = nn.functional.interpolate(
                    prev.to(torch.float32), scale_factor=2.0, mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
            else:
                prev = lateral
            out[i] = prev
        return out


class MGDSAM2(nn.Module):
    """forward(image (B, 3, S, S) normalised) -> mask logits (B, 1, S, S)."""

    def __init__(self, variant: Variant, image_size: int = 1024) -> None:
        super().__init__()
        self.variant = variant
        self.image_size = check_image_size(image_size)
        self.trained = False  # set by the checkpoint loader
        channels = variant.channels
        trunk = AdaptedHiera(
            embed_dim=variant.embed_dim,
            num_heads=variant.num_heads,
            stages=variant.stages,
            global_att_blocks=variant.global_att_blocks,
            window_pos_embed_bkg_spatial_size=variant.window_pos_embed_bkg_spatial_size,
            window_spec=variant.window_spec,
        )
        neck = FeaturePyramid(
            position_encoding=PositionEmbeddingSine(DECODER_DIM, warmup_cache=False),
            d_model=DECODER_DIM,
            backbone_channel_list=channels[::-1],
            fpn_top_down_levels=[2, 3],
            # the authors' neck interpolates bilinearly whatever their config says
            fpn_interp_model="bilinear",
        )
        # scalp=1: the stride-32 level is dropped
        self.image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=1)
        self.sam_mask_decoder = MGDMaskDecoder(DECODER_DIM)
        self.detail_enhance = DetailRefinement(32)  # named DRM_MODULE
        self.pe_layer = PositionEmbeddingRandom(DECODER_DIM // 2)
        self.no_mask_embed = nn.Embedding(1, DECODER_DIM)

    def forward(
        self, image: torch.Tensor, with_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, S, S) -> logits (B, 1, S, S); with_aux adds M_s (5B, 1, S/8, S/8)."""
        views = make_views(image)  # (5B, 3, S/2, S/2)
        trunk_features = self.image_encoder.trunk(views)
        scalp = self.image_encoder.scalp
        feat_s0, feat_s1, embed = self.image_encoder.neck(trunk_features)[:-scalp]
        embed = embed + self.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (5B, 256, E, E)
        image_pe = self.pe_layer(tuple(embed.shape[-2:])).unsqueeze(0).to(embed.dtype)
        up, aux = self.sam_mask_decoder(embed, image_pe, feat_s0, feat_s1, with_aux)
        logits = self.refine(image, up)
        if with_aux:
            return logits, aux
        return logits

    def refine(self, image: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The DRM: image (B, 3, S, S) and the decoder's upsampled features -> logits (B, 1, S, S), in FP32
        even under autocast.

        Its full-resolution convolutions place the mask's edges, and half precision there costs more accuracy
        than everywhere else together: on seeded B+ at 1024 (CPU bf16 autocast, the retina photo) top-10% IoU
        against FP32 was 0.485 with the whole network in bf16 and 0.990 with the DRM alone in FP32, which is
        11% of the FLOPs (104 of 963 GFLOP). The same finding keeps these convolutions FP32 in INT8 graphs
        (mgd_rt.calibration.exclusions). Without autocast (FP32, and every export) this is the plain call.
        """
        device_type = image.device.type
        if not torch.is_autocast_enabled(device_type):
            return self.detail_enhance(image, up)
        with torch.autocast(device_type, enabled=False):
            return self.detail_enhance(image.float(), up.float())
