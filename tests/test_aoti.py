"""AOTInductor .pt2 packages (mgd-rt export --aoti): export, metadata, the aoti backend, refusals, verify.

One tiny package at S=256 for the module (compiling it takes about two minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CHECKPOINT, needs_cuda

from mgd_rt.artifacts import (
    METADATA_KEYS,
    PACKAGE_METADATA_KEYS,
    file_sha256,
    format_floats,
)
from mgd_rt.checkpoint import load_model
from mgd_rt.cli import main
from mgd_rt.contract import IMAGENET_MEAN, IMAGENET_STD
from mgd_rt.errors import MgdRtError
from mgd_rt.export import model_metadata
from mgd_rt.export.aoti import AOTIResult, export_aoti
from mgd_rt.numerics import compare_logits
from mgd_rt.runtime import Segmenter
from mgd_rt.runtime.backends import backend_for, load_backend
from mgd_rt.runtime.backends.aoti_backend import AOTIBackend, read_package_metadata
from mgd_rt.version import __version__

SIZE = 256
MAX_BATCH = 4  # small, so a batch of 5 is split by the backend


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> AOTIResult:
    out = tmp_path_factory.mktemp("aoti") / "tiny.pt2"
    return export_aoti(TINY_CHECKPOINT, image_size=SIZE, output=out, max_batch=MAX_BATCH)


@pytest.fixture(scope="module")
def eager() -> torch.nn.Module:
    return load_model(TINY_CHECKPOINT, image_size=SIZE)


def _eager_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _doctored(package: Path, folder: Path, **changes: str | None) -> Path:
    """A copy of ``package`` whose model metadata JSON has ``changes`` (None: the key removed)."""
    out = folder / f"doctored_{'_'.join(changes)}.pt2"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".wrapper_metadata.json"):
                meta = json.loads(data)
                for key, value in changes.items():
                    if value is None:
                        meta.pop(key)
                    else:
                        meta[key] = value
                data = json.dumps(meta).encode()
            dst.writestr(info, data)
    return out


def test_export_writes_a_verified_package(package):
    assert package.path.is_file() and package.file_bytes == package.path.stat().st_size
    # the tiny model's FP32 weights are ~30 MB; the package holds them and the compiled code
    assert 20e6 < package.file_bytes < 200e6
    assert not list(package.path.parent.glob(".*.tmp"))  # the atomic write left no temporary file
    (report,) = package.verification
    assert report.passed and report.precision == "fp32" and report.runner.startswith("aoti on cpu")
    assert len(report.comparisons) >= 3  # photos and the random batch
    lines = package.lines()
    assert lines[0].startswith(f"wrote {package.path}") and lines[-1].startswith("PASS: export in")


def test_metadata_is_the_onnx_metadata_plus_the_package_facts(package, eager):
    meta = read_package_metadata(package.path)
    assert meta == package.metadata
    onnx_keys = set(METADATA_KEYS) - {"opset"}
    expected = {
        "variant": "tiny", "image_size": str(SIZE), "mean": format_floats(IMAGENET_MEAN),
        "std": format_floats(IMAGENET_STD), "precision": "fp32", "mgd_rt_version": __version__,
        "checkpoint_sha256": file_sha256(TINY_CHECKPOINT),
        "device": "cpu", "torch_version": torch.__version__, "min_batch": "1", "max_batch": str(MAX_BATCH),
    }
    assert set(expected) == onnx_keys | set(PACKAGE_METADATA_KEYS)
    assert {k: meta[k] for k in expected} == expected
    # export_onnx writes the same props for the same model (plus its opset)
    assert model_metadata(eager, file_sha256(TINY_CHECKPOINT), "fp32") == {k: expected[k] for k in onnx_keys}
    # AOTInductor's own record of what it compiled for, which the backend checks
    assert meta["AOTI_DEVICE_KEY"] == "cpu" and meta["AOTI_PLATFORM"] == "linux"


def test_segmenter_runs_the_package_like_eager(package, eager):
    assert backend_for(package.path).name == "aoti"
    segmenter = Segmenter(str(package.path))
    backend = segmenter.backend
    assert isinstance(backend, AOTIBackend)
    assert (backend.image_size, backend.precision, backend.variant, backend.trained) == (SIZE, "fp32", "tiny", True)
    rng = np.random.default_rng(3)
    for n in (1, 3, MAX_BATCH + 1):  # dynamic batch; 5 > max_batch goes as 4 + 1
        x = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
        logits = backend.infer(x)
        assert logits.shape == (n, 1, SIZE, SIZE) and logits.dtype == np.float32
        comparison = compare_logits(_eager_logits(eager, x), logits, tolerance="fp32", name=f"batch {n}")
        assert comparison, comparison.row()
    photo = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    mask = segmenter(photo)  # decoded, resized, normalised, run, resized back: the runtime around the package
    assert mask.shape == (300, 400)
    # the same photo through the PyTorch backend: same preprocessing, so the masks differ by the logits only
    # (sigmoid's slope is at most 1/4: a fp32-tolerance logit difference moves the mask less than 1e-5)
    assert np.abs(mask - Segmenter(eager)(photo)).max() < 1e-5


@pytest.mark.parametrize(("changes", "device", "message"), [
    ({"torch_version": "2.0.0"}, None, r"compiled by torch 2\.0\.0, this is torch .*re-export"),
    ({"device": "cuda", "AOTI_DEVICE_KEY": "cuda"}, "cpu", r"compiled for cuda, not cpu; run it with --device cuda"),
    ({"AOTI_CPU_ISA": "ASIMD SVE256"}, None, r"compiled for ASIMD SVE256 instructions, which this CPU lacks"),
    ({"AOTI_MACHINE": "aarch64"}, None, r"compiled for aarch64, this machine is"),
    ({"checkpoint_sha256": None}, None, r"not an mgd-rt package, its metadata lacks checkpoint_sha256"),
])
def test_refuses_a_package_built_for_something_else(package, tmp_path, changes, device, message):
    doctored = _doctored(package.path, tmp_path, **changes)
    with pytest.raises(MgdRtError, match=message) as info:
        AOTIBackend(doctored, device=device)
    assert doctored.name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_refuses_a_cuda_package_without_cuda(package, tmp_path):
    doctored = _doctored(package.path, tmp_path, device="cuda")
    with pytest.raises(MgdRtError, match=r"compiled for CUDA, which is not usable here"):
        AOTIBackend(doctored)


def test_refuses_another_dtype_and_non_packages(package, tmp_path):
    with pytest.raises(MgdRtError, match=r"--dtype bf16: tiny\.pt2 is a fp32 package; export a bf16 package"):
        load_backend(package.path, dtype="bf16")
    with pytest.raises(MgdRtError, match=r"--dtype int8 is not available on aoti"):
        load_backend(package.path, dtype="int8")
    not_zip = tmp_path / "model.pt2"
    not_zip.write_bytes(b"not a zip archive")
    with pytest.raises(MgdRtError, match=r"model\.pt2: not a readable \.pt2 package"):
        AOTIBackend(not_zip)


def test_cli_verify_passes(package, capsys):
    assert main(["verify", str(package.path), "--checkpoint", str(TINY_CHECKPOINT)]) == 0
    out = capsys.readouterr().out
    assert "aoti on cpu" in out and out.strip().splitlines()[-1].startswith("PASS in")


def test_cli_verify_refuses_wrong_checkpoint(package, tmp_path, capsys):
    other = tmp_path / "other.pth"
    shutil.copyfile(TINY_CHECKPOINT, other)
    with other.open("ab") as f:
        f.write(b"\0")  # another file, another hash
    assert main(["verify", str(package.path), "--checkpoint", str(other)]) == 1
    assert "is not the checkpoint tiny.pt2 was exported from" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--aoti", "--fp16"], "--fp16: for ONNX graphs, not --aoti packages"),
    (["--aoti", "--paper-codes"], "--paper-codes: for ONNX graphs"),
    (["--aoti", "--dtype", "fp16"], "--dtype fp16 on the CPU: use bf16 on the CPU"),
    (["--aoti", "--batch", "2", "--max-batch", "8"], "--batch 2 fixes the batch"),
    (["--aoti", "--min-batch", "4", "--max-batch", "2"], "batch range 4..2"),
    (["--aoti", "-o", "x.onnx"], "x.onnx: the output name must end in .pt2"),
    (["--dtype", "bf16"], "--dtype: for --aoti packages"),
])
def test_cli_export_refuses_before_compiling(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--variant", "tiny", *argv]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pixel_input_package(tmp_path, eager):
    """--uint8-input for a package: uint8 (B, S, S, 3) pixels in, the eager model's logits out (fp32)."""
    from mgd_rt.runtime.processing import normalise_batch

    result = export_aoti(TINY_CHECKPOINT, image_size=SIZE, output=tmp_path / "tiny_px.pt2", max_batch=4,
                         pixel_input=True)
    assert result.passed and result.metadata["input_format"] == "uint8"
    pixels = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with AOTIBackend(result.path) as backend:
        assert backend.takes_pixels
        comparison = compare_logits(_eager_logits(eager, normalise_batch(pixels)), backend.infer_pixels(pixels),
                                    tolerance="fp32", name="pixels")
        assert comparison, comparison.row()


@pytest.mark.slow
def test_bf16_static_batch_package(tmp_path, eager):
    """A bf16 package (autocast captured by torch.export) with a static batch of 2: a batch of 1 is padded."""
    result = export_aoti(TINY_CHECKPOINT, image_size=SIZE, output=tmp_path / "tiny.bf16.pt2", dtype="bf16",
                         min_batch=2, max_batch=2)
    assert result.passed and result.metadata["precision"] == "bf16"
    with AOTIBackend(result.path) as backend:
        assert (backend.precision, backend.min_batch, backend.max_batch) == ("bf16", 2, 2)
        x = np.random.default_rng(4).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
        logits = backend.infer(x)  # 2 + 1 padded to 2
        comparison = compare_logits(_eager_logits(eager, x), logits, tolerance="bf16", name="bf16 batch 3")
        assert comparison, comparison.row()
        # not FP32 numbers: the compiled code computes in bf16
        assert comparison.max_rel_std > 1e-3


@needs_cuda
def test_cuda_fp16_package(tmp_path, eager):
    result = export_aoti(TINY_CHECKPOINT, image_size=SIZE, output=tmp_path / "tiny.fp16.pt2", device="cuda",
                         dtype="fp16", max_batch=4)
    assert result.passed and result.metadata["device"] == "cuda" and result.metadata["AOTI_DEVICE_KEY"] == "cuda"
    with AOTIBackend(result.path) as backend:
        assert backend.torch_device.type == "cuda" and backend.precision == "fp16"
        x = np.random.default_rng(5).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
        comparison = compare_logits(_eager_logits(eager, x), backend.infer(x), tolerance="fp16", name="fp16")
        assert comparison, comparison.row()
    with pytest.raises(MgdRtError, match=r"compiled for cuda, not cpu"):
        AOTIBackend(result.path, device="cpu")
