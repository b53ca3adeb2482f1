"""Accuracy-aware INT8: `mgd-rt calibrate` on three tiny weight sets, forced recovery, budgets, reports.

Weight sets: the authors' tiny fixture and load_model's seeded untrained weights for seeds 0 (the
project's default seed) and 1, each exported once per module (~45 s each on 2 busy cores). No
threshold here is set from one of them: the forced cases derive their target from the graph's
own measured worst image, and the pass criterion is always TOLERANCES (or a stricter target).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from mgd_rt.errors import MgdRtError
from mgd_rt.numerics import TOLERANCES, Tolerance, compare_logits

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt not installed (pip install -e '.[int8]')")

from mgd_rt.calibration import accuracy_report  # noqa: E402
from mgd_rt.calibration.recovery import (  # noqa: E402
    RecoveryBudget,
    distance,
    image_error,
    node_costs,
    prune_unused,
    recover_accuracy,
    recoverable_nodes,
    target_tolerance,
)
from mgd_rt.export.graph import read_metadata  # noqa: E402
from mgd_rt.machine import VNNI_ISAS, cpu_isa  # noqa: E402

WEIGHTS = ("fixture", 0, 1)


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``mgd-rt`` in-process: (exit code, stdout)."""
    from mgd_rt.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def fp32_graph(tiny_onnx_copy, tmp_path_factory) -> Callable[[str | int], Path]:
    """``get(weights)``: the FP32 tiny graph (S=512) of "fixture" or of load_model's seed ``weights``,
    exported once per module; each call returns a fresh copy in a folder of its own."""
    import torch

    from mgd_rt.checkpoint import load_model
    from mgd_rt.export import export_onnx

    exported: dict[str | int, Path] = {}

    def get(weights: str | int) -> Path:
        if weights == "fixture":
            return tiny_onnx_copy()
        if weights not in exported:
            root = tmp_path_factory.mktemp(f"seed{weights}")
            torch.save(load_model(None, variant="tiny", seed=int(weights)).state_dict(), root / "tiny.pth")
            exported[weights] = export_onnx(root / "tiny.pth", image_size=512, output=root / "tiny.onnx",
                                            verify_graph=False).path
        target = tmp_path_factory.mktemp(f"copy{weights}") / "tiny.onnx"
        shutil.copyfile(exported[weights], target)
        return target

    return get


@pytest.fixture(scope="module")
def calibrated(fp32_graph, cache_env) -> Callable[[str | int], dict]:
    """``get(weights)``: `mgd-rt calibrate tiny.onnx` with every default, once per weight set."""
    done: dict[str | int, dict] = {}

    def get(weights: str | int) -> dict:
        if weights not in done:
            fp32 = fp32_graph(weights)
            code, out = _cli(["calibrate", str(fp32)])
            int8 = fp32.with_name("tiny.int8.onnx")
            report = json.loads(fp32.with_name("tiny.int8.report.json").read_text())
            done[weights] = {"code": code, "out": out, "fp32": fp32, "int8": int8, "report": report}
        return done[weights]

    return get


@pytest.mark.parametrize("weights", WEIGHTS)
def test_defaults_pass_on_three_weight_sets(calibrated, weights):
    """`mgd-rt calibrate` (defaults, recovery on) ends with a graph within TOLERANCES['int8'] on all six
    held-out photos, says PASS on its last line, and records what ran."""
    from mgd_rt.machine import cpu_info

    run = calibrated(weights)
    last = run["out"].strip().splitlines()[-1]
    assert run["code"] == 0, run["out"][-3000:]
    assert last.startswith(f"PASS: {run['int8']}")
    data = run["report"]
    tol = TOLERANCES["int8"]
    assert data["passed"] and data["tolerance"] == vars(tol)
    assert len(data["comparisons"]) == 6
    for c in data["comparisons"]:
        assert c["sigmoid_mae"] <= tol.sigmoid_mae and c["iou_top10"] >= tol.iou_top10, c
    # which kernels and settings ran
    runtime = data["runtime"]
    assert runtime["isa"] == cpu_isa(cpu_info()["flags"])
    exact_u8s8 = runtime["isa"] in VNNI_ISAS
    assert runtime["session_config"]["session.x64quantprecision"] == ("0" if exact_u8s8 else "1")
    assert runtime["optimized_ops"].get("MatMulIntegerToFloat", 0) >= 20  # the quantized MatMuls run as integer
    meta = read_metadata(onnx.load(str(run["int8"]), load_external_data=False))
    # where the check ran and its verdict travel in the graph, for the runtimes (Backend.warn_int8_check)
    assert (meta["int8_checked_on"], meta["int8_check"]) == ("onnxruntime", "pass")
    if data["recovery"] is None:  # the calibrated graph passed as it was
        assert "int8_recovered_nodes" not in meta
    else:  # recovery ran: what it restored is in the graph's metadata and the report
        assert data["recovery"]["passed"] and data["recovery"]["steps"]
        assert meta["int8_recovered_nodes"].split(",") == data["recovery"]["restored"]


def test_forced_recovery_reaches_a_stricter_target(calibrated, tmp_path):
    """A target halfway between the calibrated graph's worst top-10% IoU and 1 (so the first check fails
    whatever the weights): the sweep ranks groups, step 1 restores what the budget admits, bisection
    finds the fewest that pass, and the written graph passes its own independent check."""
    run = calibrated(1)
    fp32, int8 = run["fp32"], tmp_path / "tiny.int8.onnx"
    shutil.copyfile(run["int8"], int8)
    before = onnx.load(str(int8))
    measured = accuracy_report(fp32, int8, runtime=False)
    worst = measured.worst["iou_top10"]
    tol = target_tolerance(round(worst + (1 - worst) / 2, 4))
    initial = accuracy_report(fp32, int8, tolerance=tol, reuse=measured, runtime=False)
    assert not initial.passed
    # fp32=1: restoring everything is the FP32 graph, so the target is reachable by construction
    result = recover_accuracy(fp32, int8, initial=initial, budget=RecoveryBudget(steps=10, fp32=1.0), group_size=24)
    assert result.passed and result.written, "\n".join(result.lines())
    assert result.steps[0].count == len(result.candidates) and result.steps[0].passed
    chosen = result.chosen
    assert chosen is not None and chosen.passed and result.restored == chosen.nodes
    # bisection ended at a boundary: one group fewer than the chosen ones fails (or none at all did)
    failed = {s.count for s in result.steps if not s.passed} | {0}
    assert chosen.count - 1 in failed
    assert set(result.restored) <= set(recoverable_nodes(before))
    # the ranking is damage per compute, best first
    ratios = [c.ratio for c in result.candidates]
    assert ratios == sorted(ratios, reverse=True)
    # the file: what was restored is named in it, left-over Q/DQ pruned, and it passes on its own
    after = onnx.load(str(int8))
    meta = read_metadata(after)
    assert meta["int8_recovered_nodes"].split(",") == result.restored
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(after, "DequantizeLinear") < count(before, "DequantizeLinear")
    read = {i for n in after.graph.node for i in n.input} | {o.name for o in after.graph.output}
    assert all(any(o in read for o in n.output) for n in after.graph.node)  # nothing dangling
    check = accuracy_report(fp32, int8, tolerance=tol, reuse=measured, runtime=False)
    assert check.passed and check.worst["iou_top10"] >= tol.iou_top10
    # every step lists what it restored in the report
    steps = result.as_dict()["steps"]
    assert [len(s["restored"]) for s in steps] == [len(s.nodes) for s in result.steps]
    assert all(s["restored"] for s in steps)


def _openvino_check() -> tuple[object, str]:
    """(the CheckBackend on OpenVINO, in bf16 where this CPU has it, else f32; its float precision)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    import openvino as ov

    from mgd_rt.calibration.check_backend import CheckBackend

    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return CheckBackend("openvino", "bf16" if bf16 else None), "bf16" if bf16 else "f32"


def test_forced_recovery_on_openvino(calibrated, tmp_path):
    """The check and every step on OpenVINO (bf16 float layers where the CPU has them: the INT8 graph as
    `infer --backend openvino --dtype bf16` runs it). The target lies halfway between the INT8 graph's worst
    image there and what the FP32 graph itself gives there (restoring every node reaches it by construction);
    the written graph passes its own check on OpenVINO. The sweep ranks on ONNX Runtime."""
    check_on, floats = _openvino_check()
    run = calibrated(0)
    fp32, int8 = run["fp32"], tmp_path / "tiny.int8.onnx"
    shutil.copyfile(run["int8"], int8)
    measured = accuracy_report(fp32, int8, check_on=check_on)
    assert measured.check_on == check_on and measured.backend.startswith("openvino on CPU (")
    assert f"int8 (float layers in {floats}" in measured.backend and measured.runtime["backend"] == measured.backend
    assert measured.as_dict()["backend"] == measured.backend and measured.lines()[0].count("openvino on CPU") == 1
    runner = check_on.open(fp32)  # the FP32 graph on the same backend and precision: the best recovery can do
    ceiling = min(compare_logits(ref[None], runner.infer(x[None]), measured.tolerance).iou_top10
                  for x, ref in zip(measured.inputs, measured.references, strict=True))
    worst = measured.worst["iou_top10"]
    assert ceiling - worst > 2e-4, (worst, ceiling)
    tol = target_tolerance(round(worst + (ceiling - worst) / 2, 4))
    initial = accuracy_report(fp32, int8, tolerance=tol, reuse=measured, runtime=False, check_on=check_on)
    assert not initial.passed
    with pytest.raises(ValueError, match="initial was checked on OpenVINO CPU"):
        recover_accuracy(fp32, int8, initial=initial)  # steps on ONNX Runtime would judge another runtime
    result = recover_accuracy(fp32, int8, initial=initial, budget=RecoveryBudget(steps=10, fp32=1.0), group_size=24,
                              check_on=check_on)
    assert result.passed and result.written, "\n".join(result.lines())
    assert result.final.check_on == check_on and result.final.backend.startswith("openvino on CPU (")
    check = accuracy_report(fp32, int8, tolerance=tol, reuse=measured, runtime=False, check_on=check_on)
    assert check.passed and check.worst["iou_top10"] >= tol.iou_top10
    assert read_metadata(onnx.load(str(int8), load_external_data=False))["int8_recovered_nodes"].split(",") \
        == result.restored


def test_cli_checks_on_openvino(fp32_graph, cache_env):
    """`mgd-rt calibrate --backend openvino [--dtype bf16] --time 1`: the report says what ran the check, and
    FP32 was timed on OpenVINO too."""
    check_on, floats = _openvino_check()
    fp32 = fp32_graph("fixture")
    dtype = ["--dtype", "bf16"] if check_on.dtype else []
    code, out = _cli(["calibrate", str(fp32), "-n", "2", "--holdout-n", "2", "--backend", "openvino", *dtype,
                      "--time", "1", "--no-recover"])
    data = json.loads(fp32.with_name("tiny.int8.report.json").read_text())
    assert code == (0 if data["passed"] else 1)
    assert data["backend"].startswith("openvino on CPU (") and f"int8 (float layers in {floats}" in data["backend"]
    assert data["runtime"]["backend"] == data["backend"] and "session_config" not in data["runtime"]
    assert data["speed"]["fp32_ms"] > 0 and data["speed"]["int8_ms"] > 0
    assert f"ran on: {data['runtime']['cpu']} ({data['runtime']['isa']}), openvino on CPU" in out
    meta = read_metadata(onnx.load(str(fp32.with_name("tiny.int8.onnx")), load_external_data=False))
    assert meta["int8_checked_on"] == check_on.key == ("openvino-bf16" if check_on.dtype else "openvino")
    assert meta["int8_check"] == ("pass" if data["passed"] else "fail")


def test_budget_runs_out(fp32_graph, cache_env):
    """A target FP32 alone meets and a budget of one step and half the compute: exit code 1, the last
    line names the budget and the worst image, the graph stays as calibrated, nothing half-written."""
    fp32 = fp32_graph(0)
    code, out = _cli(["calibrate", str(fp32), "-n", "2", "--holdout-n", "3", "--target-accuracy", "0.9999",
                      "--recover-budget", "steps=1,fp32=0.5", "--recover-group", "40"])
    last = out.strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("FAIL: budget ran out at step 1: fp32=0.5 admits ")
    assert "worst image skimage:" in last and "IoU top10% " in last
    assert "need sigmoid MAE <= 0.01, IoU top10% >= 0.9999" in last
    data = json.loads(fp32.with_name("tiny.int8.report.json").read_text())
    assert not data["passed"] and not data["recovery"]["passed"] and not data["recovery"]["written"]
    assert len(data["recovery"]["steps"]) == 1
    step = data["recovery"]["steps"][0]
    assert step["restored"] and not step["passed"] and step["fp32_share"] <= 0.5
    assert data["recovery"]["budget"] == {"steps": 1, "fp32": 0.5, "speedup": None}
    meta = read_metadata(onnx.load(str(fp32.with_name("tiny.int8.onnx")), load_external_data=False))
    assert "int8_recovered_nodes" not in meta  # left as calibrated
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["tiny.int8.onnx", "tiny.int8.report.json", "tiny.onnx"]


def test_no_recover(fp32_graph, cache_env):
    fp32 = fp32_graph("fixture")
    code, out = _cli(["calibrate", str(fp32), "-n", "2", "--holdout-n", "2", "--target-accuracy", "0.9999",
                      "--no-recover"])
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("FAIL: recovery is off (--no-recover); worst image skimage:")
    data = json.loads(fp32.with_name("tiny.int8.report.json").read_text())
    assert data["recovery"] is None and not data["passed"]
    assert data["tolerance"]["iou_top10"] == 0.9999


@pytest.mark.parametrize(("flags", "message"), [
    (["--target-accuracy", "0.9"], "--target-accuracy 0.9: a top-10% IoU in [0.97, 1)"),
    (["--target-accuracy", "1"], "1 would mean FP32"),
    (["--recover-budget", "time=3"], "use steps=N, fp32=FRACTION and/or speedup=X"),
    (["--recover-budget", "steps=0"], "allow at least 1 step"),
    (["--recover-budget", "fp32=1.5"], "fp32=1.5: a share of the quantized compute"),
    (["--recover-budget", "speedup=1.2"], "speedup=1.2 needs timing: add --time RUNS"),
    (["--no-report", "--target-accuracy", "0.98"], "drop --no-report"),
    (["--recover-group", "0"], "--recover-group 0"),
    (["--dtype", "bf16"], "--dtype bf16: the check on onnxruntime runs the INT8 graph's float layers in fp32 only; "
                          "--backend openvino --dtype bf16 runs them in bf16"),
])
def test_flag_errors_before_calibrating(toy_onnx, tmp_path, capsys, flags, message):
    from mgd_rt.cli import main

    model = tmp_path / "m.onnx"
    shutil.copyfile(toy_onnx, model)
    assert main(["calibrate", str(model), *flags]) == 1
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # refused before anything was written


def test_build_shares_calibration_flags_without_recovery():
    """`mgd-rt build --int8 --calib-images` calibrates with the shared group and does not recover (no
    held-out check there: it builds for TensorRT); its options are calibrate()'s keyword arguments."""
    import inspect

    from mgd_rt.calibration import calibrate
    from mgd_rt.cli import build_parser
    from mgd_rt.cli.options import calibration_options

    build = build_parser()._subparsers._group_actions[0].choices["build"]
    args = build.parse_args(["m.onnx", "--int8", "--calib-images", "d", "-n", "8", "--method", "entropy"])
    options = calibration_options(args, placement=False)
    assert set(options) <= set(inspect.signature(calibrate).parameters)
    assert (options["num_images"], options["method"]) == (8, "entropy")
    for flag in ("--no-recover", "--target-accuracy=0.98", "--recover-budget=steps=2"):
        with pytest.raises(SystemExit):
            build.parse_args(["m.onnx", "--int8", flag])


def test_budget_and_target_parsing():
    assert RecoveryBudget.parse("steps=3, fp32=0.25,speedup=1.2") == RecoveryBudget(3, 0.25, 1.2)
    assert RecoveryBudget.parse("fp32=0.3") == RecoveryBudget(steps=10, fp32=0.3)
    assert str(RecoveryBudget(3, 0.25, 1.2)) == "steps=3,fp32=0.25,speedup=1.2"
    with pytest.raises(MgdRtError, match="steps takes a number"):
        RecoveryBudget.parse("steps=two")
    assert target_tolerance(None) == TOLERANCES["int8"]
    tight = target_tolerance(0.99)
    assert (tight.iou_top10, tight.sigmoid_mae) == (0.99, TOLERANCES["int8"].sigmoid_mae)


def test_cpu_isa():
    assert cpu_isa(["avx", "avx2", "fma"]) == "avx2"
    assert cpu_isa(["avx2", "avx512f", "avx512bw"]) == "avx512"
    assert cpu_isa(["avx2", "avx512f", "avx512_vnni"]) == "avx512_vnni"
    assert cpu_isa(["avx2", "avx_vnni"]) == "avx_vnni"
    assert cpu_isa(["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]) == "amx"
    assert cpu_isa([]) == "other"


def test_image_error_is_within_one_exactly_when_passing():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (1, 1, 64, 64))
    tol = Tolerance(sigmoid_mae=1e-2, iou_top10=0.97)
    assert image_error(compare_logits(ref, ref, tol), tol) == 0
    for scale in (0.01, 0.05, 0.1, 0.2, 0.5):
        c = compare_logits(ref, ref + rng.normal(0, scale, ref.shape), tol)
        assert (image_error(c, tol) <= 1) == c.passed, (scale, c.row())
    assert distance([c, c], tol) == pytest.approx(2 * image_error(c, tol))


def _graph_with_dangling_qdq():
    """x (1, 3, 8, 8) -> Conv (W 4x3x3x3, pad 1) -> (1, 4, 8, 8) -> reshape -> MatMul (16x8 @ 8x5), plus a
    Q -> DQ pair and an INT8 weight DQ that nothing reads."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
        numpy_helper.from_array(np.ones((8, 5), np.float32), "m"),
        numpy_helper.from_array(np.array([1, 16, 8], np.int64), "shape"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.ones((4,), np.int8), "w8"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "m"], ["y"], name="matmul"),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w8", "s", "z"], ["wdq"], name="wdq"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 5])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph))


def test_node_costs_and_pruning():
    model = _graph_with_dangling_qdq()
    costs = node_costs(model, ["conv", "matmul", "reshape"])
    assert costs == {"conv": 4 * 8 * 8 * 3 * 3 * 3, "matmul": 16 * 5 * 8, "reshape": 16 * 8}
    prune_unused(model)
    assert [n.name for n in model.graph.node] == ["conv", "reshape", "matmul"]
    assert {t.name for t in model.graph.initializer} == {"w", "m", "shape"}


def test_make_groups_isolates_heavy_nodes():
    from mgd_rt.calibration.recovery import make_groups

    units = [f"n{i}" for i in range(10)]
    costs = {n: 1.0 for n in units} | {"n4": 50.0}
    # 10 nodes in groups of <= 4: 3 groups' worth, average compute 59 / 3; n4 is heavier, so alone
    assert make_groups(units, costs, 4) == [["n0", "n1", "n2", "n3"], ["n4"], ["n5", "n6", "n7", "n8"], ["n9"]]
    assert make_groups(units, {n: 1.0 for n in units}, 4) == [units[:4], units[4:8], units[8:]]


@pytest.mark.slow
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_bplus_three_seeds(tmp_path, cache_env, seed):
    """Seeded B+ at S=1024 (seed 0: the project's default weights), `mgd-rt calibrate` with every default:
    in TOLERANCES['int8'] on the six held-out photos, by the defaults alone or after recovery."""
    import torch

    from mgd_rt.checkpoint import load_model
    from mgd_rt.export import export_onnx

    torch.save(load_model(None, variant="b+", seed=seed).state_dict(), tmp_path / "bplus.pth")
    fp32 = export_onnx(tmp_path / "bplus.pth", image_size=1024, output=tmp_path / "bplus.onnx",
                       verify_graph=False).path
    (tmp_path / "bplus.pth").unlink()
    code, out = _cli(["calibrate", str(fp32)])
    assert code == 0, out[-3000:]
    data = json.loads(fp32.with_name("bplus.int8.report.json").read_text())
    tol = TOLERANCES["int8"]
    assert data["passed"] and len(data["comparisons"]) == 6
    for c in data["comparisons"]:
        assert c["sigmoid_mae"] <= tol.sigmoid_mae and c["iou_top10"] >= tol.iou_top10, c
