"""Shared test fixtures: the authors' tiny checkpoint and the outputs their code computed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# A copy of ../shared/fixtures (the authors' tiny checkpoint and the outputs their code computed)
# travels with the repository, so CI needs nothing beside the clone; MGD_RT_FIXTURES overrides it.
FIXTURES = Path(os.environ.get("MGD_RT_FIXTURES", Path(__file__).resolve().parent / "fixtures"))
TINY_CHECKPOINT = FIXTURES / "official_tiny_state_dict.pth"
TINY_IO = FIXTURES / "official_tiny_io.npz"
BPLUS_SHAPES = FIXTURES / "official_bplus_state_dict_shapes.json"


@pytest.fixture(scope="session")
def tiny_io() -> dict[str, np.ndarray]:
    """image (2, 3, 512, 512) normalised, mask_logits (2, 1, 512, 512) from the authors' code."""
    with np.load(TINY_IO) as data:
        return {k: data[k] for k in data.files}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
