"""MGD-SAM2 in PyTorch, built from sam2's modules plus the adapters, MCEM, HMIM and DRM.

The variant table (:mod:`mgd_rt.model.variants`) is plain data and is imported eagerly; the
network's modules import torch and load on first use, so the CLI can offer the variant names
without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mgd_rt.model.variants import VARIANTS, Variant, check_image_size, get_variant

if TYPE_CHECKING:
    from mgd_rt.model.mgd_sam2 import MGDSAM2
    from mgd_rt.model.pair_conv import use_conv2d_pairs
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


def __getattr__(name: str) -> Any:
    # the torch parts, imported on first use
    if name == "MGDSAM2":
        from mgd_rt.model.mgd_sam2 import MGDSAM2

        return MGDSAM2
    if name == "use_conv2d_pairs":
        from mgd_rt.model.pair_conv import use_conv2d_pairs

        return use_conv2d_pairs
    if name in ("image2patches", "make_views", "patches2image"):
        from mgd_rt.model import views

        return getattr(views, name)
    raise AttributeError(f"module 'mgd_rt.model' has no attribute {name!r}")
