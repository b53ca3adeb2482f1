"""`mgd-rt smoke` and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TINY_CHECKPOINT

from mgd_rt.cli import main


def test_smoke_reports_the_fixture_model(capsys):
    assert main(["smoke", "--checkpoint", str(TINY_CHECKPOINT), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == "tiny" and report["trained"] is True
    assert report["parameters"] == 7_877_640
    assert report["input_shape"] == [1, 3, 512, 512]
    assert report["output_shape"] == [1, 1, 512, 512]
    assert report["logit_std"] > 0.05


def test_smoke_text_output_names_untrained_weights(capsys):
    assert main(["smoke", "--variant", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny (UNTRAINED seeded weights)" in out
    assert "mask_logits [1, 1, 512, 512] float32" in out


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    result = subprocess.run(
        [sys.executable, "-m", "mgd_rt.cli", "smoke", "--checkpoint", str(bad)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bad.pth" in errors[0]


def test_bad_image_size_is_a_user_error(capsys):
    assert main(["smoke", "--variant", "tiny", "--image-size", "500"]) == 1
    assert "image size 500 is not supported" in capsys.readouterr().err
