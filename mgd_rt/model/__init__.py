"""MGD-SAM2 in PyTorch, built from sam2's modules plus the adapters, MCEM, HMIM and DRM."""

from mgd_rt.model.mgd_sam2 import MGDSAM2
from mgd_rt.model.pair_conv import use_conv2d_pairs
from mgd_rt.model.variants import VARIANTS, Variant, check_image_size, get_variant
from mgd_rt.model.views import image2patches, make_views, patches2image

__all__ = [
    "MGDSAM2",
    "VARIANTS",
    "Variant",
    "check_image_size",
    "get_variant",
    "image2patches",
    "make_views",
    "patches2image",
    "use_conv2d_pairs",
]
