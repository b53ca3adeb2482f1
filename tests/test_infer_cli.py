"""``mgd-rt infer`` end to end on a toy contract graph (fast): formats, bad input, exit codes,
keep/overwrite, atomic outputs, and the light runtime (an .onnx run never imports torch)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from runtime_helpers import make_toy_onnx, toy_logits

from mgd_rt.cli import main
from mgd_rt.runtime.processing import postprocess, postprocess_uint8, preprocess


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_onnx(tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture()
def photos(tmp_path) -> Path:
    """A folder of good images (one in a sub-folder) mixed with every kind of bad file."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_photo(40, 60, 1)).save(root / "a.jpg", quality=95)
    Image.fromarray(_photo(50, 30, 2)).save(root / "b.png")
    Image.fromarray(_photo(33, 33, 3)[:, :, 0]).save(root / "sub" / "c.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is text, not a JPEG")
    data = (root / "a.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 3])
    (root / "folder.png").mkdir()
    (root / "readme.txt").write_text("ignored: not an image suffix")
    return root


def test_bad_files_fail_alone_and_nothing_is_written_for_them(toy, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(toy), str(photos), "-o", str(out)]) == 1
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["a.png", "b.png"]  # no --recursive: sub/ is not entered
    err = capsys.readouterr().err
    for name in ("empty.png", "notes.jpg", "cut.jpg", "folder.png"):
        assert sum(name in line for line in err.splitlines()) == 1, name  # one line per problem
    assert "readme.txt" not in err


def test_recursive_mirrors_the_tree_and_matte_values(toy, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(toy), str(photos), "-o", str(out), "--recursive", "--batch-size", "2"]) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]
    rgb = np.asarray(Image.open(photos / "b.png"))
    expected = postprocess_uint8(toy_logits(preprocess(rgb, 32)[None])[0, 0], 50, 30)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), expected)
    summary = capsys.readouterr().out
    assert "3 done" in summary and "3 failed" in summary and "images/s" in summary and "onnxruntime" in summary


@pytest.mark.parametrize("fmt, suffix, mode", [("matte", ".png", "L"), ("binary", ".png", "L"),
                                               ("rgba", ".png", "RGBA"), ("overlay", ".jpg", "RGB")])
def test_every_format(toy, tmp_path, fmt, suffix, mode):
    rgb = _photo(45, 70, 4)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    out = tmp_path / "out"
    raw = ["--foreground", "raw"] if fmt == "rgba" else []  # the photo's own colour under the alpha
    assert main(["infer", str(toy), str(tmp_path / "p.png"), "-o", str(out), "--format", fmt,
                 "--threshold", "0.6", *raw]) == 0
    img = Image.open(out / f"p{suffix}")
    assert img.mode == mode and img.size == (70, 45)
    logits = toy_logits(preprocess(rgb, 32)[None])[0, 0]
    matte = postprocess_uint8(logits, 45, 70)
    arr = np.asarray(img)
    if fmt == "binary":
        assert set(np.unique(arr)) <= {0, 255}
        np.testing.assert_array_equal(arr == 255, postprocess(logits, 45, 70) > 0.6)
    if fmt == "rgba":
        np.testing.assert_array_equal(arr[:, :, :3], rgb)
        np.testing.assert_array_equal(arr[:, :, 3], matte)
    assert [p.name for p in out.iterdir()] == [f"p{suffix}"]  # no temporary files left


def test_existing_outputs_are_kept_unless_overwrite(toy, tmp_path, capsys):
    Image.fromarray(_photo(20, 20)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.png").write_bytes(b"old")
    assert main(["infer", str(toy), str(tmp_path / "p.png"), "-o", str(out)]) == 0
    assert (out / "p.png").read_bytes() == b"old" and "1 skipped" in capsys.readouterr().out
    assert main(["infer", str(toy), str(tmp_path / "p.png"), "-o", str(out), "--overwrite"]) == 0
    assert Image.open(out / "p.png").size == (20, 20)


def test_inputs_are_never_overwritten(toy, tmp_path):
    Image.fromarray(_photo(20, 20)).save(tmp_path / "p.png")
    before = (tmp_path / "p.png").read_bytes()
    assert main(["infer", str(toy), str(tmp_path / "p.png"), "-o", str(tmp_path), "--overwrite"]) == 1
    assert (tmp_path / "p.png").read_bytes() == before


def test_globs_and_missing_inputs(toy, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(toy), str(photos / "*.png"), str(tmp_path / "nope.jpg"), "-o", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert "nope.jpg: no such file" in capsys.readouterr().err


def test_unwritable_output_directory_is_one_clear_error(toy, photos, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["infer", str(toy), str(photos / "b.png"), "-o", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the output directory" in err[0]


def test_usage_errors_exit_2(toy, photos, tmp_path):
    for extra in (["--format", "jpeg"], ["--tile-scale", "0.5"], ["--batch-size", "0"], ["--threshold", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            main(["infer", str(toy), str(photos), "-o", str(tmp_path / "o"), *extra])
        assert exc.value.code == 2, extra


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this ONNX Runtime has a CUDA provider: the refusal needs one without")
def test_device_cuda_without_a_gpu_provider_is_an_error(toy, photos, tmp_path, capsys):
    assert main(["infer", str(toy), str(photos / "b.png"), "-o", str(tmp_path / "o"), "--device", "cuda"]) == 1
    assert "--device cuda" in capsys.readouterr().err
    assert not (tmp_path / "o" / "b.png").exists()


def test_tile_reports_windows(toy, tmp_path, capsys):
    Image.fromarray(_photo(40, 90)).save(tmp_path / "wide.png")
    assert main(["infer", str(toy), str(tmp_path / "wide.png"), "-o", str(tmp_path / "o"), "--tile"]) == 0
    assert "windows run 8/8" in capsys.readouterr().out  # 40x90 at native scale: 2 x 4 windows of 32
    assert Image.open(tmp_path / "o" / "wide.png").size == (90, 40)


def test_dtype_int8_is_offered_and_the_graph_decides(toy, tmp_path, capsys):
    """--dtype int8 gets past argparse; an FP32 graph refuses it in one line (exit 1), an INT8 graph runs."""
    Image.fromarray(_photo(20, 30)).save(tmp_path / "p.png")
    assert main(["infer", str(toy), str(tmp_path / "p.png"), "-o", str(tmp_path / "a"), "--dtype", "int8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype int8: toy.onnx is a fp32 graph" in err[0] and "leave --dtype out" in err[0]
    assert not (tmp_path / "a" / "p.png").exists()
    int8 = make_toy_onnx(tmp_path / "toy.int8.onnx", precision="int8")
    assert main(["infer", str(int8), str(tmp_path / "p.png"), "-o", str(tmp_path / "b"), "--dtype", "int8"]) == 0
    assert "int8" in capsys.readouterr().out and (tmp_path / "b" / "p.png").is_file()


def _subcommand(module: str, name: str) -> argparse.ArgumentParser:
    """The parser ``mgd_rt.cli.<module>.register`` adds, on its own."""
    subparsers = argparse.ArgumentParser(prog="mgd-rt").add_subparsers()
    importlib.import_module(f"mgd_rt.cli.{module}").register(subparsers)
    return subparsers.choices[name]


def test_cli_choices_are_the_tables():
    from mgd_rt.model.variants import VARIANTS
    from mgd_rt.runtime.backends import BACKENDS
    from mgd_rt.runtime.outputs import FORMATS
    from mgd_rt.runtime.tta import TTA_MODES
    from mgd_rt.serve.triton_repo import INSTANCE_KINDS

    def offers(flag: str, values) -> str:
        return f"[{flag} {{{','.join(values)}}}]"  # how argparse's usage line shows a choice

    dtypes = list(dict.fromkeys(d for spec in BACKENDS.values() for d in spec.dtypes))
    assert dtypes == ["fp32", "fp16", "bf16", "int8"]
    infer_usage = _subcommand("infer", "infer").format_usage()
    for flag, values in (("--dtype", dtypes), ("--backend", ["auto", *BACKENDS]), ("--tta", TTA_MODES),
                         ("--format", FORMATS)):
        assert offers(flag, values) in infer_usage, flag
    eval_usage = _subcommand("eval", "eval").format_usage()
    assert offers("--dtype", dtypes) in eval_usage and offers("--tta", TTA_MODES) in eval_usage
    for module in ("smoke", "export", "demo"):
        assert offers("--variant", VARIANTS) in _subcommand(module, module).format_usage(), module
    assert offers("--instance-kind", INSTANCE_KINDS) in _subcommand("triton_repo", "triton-repo").format_usage()


_NO_TORCH = """
import sys
import numpy as np
from mgd_rt import Segmenter
from mgd_rt.cli import main
seg = Segmenter(sys.argv[1])
mask = seg(np.zeros((20, 30, 3), np.uint8))
assert mask.shape == (20, 30)
rc = main(["infer", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--format", "overlay", "--tile"])
assert rc == 0, rc
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "sam2", "torchvision")))
print("HEAVY:", loaded)
"""


def test_onnx_path_never_imports_torch(toy, tmp_path):
    Image.fromarray(_photo(40, 50)).save(tmp_path / "p.png")
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(toy), str(tmp_path / "p.png"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY: []" in proc.stdout, proc.stdout
    assert (tmp_path / "o" / "p.jpg").is_file()
