"""What ``mgd-rt app`` may take on: batch, queue and upload limits, and the API token (no web framework needed)."""

from __future__ import annotations

from dataclasses import dataclass

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.image_io import MAX_PIXELS

# a token on the command line shows in `ps`; the environment does not
TOKEN_ENV = "MGD_RT_APP_TOKEN"


@dataclass(frozen=True)
class AppSettings:
    """``max_batch``: requests gathered into one model call; ``queue_size``: requests that may wait
    (beyond it: 503 + Retry-After); ``batch_wait_ms``: how long the first waits for others to
    batch with; ``max_bytes`` / ``max_pixels``: one upload's limits (413); ``token``: bearer
    token the API requires (None: none); ``cache_bytes``: results kept for repeat requests of a photo
    (0: none)."""

    max_batch: int = 4
    queue_size: int = 16
    batch_wait_ms: float = 5.0
    max_bytes: int = 50_000_000
    max_pixels: int = MAX_PIXELS
    token: str | None = None
    retry_after_s: int = 2
    cache_bytes: int = 256_000_000

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise MgdRtError(f"--max-batch {self.max_batch}: must be at least 1")
        if self.queue_size < 1:
            raise MgdRtError(f"--queue-size {self.queue_size}: must be at least 1")
        if self.batch_wait_ms < 0:
            raise MgdRtError(f"--batch-wait-ms {self.batch_wait_ms}: must not be negative")
        if self.max_bytes < 1:
            raise MgdRtError(f"--max-bytes {self.max_bytes}: must be positive")
        if not 0 < self.max_pixels <= MAX_PIXELS:
            # the runtime's decoder refuses more anyway; a larger limit here would only be a promise it breaks
            raise MgdRtError(f"--max-pixels {self.max_pixels}: must lie in 1..{MAX_PIXELS} (the runtime's limit)")
        if self.token is not None and not self.token.strip():
            raise MgdRtError(f"--token / ${TOKEN_ENV}: empty; leave it out to serve without a token")
        if self.cache_bytes < 0:
            raise MgdRtError(f"--cache-mb {self.cache_bytes / 1e6:g}: must not be negative")
        if self.retry_after_s < 1:
            raise MgdRtError(f"retry_after_s {self.retry_after_s}: must be at least 1 second")
