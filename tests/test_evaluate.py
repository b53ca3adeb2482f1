"""``mgd-rt eval``: pairing and skips, metrics equal to pysodmetrics called directly, known cases,
reference differences, JSON / CSV, the CLI. Tiny model at S=256 on small real photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CHECKPOINT
from PIL import Image

from mgd_rt.errors import MgdRtError
from mgd_rt.evaluate import METRIC_KEYS, evaluate, find_pairs, score_arrays

sod = pytest.importorskip("py_sod_metrics")
data = pytest.importorskip("skimage.data")
pytest.importorskip("torch")


def _photo_and_mask(photo: np.ndarray, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A real photo and a mask made by thresholding its luminance at the median."""
    img = Image.fromarray(photo).convert("RGB").resize(size)
    gray = np.asarray(img.convert("L"))
    return img, Image.fromarray(np.where(gray > np.median(gray), 255, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def dis_root(tmp_path_factory) -> Path:
    """DIS5K layout: 2 good pairs + one of each problem."""
    root = tmp_path_factory.mktemp("dis")
    (root / "im").mkdir()
    (root / "gt").mkdir()
    for name, photo in (("coffee", data.coffee()), ("chelsea", data.chelsea())):
        img, mask = _photo_and_mask(photo, (96, 64))
        img.save(root / "im" / f"{name}.jpg", quality=95)
        mask.save(root / "gt" / f"{name}.png")
    img, mask = _photo_and_mask(data.astronaut(), (64, 64))
    img.save(root / "im" / "orphan.jpg")  # no ground truth
    mask.save(root / "gt" / "lonely.png")  # no image
    (root / "im" / "broken.jpg").write_bytes(b"not a jpeg")
    mask.save(root / "gt" / "broken.png")
    img.save(root / "im" / "mismatch.png")
    mask.resize((32, 32)).save(root / "gt" / "mismatch.png")
    img.save(root / "im" / "rgbmask.png")
    img.save(root / "gt" / "rgbmask.png")  # an RGB "mask"
    return root


@pytest.fixture(scope="module")
def tiny():
    from mgd_rt import load_model

    return load_model(TINY_CHECKPOINT, image_size=256)


def test_pairing_lists_and_counts_every_skip(dis_root, tmp_path):
    pairs = find_pairs(dis_root)
    assert [p.stem for p in pairs.pairs] == ["chelsea", "coffee"]
    counts = {k: len(v) for k, v in pairs.skipped.items()}
    assert counts == {"unpaired": 2, "unreadable": 1, "bad_mask": 1, "size_mismatch": 1, "duplicate": 0}
    assert "lonely.png: no image named lonely" in " ".join(pairs.skipped["unpaired"])
    assert "3 channels" in pairs.skipped["bad_mask"][0]
    # flat folders pair the same way
    assert [p.stem for p in find_pairs(dis_root / "im", dis_root / "gt").pairs] == ["chelsea", "coffee"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MgdRtError, match="no images"):
        find_pairs(tmp_path / "empty", dis_root / "gt")
    with pytest.raises(MgdRtError, match="im/ and gt/"):
        find_pairs(tmp_path / "empty")


def test_known_cases_give_the_metric_definitions():
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 15:45] = 255  # 600 of 2400 pixels: foreground fraction 0.25
    perfect = score_arrays([gt], [gt])
    assert perfect["S"] == pytest.approx(1.0) and perfect["MAE"] == 0.0 and perfect["HCE"] == 0.0
    # pysodmetrics adds small epsilons: F and E of a perfect map land within 1e-3 of 1
    assert perfect["maxF"] == pytest.approx(1.0, abs=1e-3) and perfect["wF"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["maxE"] == pytest.approx(1.0, abs=1e-3)
    # the lowest of the 256 thresholds calls every pixel foreground: precision 0.25, recall 1
    all_fg = 1.3 * 0.25 / (0.3 * 0.25 + 1.0)
    empty = score_arrays([np.zeros_like(gt)], [gt])
    assert empty["MAE"] == pytest.approx(0.25) and empty["maxF"] == pytest.approx(all_fg) and empty["wF"] == 0.0
    inverted = score_arrays([255 - gt], [gt])
    assert inverted["MAE"] == pytest.approx(1.0) and inverted["maxF"] == pytest.approx(all_fg)
    assert inverted["wF"] == 0.0
    assert inverted["S"] < 0.05


def test_evaluate_is_pysodmetrics_on_the_runtime_mattes(dis_root, tiny, tmp_path):
    from mgd_rt.runtime import Segmenter

    plain = Segmenter(tiny, device="cpu")
    flip = Segmenter(plain.backend, tta="flip")
    report = evaluate([plain, flip], dis_root, output=tmp_path / "r.json", csv_path=tmp_path / "r.csv")
    assert [m.scored for m in report.models] == [2, 2] and report.scored == 2

    # pysodmetrics called directly on the mattes users get
    for seg, score in zip((plain, flip), report.models, strict=True):
        metrics = [sod.Smeasure(), sod.Emeasure(), sod.Fmeasure(), sod.WeightedFmeasure(), sod.MAE(),
                   sod.HumanCorrectionEffortMeasure()]
        for stem in ("chelsea", "coffee"):
            (result,) = seg.stream([dis_root / "im" / f"{stem}.jpg"])
            gt = np.asarray(Image.open(dis_root / "gt" / f"{stem}.png"))
            for m in metrics:
                m.step(pred=result.matte(), gt=gt)
        s, e, f, wf, mae, hce = (m.get_results() for m in metrics)
        direct = {"S": s["sm"], "maxE": e["em"]["curve"].max(), "meanE": e["em"]["curve"].mean(),
                  "maxF": f["fm"]["curve"].max(), "meanF": f["fm"]["curve"].mean(), "wF": wf["wfm"],
                  "MAE": mae["mae"], "HCE": hce["hce"]}
        assert score.metrics == pytest.approx(direct, rel=1e-12, abs=1e-12)

    ref, other = report.models
    assert ref.difference is None
    assert other.difference == pytest.approx({k: other.metrics[k] - ref.metrics[k] for k in METRIC_KEYS})
    table = report.table()
    assert "difference from the reference" in table and len(table.splitlines()) == 6

    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["pairs"] == 2 and len(saved["skipped"]["unpaired"]) == 2 and saved["tta"] == "none"
    assert saved["models"][1]["difference"]["MAE"] == pytest.approx(other.difference["MAE"])
    assert "TTA flip" in saved["models"][1]["backend"] and saved["models"][0]["images_per_second"] > 0
    assert {"pysodmetrics", "numpy", "python", "torch"} <= set(saved["environment"])
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 4 and rows[0].keys() == {"model", "image", *METRIC_KEYS}
    assert float(rows[0]["MAE"]) == pytest.approx(ref.per_image[0]["MAE"])


def test_cli_scores_a_checkpoint_and_fails_when_nothing_pairs(dis_root, tmp_path, capsys):
    from mgd_rt.cli import main

    flat_im, flat_gt = tmp_path / "im", tmp_path / "gt"
    flat_im.mkdir()
    flat_gt.mkdir()
    img, mask = _photo_and_mask(data.coffee(), (80, 60))
    img.save(flat_im / "a.jpg")
    mask.save(flat_gt / "a.png")
    out = tmp_path / "report.json"
    assert main(["eval", str(TINY_CHECKPOINT), "--images", str(flat_im), "--masks", str(flat_gt),
                 "--device", "cpu", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "S-measure" not in printed and "maxF" in printed and "ok: 1 pair(s)" in printed
    assert json.loads(out.read_text())["models"][0]["scored"] == 1

    mask.save(flat_gt / "b.png")  # nothing pairs: clear line, exit 1
    (flat_im / "a.jpg").rename(flat_im / "c.jpg")
    assert main(["eval", str(TINY_CHECKPOINT), "--images", str(flat_im), "--masks", str(flat_gt)]) == 1
    err = capsys.readouterr().err
    assert "no image/ground-truth pairs" in err and "c.jpg: no ground truth" in err


def test_every_precision_is_scored_through_its_artifact(dis_root, tiny, tmp_path_factory):
    """End to end on the tiny fixture: PyTorch, then its FP32, FP16 and INT8 graphs (S=256)."""
    from mgd_rt.artifacts import fp16_path
    from mgd_rt.calibration import calibrate
    from mgd_rt.export import export_onnx
    from mgd_rt.runtime import Segmenter

    work = tmp_path_factory.mktemp("artifacts")
    fp32 = export_onnx(TINY_CHECKPOINT, image_size=256, output=work / "tiny.onnx", fp16=True, verify_graph=False).path
    int8 = calibrate(fp32, images=dis_root / "im", num_images=2, output=work / "tiny.int8.onnx")
    report = evaluate([Segmenter(tiny, device="cpu"), fp32, fp16_path(fp32), int8], dis_root)
    torch_row, fp32_row, fp16_row, int8_row = report.models
    assert [m.scored for m in report.models] == [2, 2, 2, 2]
    # the FP32 graph scores what PyTorch scores, metric by metric
    for key in METRIC_KEYS:
        assert abs(fp32_row.difference[key]) <= 1e-4 * max(1.0, abs(torch_row.metrics[key])), key
    for row in (fp16_row, int8_row):
        assert set(row.difference) == set(METRIC_KEYS)
        assert all(np.isfinite(v) for v in row.metrics.values())
    assert abs(fp16_row.difference["MAE"]) < 1e-3 and abs(int8_row.difference["MAE"]) < 1e-2
    assert "int8" in int8_row.backend or int8_row.model.endswith("int8.onnx")
