"""``write_triton_repo``: a Triton Inference Server model repository for mgd-rt artifacts.

One model directory per artifact::

    REPO/NAME/config.pbtxt          platform, I/O (dims from the artifact), batching, instances
    REPO/NAME/mgd_rt.json           what the artifact is (metadata or the engine's sidecar)
    REPO/NAME/1/model.onnx          an .onnx graph  -> platform onnxruntime_onnx
    REPO/NAME/1/model.plan          a TensorRT engine -> platform tensorrt_plan
    REPO/NAME/1/model.plan.json     the engine's sidecar, beside the engine as everywhere else

Everything Triton would refuse at load time (names, dtypes, dims, max batch beyond the engine's
profile, a profile that cannot take batch 1) is checked first, and each model directory is
written under a temporary name and renamed into place: a refused model leaves nothing behind.
The normalisation, variant, precision and S also go into ``config.pbtxt`` ``parameters``, so a
client (:mod:`mgd_rt.runtime.backends.triton_backend`) learns them from the server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgd_rt.contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_FORMAT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    PIXEL_INPUT,
)
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.machine import cpu_info, u8s8_saturates
from mgd_rt.runtime.backends.onnxruntime_backend import ort_session

log = logging.getLogger("mgd_rt")

DEFAULT_MAX_BATCH_ONNX = 8  # a graph with a dynamic batch has no profile; Triton needs a bound
DEFAULT_QUEUE_DELAY_US = 2000  # how long the dynamic batcher waits to fill a batch
INSTANCE_KINDS = ("auto", "gpu", "cpu")
# how an INT8 graph's weights go into the repository: as calibrated (s8), as U8 for CPUs without VNNI
# (quantize.unsigned_weights), or auto: u8 where CPU instances on this machine would need it
INT8_WEIGHTS = ("auto", "s8", "u8")
PARAMETER_PREFIX = "mgd_rt."  # config.pbtxt parameters the Triton client backend reads back
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "int32": "TYPE_INT32",
                  "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


@dataclass
class ModelSpec:
    """What config.pbtxt says about one artifact; ``dims`` without the batch axis when batching."""

    name: str
    source: Path
    platform: str  # onnxruntime_onnx or tensorrt_plan
    filename: str  # model.onnx or model.plan
    image_size: int
    max_batch: int  # 0: the artifact has a fixed batch, Triton must not batch
    preferred: list[int]
    input_dims: list[int]
    output_dims: list[int]
    instances: int
    kind: str  # KIND_AUTO, KIND_GPU, KIND_CPU
    queue_delay_us: int
    parameters: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # written as mgd_rt.json
    sidecar: Path | None = None
    unsigned_weights: bool = False  # write the INT8 graph's weights as U8 (quantize.unsigned_weights)


def model_name(path: str | Path) -> str:
    """A Triton-safe model name from a file name: model.fp16.onnx -> model_fp16."""
    stem = Path(path).name.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "model"


def _check_io(where: str, io: list[dict[str, Any]], name: str, size: int, channels: int,
              pixels: bool = False) -> list[int]:
    """The (B, C, S, S) float32 tensor ``name`` of ``io`` (``pixels``: (B, S, S, C) uint8); returns its dims as
    listed (batch -1 if dynamic)."""
    match = [t for t in io if t["name"] == name]
    if not match:
        raise MgdRtError(f"{where}: has no tensor {name!r} (has {', '.join(t['name'] for t in io)}); "
                         "Triton clients of mgd-rt send 'image' and read 'mask_logits': re-export with mgd-rt export")
    tensor = match[0]
    dtype, dims = ("uint8", [size, size, channels]) if pixels else ("float32", [channels, size, size])
    if tensor["dtype"] != dtype:
        raise MgdRtError(f"{where}: {name!r} is {tensor['dtype']}, the contract is {dtype} "
                         f"({'its metadata says input_format uint8' if pixels else 'float32 I/O'}); re-export")
    shape = [int(d) for d in tensor["shape"]]
    if len(shape) != 4 or shape[1:] != dims:
        raise MgdRtError(f"{where}: {name!r} is {shape}, expected (B, {', '.join(map(str, dims))})")
    return shape


def _onnx_spec(path: Path) -> tuple[dict[str, str], int, int | None]:
    """(metadata props, S, fixed batch or None) of an .onnx graph, read with ONNX Runtime (no onnx needed)."""
    try:
        session = ort_session(path, optimize=False)  # only the signature is needed
    except Exception as exc:  # onnxruntime's own exception types for bad files
        raise MgdRtError(f"{path}: ONNX Runtime cannot load this graph ({first_line(exc)})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)

    def io(values) -> list[dict[str, Any]]:
        # symbolic dims -> -1, Triton's spelling of "variable"
        return [{"name": v.name, "shape": [d if isinstance(d, int) else -1 for d in v.shape],
                 "dtype": _ORT_DTYPES.get(v.type, v.type)} for v in values]

    inputs, outputs = io(session.get_inputs()), io(session.get_outputs())
    shape = next((t["shape"] for t in inputs if t["name"] == INPUT_NAME), None)
    size = int(meta.get("image_size") or (shape[-1] if shape and shape[-1] > 0 else 0))
    if size <= 0:
        raise MgdRtError(f"{path}: neither an image_size metadata prop nor a static input size; re-export")
    in_shape = _check_io(str(path), inputs, INPUT_NAME, size, 3, meta.get(INPUT_FORMAT_KEY) == PIXEL_INPUT)
    out_shape = _check_io(str(path), outputs, OUTPUT_NAME, size, 1)
    if (in_shape[0] > 0) != (out_shape[0] > 0):
        raise MgdRtError(f"{path}: input batch {in_shape[0]} and output batch {out_shape[0]} disagree")
    return meta, size, in_shape[0] if in_shape[0] > 0 else None


def plan_model(
    path: str | Path,
    name: str | None = None,
    max_batch: int | None = None,
    instances: int = 1,
    instance_kind: str | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    int8_weights: str = "auto",
) -> ModelSpec:
    """Validate one artifact and decide its config (nothing written); MgdRtError says what to fix.

    ``int8_weights`` (INT8 graphs only): Triton's onnxruntime backend cannot set ``session.x64quantprecision``,
    which the runtime sets on CPUs without VNNI, where ONNX Runtime's U8 x S8 kernels saturate and the graph
    leaves its tolerance. ``u8`` writes the weights as U8 (exact, the same products as that option), ``s8`` as
    calibrated, ``auto`` u8 when the instances may run on a CPU (kind cpu or auto) and this machine's CPU has no
    VNNI (machine.u8s8_saturates): the repository is taken to be served on a machine like the one writing it.
    """
    path = Path(path)
    if not path.is_file():
        raise MgdRtError(f"{path}: no such file")
    if instances < 1:
        raise MgdRtError(f"--instances {instances}: must be at least 1")
    if max_batch is not None and max_batch < 1:
        raise MgdRtError(f"--max-batch {max_batch}: must be at least 1")
    if queue_delay_us < 0:
        raise MgdRtError(f"--max-queue-delay-us {queue_delay_us}: must be 0 or more")
    if instance_kind is not None and instance_kind not in INSTANCE_KINDS:
        raise MgdRtError(f"--instance-kind {instance_kind}: choose from {', '.join(INSTANCE_KINDS)}")
    if int8_weights not in INT8_WEIGHTS:
        raise MgdRtError(f"--int8-weights {int8_weights}: choose from {', '.join(INT8_WEIGHTS)}")
    name = name or model_name(path)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise MgdRtError(f"--name {name!r}: use letters, digits, '_' and '-' only (it becomes a directory and URL)")
    suffix = path.suffix.lower()
    sidecar_file = None
    unsigned = False
    if suffix == ".onnx":
        meta, size, fixed = _onnx_spec(path)
        fixed_batch = fixed or 0
        platform, filename = "onnxruntime_onnx", "model.onnx"
        precision, variant = meta.get("precision", "fp32"), meta.get("variant", "unknown")
        mean, std = meta.get("mean"), meta.get("std")
        if fixed is not None:
            # Triton only batches along a variable first axis: a fixed-batch graph is served as is
            if max_batch is not None:
                raise MgdRtError(f"{path}: the graph has a fixed batch of {fixed}, Triton cannot batch it; "
                                 "leave --max-batch out or re-export with a dynamic batch")
            chosen, preferred = 0, []
        else:
            chosen = max_batch or DEFAULT_MAX_BATCH_ONNX
            preferred = [chosen]
        kind = instance_kind or "auto"
        info: dict[str, Any] = {"source": str(path.resolve()), "metadata": meta}
        if precision == "int8":
            unsigned = int8_weights == "u8" or (
                int8_weights == "auto" and kind != "gpu" and u8s8_saturates(cpu_info()["flags"]))
            info["int8_weights"] = "u8" if unsigned else "s8"
    elif suffix in (".engine", ".plan"):
        from mgd_rt.artifacts import read_sidecar, sidecar_path

        sidecar = read_sidecar(path)
        sidecar_file = sidecar_path(path)
        size = int(sidecar["image_size"])
        source_meta = sidecar.get("source", {}).get("metadata", {}) or {}
        in_shape = _check_io(f"{path} (sidecar)", sidecar["inputs"], INPUT_NAME, size, 3,
                             source_meta.get(INPUT_FORMAT_KEY) == PIXEL_INPUT)
        _check_io(f"{path} (sidecar)", sidecar["outputs"], OUTPUT_NAME, size, 1)
        platform, filename = "tensorrt_plan", "model.plan"
        lo, opt, hi = (int(sidecar["profile"][k][0]) for k in ("min", "opt", "max"))
        fixed_batch = max(in_shape[0], 0)
        if in_shape[0] > 0:
            if max_batch is not None:
                raise MgdRtError(f"{path}: the engine has a fixed batch of {in_shape[0]}; leave --max-batch out")
            chosen, preferred = 0, []
        else:
            if lo != 1:
                # Triton's dynamic batcher sends any batch from 1 up: a profile starting above 1 fails at run time
                raise MgdRtError(f"{path}: the engine's profile starts at batch {lo}; Triton sends batches from 1, "
                                 f"rebuild with mgd-rt build --batch 1:{opt}:{hi}")
            chosen = hi if max_batch is None else max_batch
            if chosen > hi:
                raise MgdRtError(f"--max-batch {chosen}: beyond the engine's profile (max batch {hi}); "
                                 f"use at most {hi} or rebuild with mgd-rt build --batch 1:{opt}:{chosen}")
            preferred = sorted({b for b in (opt, chosen) if b <= chosen})
        precision = sidecar["precision"]
        meta = source_meta
        variant = sidecar.get("variant", source_meta.get("variant", "unknown"))
        mean, std = source_meta.get("mean"), source_meta.get("std")
        if instance_kind == "cpu":
            raise MgdRtError(f"{path}: a TensorRT engine runs on a GPU; --instance-kind cpu is not possible")
        kind = instance_kind or "gpu"
        info = {"source": str(path.resolve()), "sidecar": sidecar_file.name}
    else:
        raise MgdRtError(f"{path}: Triton serves .onnx graphs (onnxruntime_onnx) and TensorRT .engine files "
                         f"(tensorrt_plan), not {suffix!r}; export or build one first")
    batched = chosen > 0
    pixels = meta.get(INPUT_FORMAT_KEY) == PIXEL_INPUT
    # with batching Triton's dims leave the batch axis out; without, they are the full fixed shape
    in_dims = ([size, size, 3] if pixels else [3, size, size]) if batched else \
        ([fixed_batch, size, size, 3] if pixels else [fixed_batch, 3, size, size])
    out_dims = [1, size, size] if batched else [in_dims[0], 1, size, size]
    parameters = {
        "image_size": str(size), "variant": str(variant), "precision": str(precision),
        "mean": mean or ",".join(map(str, IMAGENET_MEAN)), "std": std or ",".join(map(str, IMAGENET_STD)),
    }
    if pixels:  # absent means float32 input, as in the graph's own metadata
        parameters[INPUT_FORMAT_KEY] = PIXEL_INPUT
    info = {"format": "mgd-rt triton model", "format_version": 1, "name": name, "platform": platform,
            "file": filename, **info, "parameters": parameters}
    return ModelSpec(name, path, platform, filename, size, chosen, preferred, in_dims, out_dims, instances,
                     f"KIND_{kind.upper()}", queue_delay_us, parameters, info, sidecar_file, unsigned)


def config_pbtxt(spec: ModelSpec) -> str:
    """The text of config.pbtxt for ``spec`` (Triton's ModelConfig protobuf text format)."""

    def dims(values: list[int]) -> str:
        return ", ".join(map(str, values))

    lines = [
        f'name: "{spec.name}"',
        f'platform: "{spec.platform}"',
        f"max_batch_size: {spec.max_batch}",
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        f"    data_type: {'TYPE_UINT8' if spec.parameters.get(INPUT_FORMAT_KEY) == PIXEL_INPUT else 'TYPE_FP32'}",
        f"    dims: [ {dims(spec.input_dims)} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{OUTPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims(spec.output_dims)} ]",
        "  }",
        "]",
    ]
    if spec.max_batch > 0:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {dims(spec.preferred)} ]",
            f"  max_queue_delay_microseconds: {spec.queue_delay_us}",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {spec.instances}",
        f"    kind: {spec.kind}",
        "  }",
        "]",
    ]
    for key, value in spec.parameters.items():
        lines.append(f'parameters {{ key: "{PARAMETER_PREFIX}{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _write_unsigned(source: Path, target: Path) -> None:
    """Write the INT8 graph ``source`` to ``target`` with its weights as U8 (quantize.unsigned_weights)."""
    try:
        import onnx
    except ImportError:
        raise MgdRtError(f"{source}: writing its weights as U8 needs the onnx package (pip install onnx, or the "
                         "export extra); or pass --int8-weights s8 to copy the graph as is") from None
    from mgd_rt.calibration.quantize import unsigned_weights

    model = onnx.load(str(source))
    count = unsigned_weights(model)
    onnx.save_model(model, str(target))
    log.info("%s: %d INT8 weights written as U8 (exact; ONNX Runtime's U8 x U8 kernels on CPUs without VNNI)",
             source, count)


def _write_model(spec: ModelSpec, repo: Path, overwrite: bool) -> Path:
    """Write one model directory under a temporary name, then rename it into place."""
    target = repo / spec.name
    if target.exists() and not overwrite:
        raise MgdRtError(f"{target}: exists; pass --overwrite to replace it or choose another --name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=repo))
    old = None
    try:
        (tmp / "1").mkdir()
        if spec.unsigned_weights:
            _write_unsigned(spec.source, tmp / "1" / spec.filename)
        else:
            shutil.copyfile(spec.source, tmp / "1" / spec.filename)
        if spec.sidecar is not None:
            shutil.copyfile(spec.sidecar, tmp / "1" / f"{spec.filename}.json")
        (tmp / "config.pbtxt").write_text(config_pbtxt(spec))
        (tmp / "mgd_rt.json").write_text(json.dumps(spec.info, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; tritonserver may run as another user
        if target.exists():
            # a directory cannot be replaced in one rename: move the old one aside first
            old = target.with_name(f".{spec.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_triton_repo(
    models: list[str | Path],
    output: str | Path,
    max_batch: int | None = None,
    instances: int = 1,
    instance_kind: str | None = None,
    name: str | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    overwrite: bool = False,
    int8_weights: str = "auto",
) -> list[Path]:
    """Write a Triton model repository at ``output`` for ``models``; returns the model directories.

    Every model is validated before anything is written. ``max_batch`` None: the engine's profile
    max, or 8 for a graph with a dynamic batch. ``instance_kind`` None: gpu for engines, auto
    (Triton's choice) for graphs. ``int8_weights``: see plan_model.
    """
    if not models:
        raise MgdRtError("give at least one .onnx graph or .engine file")
    if name is not None and len(models) > 1:
        raise MgdRtError("--name applies to one model; with several, each is named after its file")
    specs = [plan_model(m, name, max_batch, instances, instance_kind, queue_delay_us, int8_weights) for m in models]
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise MgdRtError(f"{spec.source} and {seen[spec.name]} would both be model {spec.name!r}; rename one")
        seen[spec.name] = spec.source
    repo = Path(output)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MgdRtError(f"{repo}: cannot create the repository directory ({exc.strerror})") from None
    if not overwrite:
        for spec in specs:  # refuse before writing any model, not halfway through the list
            if (repo / spec.name).exists():
                raise MgdRtError(f"{repo / spec.name}: exists; pass --overwrite to replace it")
    written = []
    for spec in specs:
        written.append(_write_model(spec, repo, overwrite))
        batching = (f"max batch {spec.max_batch}, preferred {spec.preferred}" if spec.max_batch
                    else "fixed batch, no dynamic batching")
        log.info("wrote %s: %s, S=%d, %s, %d x %s", written[-1], spec.platform, spec.image_size, batching,
                 spec.instances, spec.kind)
    return written


__all__ = ["INT8_WEIGHTS", "ModelSpec", "config_pbtxt", "model_name", "plan_model", "write_triton_repo"]
