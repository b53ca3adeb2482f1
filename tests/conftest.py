"""Shared test fixtures: the authors' tiny checkpoint and the outputs their code computed."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# A copy of ../shared/fixtures (the authors' tiny checkpoint and the outputs their code computed)
# travels with the repository, so CI needs nothing beside the clone; MGD_RT_FIXTURES overrides it.
FIXTURES = Path(os.environ.get("MGD_RT_FIXTURES", Path(__file__).resolve().parent / "fixtures"))
TINY_CHECKPOINT = FIXTURES / "official_tiny_state_dict.pth"
TINY_IO = FIXTURES / "official_tiny_io.npz"
BPLUS_SHAPES = FIXTURES / "official_bplus_state_dict_shapes.json"

# MGD_RT_TEST_EXPORT_CACHE=DIR: export_onnx's graphs kept in DIR between sessions (tests/export_cache.py; not in CI)
if os.environ.get("MGD_RT_TEST_EXPORT_CACHE"):
    from export_cache import install

    install(Path(os.environ["MGD_RT_TEST_EXPORT_CACHE"]))


@pytest.fixture(scope="session")
def tiny_io() -> dict[str, np.ndarray]:
    """image (2, 3, 512, 512) normalised, mask_logits (2, 1, 512, 512) from the authors' code."""
    with np.load(TINY_IO) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def tiny_onnx_copy(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``copy(size=512, name="tiny.onnx")``: a fresh copy, in a folder of its own, of the fixture
    checkpoint's FP32 graph at S=size. Each size is exported once per session (~40 s each on
    2 cores), and every caller gets its own file, so tests writing beside it stay independent."""
    exported: dict[int, Path] = {}

    def copy(size: int = 512, name: str = "tiny.onnx") -> Path:
        if size not in exported:
            from mgd_rt.export import export_onnx

            out = tmp_path_factory.mktemp(f"export{size}") / "tiny.onnx"
            exported[size] = export_onnx(TINY_CHECKPOINT, image_size=size, output=out, verify_graph=False).path
        target = tmp_path_factory.mktemp("tiny") / name
        shutil.copyfile(exported[size], target)
        return target

    return copy


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


_skip_without_cuda = pytest.mark.skipif(not cuda_available(),
                                        reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def needs_cuda(test: Callable) -> Callable:
    """For a test that needs a CUDA GPU: skipped without one, and marked ``gpu``, so ``pytest -m gpu`` runs
    them all where one is lent (benchmarks/gpu_round.sh tests)."""
    return pytest.mark.gpu(_skip_without_cuda(test))

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO,
                                    reason="openvino is not installed (pip install -e '.[openvino]')")


@functools.cache
def openvino_cpu() -> tuple[str, list[str]]:
    """(this CPU's name, OpenVINO's OPTIMIZATION_CAPABILITIES for it), asked once a session."""
    import openvino as ov

    from mgd_rt.runtime.backends.openvino_backend import cpu_capabilities

    return cpu_capabilities(ov.Core())


needs_openvino_bf16 = pytest.mark.skipif(
    not HAVE_OPENVINO or "BF16" not in openvino_cpu()[1],
    reason=f"this CPU ({openvino_cpu()[0]}) has no BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES (needs AVX-512 BF16 "
    "or AMX)" if HAVE_OPENVINO else "openvino is not installed (pip install -e '.[openvino]')")


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract toy graph (S=32, runtime_helpers.make_toy_onnx): instant, for tests of the I/O around
    the model. Shared read-only: copy it before writing beside it."""
    from runtime_helpers import make_toy_onnx

    return make_toy_onnx(tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory):
    """$MGD_RT_CACHE in a fresh folder for one test module: calibration caches start empty."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MGD_RT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
