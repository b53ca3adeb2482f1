"""The Hiera sizes MGD-SAM2 is built on, and the image sizes it accepts."""

from __future__ import annotations

from dataclasses import dataclass

from mgd_rt.errors import MgdRtError


@dataclass(frozen=True)
class Variant:
    """Trunk hyper-parameters; the decoder, MCEM, HMIM and DRM are the same for all."""

    name: str
    embed_dim: int
    num_heads: int
    stages: tuple[int, int, int, int]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    window_spec: tuple[int, int, int, int] = (8, 4, 14, 7)
    default_image_size: int = 1024

    @property
    def channels(self) -> list[int]:
        """Channels of Hiera stages 1..4."""
        return [self.embed_dim * 2**i for i in range(4)]


VARIANTS: dict[str, Variant] = {
    # global_att_blocks (12, 16, 10), not SAM2's (12, 16, 20): the authors' configs and
    # checkpoints use 10
    "b+": Variant("b+", 112, 2, (2, 3, 16, 3), (12, 16, 10), (14, 14)),
    "t": Variant("t", 96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7)),
    "s": Variant("s", 96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7)),
    "l": Variant("l", 144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
    # the small test variant of ../shared/fixtures/official_tiny_config.json
    "tiny": Variant("tiny", 32, 1, (1, 2, 2, 2), (4,), (14, 14), default_image_size=512),
}


def get_variant(name: str) -> Variant:
    key = name.lower().replace("plus", "+")
    if key not in VARIANTS:
        raise MgdRtError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def check_image_size(image_size: int) -> int:
    """S must split into two views whose side is a multiple of 32 (Hiera's total stride)."""
    if not isinstance(image_size, int) or image_size <= 0 or (image_size // 2) % 32 or image_size % 2:
        raise MgdRtError(
            f"image size {image_size} is not supported: S/2 must be a multiple of 32 "
            "(e.g. 512, 768, 1024, 1280)"
        )
    return image_size
