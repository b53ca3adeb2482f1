#!/usr/bin/env python3
"""The standard benchmark matrix: MGD-SAM2 B+ at S=1024 on whatever machine this runs on.

Rows (each through the runtime's backends, via :func:`mgd_rt.bench.bench`):
  PyTorch FP32 eager (the baseline the authors' code gives), PyTorch bf16 autocast (CPU) or
  fp16 + bf16 autocast (CUDA), ONNX Runtime FP32, ONNX Runtime FP16 graph where ONNX Runtime
  has a GPU provider, ONNX Runtime INT8 (graph from mgd_rt.calibration), OpenVINO on the CPU (the
  FP32 graph in fp32 and, where the CPU has it, bf16; the INT8 graph), TensorRT FP16/INT8
  where a TensorRT backend and GPU exist, AOTInductor .pt2 packages (mgd-rt export --aoti: FP32, and
  FP16 on CUDA; compile time recorded apart). Beside each PyTorch eager row, the same precision through
  torch.compile (inductor, default mode; on CUDA also reduce-overhead: CUDA graphs), its compile time
  reported apart from the steady latency. Whatever cannot run is listed with the reason.

Writes benchmarks/results/<machine>.json (raw timings, environment, load average), .png and
.md (the summary table for the README). Run from a checkout, installed or not:

    python3 benchmarks/run_matrix.py                       # CPU: 3 rounds of warm-up 1, 3 timed calls
    python3 benchmarks/run_matrix.py --device cuda         # GPU: warm-up until stable, 50 calls
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository, so an uninstalled checkout runs too

import mgd_rt  # noqa: E402
from mgd_rt.artifacts import write_json_atomic  # noqa: E402
from mgd_rt.bench import Run, bench  # noqa: E402
from mgd_rt.bench.models import run_label  # noqa: E402
from mgd_rt.bench.report import computes  # noqa: E402
from mgd_rt.errors import MgdRtError, first_line  # noqa: E402
from mgd_rt.machine import default_device, load_average, machine_tag, slug  # noqa: E402
from mgd_rt.runtime.backends import BACKENDS  # noqa: E402

log = logging.getLogger("mgd_rt")
# the INT8 graph calibrate --backend openvino --dtype bf16 checked, beside <fp32 stem>.int8.onnx
OPENVINO_BF16_INT8 = ".int8-openvino-bf16.onnx"
# the code the work folder's files are made by (the imported package: a checkout or an installed copy)
PACKAGE = Path(mgd_rt.__file__).resolve().parent
# the flags that decide which CPU kernels run (README: results per CPU kind)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _ort_gpu() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    providers = ort.get_available_providers()
    gpu = any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
    return gpu, f"onnxruntime {ort.__version__} has providers {', '.join(providers)}"


def _changed_since(made: Path, *sources: Path) -> Path | None:
    """The first of ``sources`` (files, or packages of .py files) modified after ``made`` was written, else None.

    make's rule for the work folder: a graph, calibration or weight file is reused only while nothing it was
    made from has changed, so a matrix run after an export-form change never times the graph from before it."""
    made_at = made.stat().st_mtime
    for source in sources:
        for file in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            if file.is_file() and file.stat().st_mtime > made_at:
                return file
    return None


def _graph_sources(weights: WeightSet) -> list[Path]:
    """What an exported graph or .pt2 package of ``weights`` is made from: the model and export code, and the
    checkpoint file where there is one."""
    return [PACKAGE / "model", PACKAGE / "export", *([Path(weights.checkpoint)] if weights.checkpoint else [])]


def _names_its_drm(path: Path) -> bool:
    """Whether the graph at ``path`` carries the drm_inputs prop (exports before it lack it)."""
    import onnx

    from mgd_rt.artifacts import DRM_INPUTS_KEY

    return any(p.key == DRM_INPUTS_KEY for p in onnx.load(str(path), load_external_data=False).metadata_props)


def _export(args: argparse.Namespace, weights: WeightSet, workdir: Path, fp16: bool, unavailable: list[dict],
            cpu_graph: bool = False) -> Path | None:
    """The FP32 master graph (and FP16 beside it), exported once into ``workdir`` and reused.

    ``cpu_graph``: the CPU graph (export --opset 23, attention as ONNX Attention nodes) in
    ``<name>.opset23.onnx``, so each row's label names the graph it ran; else export's default opset (the
    graph TensorRT builds)."""
    try:
        from mgd_rt.artifacts import fp16_path
        from mgd_rt.export import export_onnx
        from mgd_rt.export.torch_export import CPU_OPSET
    except ImportError as exc:
        unavailable.append({"name": "onnxruntime (all)", "reason": f"export needs the export extra ({exc})"})
        return None
    opset = CPU_OPSET if cpu_graph else None
    suffix = f".opset{opset}" if opset else ""
    path = workdir / f"mgd_sam2_{slug(args.variant)}_{args.image_size}_{weights.tag}{suffix}.onnx"
    if path.is_file() and (not fp16 or fp16_path(path).is_file()):
        if changed := _changed_since(path, *_graph_sources(weights)):
            log.info("re-exporting %s: %s changed since", path, changed)
        elif _names_its_drm(path):
            log.info("reusing %s", path)
            return path
        else:
            log.info("re-exporting %s: it predates the drm_inputs prop (OpenVINO's bf16 rows need it)", path)
    t0 = time.perf_counter()
    try:
        export_onnx(weights.checkpoint, args.variant, args.image_size, output=path, fp16=fp16, verify_graph=False,
                    opset=opset)
    except Exception as exc:  # recorded: the PyTorch rows still run
        unavailable.append({"name": f"onnxruntime (all{', opset ' + str(opset) if opset else ''})",
                            "reason": f"export failed: {type(exc).__name__}: {exc}"})
        return None
    log.info("exported %s in %.0f s", path, time.perf_counter() - t0)
    return path


def _call(fn, *args, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (other stages' signatures may still grow)."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def _int8(fp32: Path, args: argparse.Namespace, unavailable: list[dict], calibrations: dict[str, dict],
          target: str | None = None, openvino_bf16: bool = False) -> Path | None:
    """The INT8 Q/DQ graph a user gets from ``mgd-rt calibrate`` with its defaults (held-out check, and the
    accuracy recovery when that fails): given, cached (with its report), or made here (``target``: the
    placement, None for calibrate's default). ``openvino_bf16``: checked and recovered where OpenVINO runs
    it with bf16 float layers (``--backend openvino --dtype bf16``), its own file. What the calibration said
    goes into ``calibrations``."""
    name = "openvino int8+bf16" if openvino_bf16 else "onnxruntime int8"
    given = args.int8 and not openvino_bf16
    out = Path(args.int8) if given else fp32.with_name(fp32.stem + (OPENVINO_BF16_INT8 if openvino_bf16
                                                                    else ".int8.onnx"))
    report = out.with_suffix(".report.json")
    changed = None if given or not out.is_file() else _changed_since(out, fp32, PACKAGE / "calibration")
    if changed:
        log.info("calibrating %s again: %s changed since", out, changed)
    elif out.is_file():
        log.info("using the INT8 graph %s", out)
        calibrations[out.name] = _calibration_summary(report, exit_code=None)
        return out
    if given:
        unavailable.append({"name": name, "reason": f"--int8 {args.int8}: no such file"})
        return None
    if importlib.util.find_spec("modelopt") is None and target != "cpu":
        unavailable.append({"name": name, "reason": "not available: nvidia-modelopt is not installed (the int8 extra)"})
        return None
    if not args.calibrate:
        unavailable.append({"name": name, "reason": f"no INT8 graph at {out} and --no-calibrate: make it with "
                            "`mgd-rt calibrate` or pass --int8 PATH"})
        return None
    from mgd_rt.cli import main as mgd_rt_main

    t0 = time.perf_counter()
    # scikit-image's calibration photos (calibrate's default set, none of them held out)
    argv = ["calibrate", str(fp32), "-o", str(out), "-n", str(args.calibration_photos),
            *(["--target", target] if target else []),
            *(["--backend", "openvino", "--dtype", "bf16"] if openvino_bf16 else [])]
    log.info("mgd-rt %s", " ".join(argv))
    try:
        code = mgd_rt_main(argv)  # 0: the graph passes its held-out check (after recovery if that ran)
    except Exception as exc:  # recorded, and the unchecked graph removed (a rerun calibrates again): the
        # other rows still run
        out.unlink(missing_ok=True)
        unavailable.append({"name": name, "reason": f"mgd-rt calibrate failed: {type(exc).__name__}: "
                            f"{first_line(exc)}"})
        return None
    if not out.is_file():
        unavailable.append({"name": name, "reason": f"mgd-rt calibrate exited {code} without writing {out.name}"})
        return None
    calibrations[out.name] = _calibration_summary(report, exit_code=code, seconds=time.perf_counter() - t0)
    log.info("calibrated %s in %.0f s (exit %d)", out, time.perf_counter() - t0, code)
    return out


def _calibration_summary(report: Path, exit_code: int | None, seconds: float | None = None) -> dict:
    """What the matrix keeps of a calibration report: its verdict and how much went back to FP32."""
    found: dict = {"report": report.name, "exit_code": exit_code, "seconds": seconds and round(seconds, 1)}
    if not report.is_file():
        return {**found, "verdict": "no report"}
    data = json.loads(report.read_text())
    recovery = data.get("recovery") or {}
    return {**found, "passed": data.get("passed"), "checked_on": data.get("backend"), "verdict":
            recovery.get("verdict") or ("PASS as calibrated" if data.get("passed") else "FAIL"),
            "recovered_nodes": len(recovery.get("restored", []) or []) if recovery else 0,
            "recovered_share": recovery.get("fp32_share", 0.0) if recovery else 0.0}


def _openvino(graphs: dict[str, Path], device: str, unavailable: list[dict], args: argparse.Namespace,
              calibrations: dict[str, dict]) -> list[Run]:
    """OpenVINO rows on the CPU: the FP32 graph in fp32 and bf16 (where OpenVINO lists BF16 for this CPU:
    AVX-512 BF16 or AMX), the INT8 Q/DQ graph, and where bf16 exists an INT8 graph calibrated and checked
    on OpenVINO with its float layers in bf16 (calibrate --backend openvino --dtype bf16), each where the
    backend, the CPU run and the graph exist."""
    names = {"fp32": "openvino fp32", "bf16": "openvino bf16", "int8": "openvino int8",
             "int8+bf16": "openvino int8+bf16"}
    common = None
    if "openvino" not in BACKENDS:
        common = "no openvino backend in mgd_rt.runtime.backends.BACKENDS (rows: " + ", ".join(BACKENDS) + ")"
    elif device.startswith("cuda"):
        common = "OpenVINO runs on the CPU; this run is on CUDA (run the matrix with --device cpu for its rows)"
    elif importlib.util.find_spec("openvino") is None:
        common = "openvino is not installed (pip install -e '.[openvino]')"
    if common is not None:
        unavailable.extend({"name": name, "reason": common} for name in names.values())
        return []
    import openvino as ov

    from mgd_rt.runtime.backends.openvino_backend import cpu_capabilities

    cpu, capabilities = cpu_capabilities(ov.Core())
    no_bf16 = (f"this CPU ({cpu}) has no bf16 arithmetic for OpenVINO (needs AVX-512 BF16 or AMX; it lists "
               f"{', '.join(capabilities)})")
    rows: list[Run] = []
    fp32, int8 = graphs.get("fp32"), graphs.get("int8")
    for precision in ("fp32", "bf16"):
        if fp32 is None:
            unavailable.append({"name": names[precision], "reason": "no FP32 ONNX graph (see above)"})
        elif precision == "bf16" and "BF16" not in capabilities:
            unavailable.append({"name": names[precision], "reason": no_bf16})
        else:
            rows.append(Run(str(fp32), "openvino", precision, fp32.name))
    if int8 is None:
        unavailable.append({"name": names["int8"], "reason": "no INT8 Q/DQ graph (see onnxruntime int8)"})
    else:
        rows.append(Run(str(int8), "openvino", None, int8.name))  # the graph's own precision
    if fp32 is not None and not args.openvino_int8_bf16:
        unavailable.append({"name": names["int8+bf16"], "reason": "--no-openvino-int8-bf16"})
    elif fp32 is not None and "BF16" in capabilities:
        checked = _int8(fp32, args, unavailable, calibrations, target="cpu", openvino_bf16=True)
        if checked is not None:
            rows.append(Run(str(checked), "openvino", "bf16", checked.name))
    elif fp32 is not None:
        unavailable.append({"name": names["int8+bf16"], "reason": no_bf16})
    return rows


def _aoti(args: argparse.Namespace, weights: WeightSet, device: str, workdir: Path, unavailable: list[dict],
          compile_s: dict[str, float], dtypes: list[str]) -> list[Path]:
    """AOTInductor .pt2 packages (mgd_rt.export.aoti) of the ``dtypes`` they come in: FP32, and FP16 on CUDA,
    compiled once into ``workdir`` for this device kind and torch, reused while the torch version they were
    compiled by is this one and nothing they were made from changed since; each compile's seconds go into
    ``compile_s`` (not into the latency)."""
    precisions = [p for p in (("fp32", "fp16") if device.startswith("cuda") else ("fp32",)) if p in dtypes]
    if not args.aoti:
        unavailable.extend({"name": f"aoti {p}", "reason": "--no-aoti"} for p in precisions)
        return []
    try:
        import torch

        from mgd_rt.export.aoti import export_aoti
        from mgd_rt.runtime.backends.aoti_backend import read_package_metadata
    except ImportError as exc:
        unavailable.extend({"name": f"aoti {p}", "reason": f"export needs the export extra ({exc})"}
                           for p in precisions)
        return []
    kind = device.split(":")[0]
    packages: list[Path] = []
    for precision in precisions:
        path = workdir / f"mgd_sam2_{slug(args.variant)}_{args.image_size}_{weights.tag}.{precision}.{kind}.pt2"
        if (path.is_file() and read_package_metadata(path).get("torch_version") == torch.__version__
                and not _changed_since(path, *_graph_sources(weights))):
            log.info("reusing %s", path)
            packages.append(path)
            continue
        t0 = time.perf_counter()
        try:
            export_aoti(weights.checkpoint, args.variant, args.image_size, output=path, device=device,
                        dtype=precision, verify_package=False)
        except Exception as exc:  # recorded: the other rows still run
            unavailable.append({"name": f"aoti {precision}", "reason": f"export failed: {type(exc).__name__}: {exc}"})
            continue
        compile_s[path.name] = round(time.perf_counter() - t0, 1)
        log.info("compiled %s in %.0f s", path, compile_s[path.name])
        packages.append(path)
    return packages


def torch_dtypes(args: argparse.Namespace, cuda: bool) -> list[str]:
    """The PyTorch and .pt2 precisions of the run: --dtypes, else fp32, fp16 and bf16 on CUDA (fp32 and bf16 on
    the CPU, where the torch backend refuses fp16)."""
    wanted = args.dtypes.split(",") if args.dtypes else (["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"])
    return [d for d in dict.fromkeys(d.strip() for d in wanted) if d]


def torch_rows(model: str, dtypes: list[str]) -> list[str | Run]:
    """The PyTorch entries of a weight set's models: ``model``, which bench runs in each of ``dtypes`` and compile
    mode, and where fp32 is not among them, eager FP32 on its own (every row's baseline, never compiled)."""
    return [model] if "fp32" in dtypes else [model, Run(model, "torch", "fp32", run_label(model))]


def _tensorrt(graphs: dict[str, Path], device: str, workdir: Path, unavailable: list[dict]) -> list[Path]:
    """TensorRT FP16/INT8 engines built with mgd_rt.engine, where the backend table has TensorRT and a GPU is here."""
    engines: list[Path] = []
    common = None
    if "tensorrt" not in BACKENDS:
        common = "no TensorRT backend in mgd_rt.runtime.backends.BACKENDS (rows: " + ", ".join(BACKENDS) + ")"
    elif not device.startswith("cuda"):
        common = "TensorRT needs an NVIDIA GPU; this run is on the CPU"
    elif importlib.util.find_spec("tensorrt") is None:
        common = "the tensorrt Python package is not installed here (datacenter TensorRT; TensorRT-RTX has no Hopper)"
    else:
        try:
            from mgd_rt.engine import build_engine
        except ImportError as exc:
            common = f"mgd_rt.engine cannot be imported ({exc})"
    for precision in ("fp16", "int8"):
        name = f"tensorrt {precision}"
        if common is not None:
            unavailable.append({"name": name, "reason": common})
            continue
        # FP16 from the FP16 graph where there is one (strongly typed TensorRT), INT8 from the Q/DQ graph
        graph = graphs.get(precision) or (graphs.get("fp32") if precision == "fp16" else None)
        if graph is None:
            unavailable.append({"name": name, "reason": f"no {precision} ONNX graph to build from (see above)"})
            continue
        try:
            engine = workdir / f"{graph.stem}.{precision}.engine"
            result = _call(build_engine, graph, precision=precision, output=engine, progress=False)
            engines.append(Path(getattr(result, "path", result)))
        except Exception as exc:
            unavailable.append({"name": name, "reason": f"build failed: {type(exc).__name__}: {exc}"})
    return engines


@dataclass(frozen=True)
class WeightSet:
    """Weights the matrix runs: a checkpoint, or load_model's seeded UNTRAINED weights (``seed``).

    ``model``: what bench loads for the PyTorch rows and the reference (a variant name for the default seed, whose
    weights load_model makes itself; a state dict saved in the work folder for another seed); ``checkpoint``: what
    the exports read (None: the default seed); ``tag``: in every file name made from these weights."""

    model: str
    checkpoint: str | None
    tag: str


def _weight_sets(args: argparse.Namespace, workdir: Path) -> list[WeightSet]:
    """--checkpoint, else one set per --seeds value; a non-default seed's weights are saved once as a state dict
    (PyTorch and the exports then read the same file)."""
    if args.checkpoint:
        return [WeightSet(args.checkpoint, args.checkpoint, "trained")]
    try:
        seeds = list(dict.fromkeys(int(v) for v in args.seeds.split(",") if v.strip()))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise MgdRtError(f"--seeds {args.seeds}: give seeds as comma-separated integers >= 0, e.g. 0,1,2")
    from mgd_rt.checkpoint import UNTRAINED_SEED

    sets = []
    for seed in seeds:
        if seed == UNTRAINED_SEED:
            sets.append(WeightSet(args.variant, None, "untrained"))
            continue
        path = workdir / f"mgd_sam2_{slug(args.variant)}_untrained-seed{seed}.pth"
        if not path.is_file() or _changed_since(path, PACKAGE / "model"):
            import torch

            from mgd_rt.artifacts import atomic_write
            from mgd_rt.checkpoint import load_model

            state = load_model(None, variant=args.variant, seed=seed).state_dict()
            with atomic_write(path) as tmp:
                torch.save(state, tmp)
        sets.append(WeightSet(str(path), str(path), f"untrained-seed{seed}"))
    return sets


def _models(args: argparse.Namespace, weights: WeightSet, device: str, workdir: Path, unavailable: list[dict],
            calibrations: dict[str, dict], aoti_compile_s: dict[str, float], first: bool
            ) -> tuple[list[str | Path | Run], dict[str, Path]]:
    """The rows of one weight set and the ONNX graphs they run. ``first``: the first weight set, which also
    gets the rows whose speed the weights cannot change and whose preparation is slow (compiled PyTorch, .pt2);
    every set gets eager FP32 (its own run's baseline) and every graph row, whose accuracy they can change."""
    cuda = device.startswith("cuda")
    dtypes = torch_dtypes(args, cuda)
    models: list[str | Path | Run] = list(torch_rows(weights.model, dtypes if first else ["fp32"]))
    ort_gpu, ort_why = _ort_gpu()
    run_ort = ort_gpu or not cuda  # ONNX Runtime rows run where ORT can use the device asked for
    graphs: dict[str, Path] = {}
    if cuda and not ort_gpu:
        unavailable.append({"name": "onnxruntime fp32/fp16/int8", "reason": f"no GPU provider: {ort_why}; "
                            "ONNX Runtime rows need onnxruntime-gpu on this machine"})
    # export only for TensorRT when it can build here (a B+ export takes minutes on the host)
    trt_wanted = cuda and "tensorrt" in BACKENDS and importlib.util.find_spec("tensorrt") is not None
    if run_ort or trt_wanted:  # TensorRT builds from the same graphs
        want_fp16 = cuda or args.ort_fp16
        # a CPU run's rows (ONNX Runtime FP32 and INT8, OpenVINO) run the CPU graph (opset 23, attention as
        # ONNX Attention nodes), measured faster on B+ (README "ONNX export"), its INT8 graph calibrated with
        # --target cpu (the default TensorRT placement of an opset-23 graph does not load in ONNX Runtime 1.32);
        # TensorRT and GPU runs keep the opset-20 graph TensorRT builds
        fp32 = _export(args, weights, workdir, want_fp16, unavailable, cpu_graph=not cuda)
        if fp32 is not None:
            graphs["fp32"] = fp32
            if want_fp16:
                from mgd_rt.artifacts import fp16_path

                graphs["fp16"] = fp16_path(fp32)
            elif run_ort and first:
                unavailable.append({"name": "onnxruntime fp16", "reason": "not meaningful on ONNX Runtime's CPU "
                                    f"provider ({ort_why}): FP16 runs through casts there; --ort-fp16 runs it"})
            int8 = _int8(fp32, args, unavailable, calibrations, target=None if cuda else "cpu")
            if int8 is not None:
                graphs["int8"] = int8
    if run_ort:
        models.extend(graphs.values())
    models.extend(_openvino(graphs, device, unavailable if first else [], args, calibrations))
    models.extend(_tensorrt(graphs, device, workdir, unavailable if first else []))
    if first:
        models.extend(_aoti(args, weights, device, workdir, unavailable, aoti_compile_s, dtypes))
    return models, graphs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when usable)")
    parser.add_argument("--variant", default="b+")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--checkpoint", default=None, help="real weights (default: seeded UNTRAINED)")
    parser.add_argument("--seeds", default="0", metavar="0,1,2",
                        help="seeded UNTRAINED weight sets (load_model's seeds; default 0), each with its own graphs, "
                        "INT8 calibration, PyTorch FP32 baseline and held-out accuracy; compiled PyTorch, bf16 "
                        "autocast and .pt2 rows run on the first only (ignored with --checkpoint)")
    parser.add_argument("--batch", default=None, help="batch sizes (default: 1 on the CPU, 1,8 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on the CPU, 10 on CUDA (+ until stable)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default: 3 on the CPU, 50 on CUDA)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="passes over every row of a weight set, each row timed again after all the others "
                        "(default: 3 on the CPU, where a shared VM's speed drifts within minutes; 1 on CUDA)")
    parser.add_argument("--dtypes", default=None, metavar="fp32,fp16,bf16",
                        help="PyTorch precisions, eager and compiled, and the .pt2 packages' (default: fp32,fp16,bf16 "
                        "on CUDA, fp32,bf16 on the CPU); without fp32, eager FP32 still runs, uncompiled, as the "
                        "baseline")
    parser.add_argument("--no-holdout", dest="holdout", action="store_false",
                        help="check accuracy on the timed batch only, not on each of the six held-out photos")
    parser.add_argument("--ort-fp16", action="store_true", help="also run the FP16 graph on ONNX Runtime's CPU")
    parser.add_argument("--calibration-photos", type=int, default=12,
                        help="scikit-image photos for INT8 calibration (at most 12)")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="do not make a missing INT8 graph with `mgd-rt calibrate` (B+ at 1024: 2-10 min on "
                        "2 cores, with the accuracy recovery when the held-out check fails)")
    parser.add_argument("--int8", default=None, metavar="ONNX",
                        help="INT8 Q/DQ graph to use (default: <workdir>/<fp32 name>.int8.onnx when it exists)")
    parser.add_argument("--no-openvino-int8-bf16", dest="openvino_int8_bf16", action="store_false",
                        help="skip OpenVINO's INT8 graph with bf16 float layers (its own calibrate --backend openvino "
                        "--dtype bf16, whose recovery sweep took 15 min per B+ set on 2 cores)")
    parser.add_argument("--no-aoti", dest="aoti", action="store_false",
                        help="leave out the AOTInductor .pt2 rows (B+ at 1024: ~4.5 min to export and compile on 2 "
                        "CPU cores)")
    parser.add_argument("--workdir", default=str(HERE / "work"), help="exported graphs (reused; never committed)")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--name", default=None, help="result file name (default: from the CPU or GPU model)")
    parser.add_argument("--compile", default=None, metavar="MODE[,MODE]",
                        help="PyTorch runs: eager and torch.compile modes, comma-separated (default: eager,default on "
                        "the CPU, eager,default,reduce-overhead on CUDA; eager alone leaves the compiled rows out)")
    parser.add_argument("--summarize", metavar="JSON", default=None,
                        help="only rewrite the summary (.md beside it, and its verdict in the JSON) of a finished run")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize(Path(args.summarize))
    if args.dtypes and (unknown := set(torch_dtypes(args, cuda=True)) - {"fp32", "fp16", "bf16"}):
        parser.error(f"--dtypes: unknown precision {', '.join(sorted(unknown))} (fp32, fp16, bf16)")
    # our progress at INFO; the exporter's libraries stay at WARNING (their INFO is pages of noise)
    logging.basicConfig(level=logging.WARNING, format="run_matrix: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)

    start = time.perf_counter()
    device = args.device or default_device()
    cuda = device.startswith("cuda")
    batches = [int(b) for b in (args.batch or ("1,8" if cuda else "1")).split(",")]
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    iters = args.iters if args.iters is not None else (50 if cuda else 3)
    rounds = args.rounds if args.rounds is not None else (1 if cuda else 3)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        weight_sets = _weight_sets(args, workdir)
    except MgdRtError as exc:
        print(f"run_matrix: error: {exc}", file=sys.stderr)
        return 2
    dtypes = torch_dtypes(args, cuda)
    # each PyTorch precision eager and compiled (compile time in the JSON and the .md, apart from the latency)
    compile_modes = [m.strip() for m in (args.compile or ("eager,default,reduce-overhead" if cuda else
                                                          "eager,default")).split(",") if m.strip()]
    unavailable: list[dict] = []
    if not cuda:
        unavailable.append({"name": "torch fp16", "reason": "CPU: bf16 autocast instead (the torch backend refuses "
                                                            "fp16 on the CPU: slow and less accurate than bf16)"})

    name = args.name or machine_tag(device)
    results = Path(args.results)
    json_path = results / f"{name}.json"

    def progress(r: object) -> None:
        lat = getattr(r, "latency_ms", {}) or {}
        log.info("%s %s %s B=%s: %s", r.label, r.runs_on, r.precision, r.batch,  # type: ignore[attr-defined]
                 f"mean {lat['mean']:.1f} ms" if lat else r.error)  # type: ignore[attr-defined]

    data: dict | None = None
    all_graphs: dict[str, dict[str, str]] = {}
    calibrations: dict[str, dict] = {}
    aoti_compile_s: dict[str, float] = {}  # export + compile seconds of each package made in this run
    ok = True
    for index, weights in enumerate(weight_sets):
        first = index == 0
        log.info("weights %d/%d: %s", index + 1, len(weight_sets), weights.tag)
        models, graphs = _models(args, weights, device, workdir, unavailable, calibrations, aoti_compile_s, first)
        all_graphs[weights.tag] = {role: path.name for role, path in graphs.items()}
        part_path = json_path if len(weight_sets) == 1 else json_path.with_name(f"{name}.{weights.tag}.json")
        try:
            report = bench(models, batches=batches, warmup=warmup, iters=iters, device=device,
                           dtypes=dtypes if first else ["fp32"], compile=compile_modes if first else ["eager"],
                           reference=weights.model, output=part_path, image_size=args.image_size,
                           unavailable=unavailable if first else [], photos=max(batches), holdout=args.holdout,
                           on_result=progress, rounds=rounds)
        except MgdRtError as exc:
            print(f"run_matrix: error: {exc}", file=sys.stderr)
            return 1
        ok = ok and report.ok
        print(report.table())
        part = json.loads(part_path.read_text())
        for r in part["results"]:
            r["weights"] = weights.tag
        if data is None:
            data = part
        else:
            data["results"].extend(part["results"])
        if part_path != json_path:  # its rows go into the merged file, kept whole after every set
            part_path.unlink()
            part_path.with_suffix(".png").unlink(missing_ok=True)
            write_json_atomic(json_path, {**data, "matrix": {"weight_sets_done": index + 1,
                                                             "int8_calibration": calibrations}})
    assert data is not None
    # the matrix's own facts, beside what bench recorded
    data["matrix"] = {"script": "benchmarks/run_matrix.py", "argv": sys.argv[1:] if argv is None else argv,
                      "variant": args.variant, "image_size": args.image_size,
                      "weights": args.checkpoint or f"seeded UNTRAINED (load_model seeds {args.seeds})",
                      "weight_sets": [w.tag for w in weight_sets], "holdout": args.holdout,
                      "wall_s": time.perf_counter() - start, "aoti_compile_s": aoti_compile_s,
                      "graphs": all_graphs, "int8_calibration": calibrations,
                      "load_average_end": load_average()}
    print()
    print(write_summary(json_path, data))
    print(f"wrote {json_path}, {json_path.with_suffix('.md')} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0 if ok else 1


def write_summary(json_path: Path, data: dict) -> str:
    """The run's verdict into ``data`` (matrix.fastest_within_tolerance), ``data`` to ``json_path`` and the
    summary table beside it (.md); returns the table."""
    data.setdefault("matrix", {})["fastest_within_tolerance"] = fastest_within_tolerance(data["results"])
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md = summary_markdown(data)
    json_path.with_suffix(".md").write_text(md)
    return md


def summarize(json_path: Path) -> int:
    """Recompute a finished run's verdict and rewrite its summary table, from its JSON alone (no model runs):
    every accuracy check is held to today's tolerances first (mgd_rt.numerics.TOLERANCES, from the measures
    each row kept), and a changed verdict is listed in the summary."""
    from mgd_rt.bench.runner import rejudge
    from mgd_rt.numerics import TOLERANCES

    data = json.loads(json_path.read_text())
    changed = []
    for r in data["results"]:
        acc = r.get("accuracy")
        if r["status"] == "ok" and acc and rejudge(acc):
            changed.append(f"{r.get('weights', '')} {r['label']} {_runs_on(r)} {r['precision']} B={r['batch']}: "
                           f"{'passes' if acc['passed'] else 'fails'} ({acc['tolerance_key']}: "
                           f"{TOLERANCES[acc['tolerance_key']]})")
    if changed:
        data.setdefault("matrix", {}).setdefault("rejudged", []).extend(changed)
    print(write_summary(json_path, data))
    return 0


def fastest_within_tolerance(results: list[dict]) -> dict:
    """Per path (backend with compile mode, precision, batch), over the weight sets that ran it: the worst speed-up
    over that set's own PyTorch FP32 eager, and whether every set's check passed. ``best``: the fastest path that
    ran on every weight set and passed on all of them; ``best_fp32``: the same among FP32 paths other than eager."""
    sets = sorted({r.get("weights", "") for r in results})
    # the weights do not change eager PyTorch's work (same graph, same FLOPs), so every set's eager timings
    # together are a steadier baseline than one set's three calls: ``worst_pooled_speedup`` uses their mean
    eager: dict[int, list[float]] = {}
    for r in results:
        if r["status"] == "ok" and r["backend"] == "torch" and not r.get("compile") and r["precision"] == "fp32":
            eager.setdefault(r["batch"], []).extend(r.get("timings_s") or [r["latency_ms"]["mean"] / 1e3])
    paths: dict[tuple, dict] = {}
    for r in results:
        if r["status"] != "ok" or r.get("vs_torch_fp32") is None:
            continue
        key = (_runs_on(r), computes(r["precision"], r.get("dtype")), r["batch"])
        entry = paths.setdefault(key, {"path": f"{key[0]} {key[1]} B={key[2]}", "weights": [], "passed": True,
                                       "worst_speedup": float("inf"), "worst_pooled_speedup": float("inf")})
        entry["weights"].append(r.get("weights", ""))
        entry["passed"] = entry["passed"] and bool((r.get("accuracy") or {}).get("passed", False))
        entry["worst_speedup"] = min(entry["worst_speedup"], r["vs_torch_fp32"])
        if eager.get(r["batch"]):
            pooled = sum(eager[r["batch"]]) / len(eager[r["batch"]]) * 1e3 / r["latency_ms"]["mean"]
            entry["worst_pooled_speedup"] = min(entry["worst_pooled_speedup"], pooled)
    everywhere = [e for e in paths.values() if sorted(e["weights"]) == sets and e["passed"]
                  and e["path"] != "torch fp32 B=1"]
    fp32 = [e for e in everywhere if " fp32 " in e["path"] and not e["path"].startswith("torch fp32")]

    def best(entries: list[dict]) -> dict | None:
        return max(entries, key=lambda e: e["worst_speedup"]) if entries else None

    return {"weight_sets": sets, "paths": list(paths.values()), "best": best(everywhere), "best_fp32": best(fp32)}


def _verdict(acc: dict) -> str:
    if not acc:
        return "-"
    return f"yes ({acc['tolerance_key']})" if acc.get("passed") else f"NO ({acc['tolerance_key']}: " + \
        "; ".join(acc.get("failures", [])) + ")"


def _runs_on(r: dict) -> str:
    """A result's backend, with the torch.compile mode of a compiled PyTorch row (torch+default)."""
    return f"{r['backend']}+{r['compile']}" if r.get("compile") else r["backend"]


def summary_markdown(data: dict) -> str:
    """The README summary: each speed as a ratio to PyTorch FP32 measured in the same run."""
    env = data["environment"]
    gpu = env.get("gpu")
    cpu = env["cpu"]
    where = gpu["name"] if gpu else f"{cpu['model']}, {cpu['logical_cpus']} logical CPUs (flags: " \
        f"{' '.join(f for f in cpu.get('flags', []) if f in ISA_FLAGS) or 'none of ' + ' '.join(ISA_FLAGS)})"
    load = env.get("load_average_start")
    loads = f"; load average at start {load[0]:.2f}" if load else ""
    malloc = env.get("env_malloc")
    loads += f"; allocator: {' '.join(f'{k}={v}' for k, v in malloc.items())}" if malloc else ""
    several = len({r.get("weights") for r in data["results"]}) > 1
    weights_col = "weights | " if several else ""
    lines = [f"**{where}** ({data['created']}{loads})\n\n",
             f"| {weights_col}model | backend | precision | batch | p50 ms | mean ms | images/s | x PyTorch FP32 | "
             "% of peak | max abs delta / std | sigmoid MAE | IoU top 10% | within tolerance |\n",
             "|---" * (13 + several) + "|\n"]
    for r in data["results"]:
        first = f"| {r.get('weights', '')} " if several else ""
        precision = computes(r["precision"], r.get("dtype"))
        if r["status"] != "ok":
            lines.append(f"{first}| {r['label']} | {_runs_on(r)} | {precision} | {r['batch']} | "
                         f"not run: {r['error']} |||||||||\n")
            continue
        acc = r.get("accuracy") or {}

        def f(v: float | None, spec: str) -> str:
            return format(v, spec) if v is not None else "-"

        lines.append(
            f"{first}| {r['label']} | {_runs_on(r)} | {precision} | {r['batch']} | {r['latency_ms']['p50']:.1f} | "
            f"{r['latency_ms']['mean']:.1f} | {r['images_per_s']:.3f} | {f(r['vs_torch_fp32'], '.2f')} | "
            f"{f(None if r['peak_fraction'] is None else 100 * r['peak_fraction'], '.2f')} | "
            f"{f(acc.get('max_rel_std'), '.1e')} | {f(acc.get('sigmoid_mae'), '.1e')} | "
            f"{f(acc.get('iou_top10'), '.4f')} | {_verdict(acc)} |\n")
    matrix = data.get("matrix", {})
    settings = data.get("settings", {})
    if settings.get("rounds", 1) > 1:
        lines.append(f"\nTiming: {settings['rounds']} rounds over a weight set's rows, each row loaded, warmed up "
                     f"(warm-up calls: {settings['warmup']}) and timed (timed calls: {settings['iters']}) again after "
                     "all the others; latencies and ratios are over every round's calls.\n")
    if matrix.get("holdout"):
        lines.append("\nAccuracy: the worst of the six held-out photos (batch 1 each, never calibration images), "
                     "against PyTorch FP32 of the same weights; every photo must pass.\n")
    compiled = [r for r in data["results"] if r["status"] == "ok" and r.get("compile_s") is not None]
    if compiled:
        lines.append("\nCompile time (the first call at the shape, not in the latencies): " + "; ".join(
            f"{_runs_on(r)} {r['precision']} B={r['batch']} {r['compile_s']:.0f} s (inductor cache: "
            f"{r['compile_cache']})" for r in compiled) + "\n")
    for tag, graphs in (matrix.get("graphs") or {}).items():
        lines.append(f"\nONNX graphs ({tag}): " + "; ".join(f"{role}: {name}" for role, name in graphs.items()) + "\n")
    for graph, c in (matrix.get("int8_calibration") or {}).items():
        restored = f", {c['recovered_nodes']} nodes back in FP32 ({c['recovered_share']:.1%} of the quantized " \
            "compute)" if c.get("recovered_nodes") else ""
        # the report names where the check ran; runs recorded before it was kept go by the file name
        how = f"`mgd-rt calibrate`, checked on {c['checked_on'].split(';')[0]}" if c.get("checked_on") else \
            "`mgd-rt calibrate --backend openvino --dtype bf16`" if graph.endswith(OPENVINO_BF16_INT8) else \
            "`mgd-rt calibrate` defaults"
        lines.append(f"\nINT8 calibration of {graph} ({how}): {c.get('verdict', '-')}"
                     f"{restored}\n")
    if matrix.get("rejudged"):
        lines.append("\nRe-judged after the run (`--summarize`) against changed tolerances, from the measures "
                     "stored: " + "; ".join(matrix["rejudged"]) + "\n")
    fastest = matrix.get("fastest_within_tolerance") or {}
    for key, what in (("best", "Fastest path within tolerance"), ("best_fp32", "Fastest FP32 path")):
        e = fastest.get(key)
        if e:
            pooled = e.get("worst_pooled_speedup")
            lines.append(f"\n**{what} on every weight set ({', '.join(fastest['weight_sets'])}): {e['path']}, "
                         f"{e['worst_speedup']:.2f}x PyTorch FP32 eager (the worst set's ratio to its own eager run"
                         + (f"; {pooled:.2f}x the eager mean over all sets" if pooled else "") + ").**\n")
    for u in data.get("unavailable", []):
        lines.append(f"\nNot run: {u['name']}: {u['reason']}")
    flops = {k: v.get("gflops_per_image") for k, v in data.get("flops", {}).items()}
    lines.append(f"\n\nGFLOPs per image: {', '.join(f'{k} {v:.0f}' for k, v in flops.items() if v)}; "
                 f"peak used: {data['peak'].get('name')} ({data['peak'].get('source')})\n")
    return "".join(lines)


if __name__ == "__main__":
    sys.exit(main())
