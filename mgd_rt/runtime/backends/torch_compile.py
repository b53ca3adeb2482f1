"""What ``torch.compile`` in the PyTorch backend offers, without importing torch.

The CLI reads :data:`COMPILE_MODES` for its choices (``mgd-rt --help`` must not import torch);
:class:`mgd_rt.runtime.backends.torch_backend.TorchBackend` compiles with them and puts
inductor's cache where :func:`inductor_cache_dir` says.
"""

from __future__ import annotations

import os
from pathlib import Path

from mgd_rt.artifacts import user_cache

# torch.compile modes (inductor), in the order --help lists them; None (the flag left out) is eager
COMPILE_MODES: tuple[str, ...] = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
# the modes that capture CUDA graphs: reduce-overhead is nothing else, so it is refused off CUDA;
# max-autotune also autotunes kernels, which the CPU does too (without graphs)
CUDA_GRAPH_MODES: frozenset[str] = frozenset({"reduce-overhead", "max-autotune"})
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's own variable: a user's setting wins


def default_inductor_cache() -> Path:
    """Where compiled kernels persist unless ``$TORCHINDUCTOR_CACHE_DIR`` says otherwise:
    ``$XDG_CACHE_HOME/mgd-rt/inductor`` (``~/.cache/mgd-rt/inductor``), not torch's default under
    /tmp, which a reboot empties."""
    return user_cache("inductor")


def inductor_cache_dir(torch_default: str | None = None) -> Path:
    """The cache folder to use: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else
    :func:`default_inductor_cache`.

    ``torch_default``: torch's own default folder. Importing ``torch._inductor.config`` writes that
    folder into ``$TORCHINDUCTOR_CACHE_DIR``, so the variable holding exactly it means torch set it,
    not the user.
    """
    given = os.environ.get(CACHE_ENV)
    if given and (torch_default is None or os.path.abspath(given) != os.path.abspath(torch_default)):
        return Path(given)
    return default_inductor_cache()


__all__ = ["CACHE_ENV", "COMPILE_MODES", "CUDA_GRAPH_MODES", "default_inductor_cache", "inductor_cache_dir"]
