"""Artifacts every stage writes or reads: file names, metadata keys, hashes, atomic writes, sidecars.

The lowest layer beside ``contract`` and ``errors``: no torch, no onnx, no numpy. Export,
calibration, the engine builder and the runtime all name, hash, write and describe their files
through this one module, so a rule here (the umask, the temp-file cleanup) holds everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mgd_rt.errors import MgdRtError

# compute precisions an artifact can have (output float32; input float32 or uint8 pixels, see contract)
PRECISIONS = ("fp32", "fp16", "int8")
# model files by suffix: PyTorch checkpoints (pickles are opened weights_only), ONNX graphs, engines
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
GRAPH_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine",)
# AOTInductor packages (mgd-rt export --aoti): compiled code for one device kind and one torch build
PACKAGE_SUFFIXES = (".pt2",)

# ONNX metadata props written on every exported graph (all values are strings); an engine's
# sidecar keeps a copy under source.metadata, a Triton config under mgd_rt.* parameters
METADATA_KEYS: dict[str, str] = {
    "variant": "model size: b+, t, s, l or tiny",
    "image_size": "S, the side of the square input, decimal",
    "mean": "normalisation mean, comma-separated RGB floats",
    "std": "normalisation std, comma-separated RGB floats",
    "precision": "fp32, fp16 or int8: the graph's compute precision (the output is always float32)",
    "opset": "ONNX default-domain opset, decimal",
    "mgd_rt_version": "mgd-rt version that wrote the graph",
    "checkpoint_sha256": "sha256 hex of the source checkpoint file, or 'untrained'",
}
# optional prop: the input size whose grid the baked MCEM codes come from (the authors' TTA quirk)
CODE_SIZE_KEY = "mcem_code_size"
# optional prop: the float tensors the DRM reads from the rest of the network (comma-separated, the graph's input
# aside), where a mixed-precision runtime splits the graph to keep the DRM in fp32 (OpenVINO bf16)
DRM_INPUTS_KEY = "drm_inputs"
# optional prop contract.INPUT_FORMAT_KEY: "uint8" when the input is (B, S, S, 3) pixels; absent = float32
# optional props of an INT8 graph that mgd-rt calibrate checked on held-out images: where the check ran
# (CheckBackend.key: onnxruntime, openvino, openvino-bf16) and its verdict (pass or fail); a runtime that runs the
# graph elsewhere warns, as integer kernels differ between runtimes
INT8_CHECKED_ON_KEY = "int8_checked_on"
INT8_CHECK_KEY = "int8_check"
UNTRAINED = "untrained"  # checkpoint_sha256 of seeded weights

# a .pt2 package carries METADATA_KEYS but opset (no ONNX in it), its precision one of PACKAGE_PRECISIONS,
# and these: what the runtime checks before loading its compiled library
PACKAGE_PRECISIONS = ("fp32", "fp16", "bf16")
PACKAGE_METADATA_KEYS: dict[str, str] = {
    "device": "cpu or cuda: the device kind its kernels were compiled for",
    "torch_version": "torch.__version__ that compiled it; the package runs on that torch only",
    "min_batch": "smallest batch it was compiled for, decimal",
    "max_batch": "largest batch it was compiled for, decimal (equal to min_batch: a static batch)",
}


def metadata_floats(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    """A comma-separated float list from model metadata ("0.485,0.456,0.406"), or ``default``."""
    return default if not text else tuple(float(v) for v in text.split(","))


def format_floats(values: tuple[float, ...]) -> str:
    """(0.485, 0.456, 0.406) -> "0.485,0.456,0.406": the metadata spelling read by :func:`metadata_floats`."""
    return ",".join(str(v) for v in values)


# ---- names: one artifact per stage, next to its source --------------------------------------------


def sized_path(path: str | Path, size: int) -> Path:
    """model.onnx -> model.s<size>.onnx; model.s512.onnx -> model.s<size>.onnx;
    model.s512.fp16.onnx -> model.s<size>.fp16.onnx: one artifact per size (``--tta paper``)."""
    path = Path(path)
    name, n = re.subn(r"\.s\d+(?=\.)", f".s{size}", path.name, count=1)
    if n:
        return path.with_name(name)
    head, _, tail = path.name.partition(".")
    return path.with_name(f"{head}.s{size}.{tail}")


def unsized_name(path: str | Path) -> str:
    """model.s768.fp16.onnx -> model.fp16.onnx: the name ``sized_path`` started from."""
    return re.sub(r"[.]s[0-9]+(?=[.])", "", Path(path).name)


def fp16_path(path: str | Path) -> Path:
    """model.onnx -> model.fp16.onnx, next to it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.fp16{path.suffix}")


def int8_path(path: str | Path) -> Path:
    """model.onnx -> model.int8.onnx, next to it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def engine_path(onnx_path: str | Path, precision: str) -> Path:
    """model.onnx / model.fp16.onnx -> model.<precision>.engine beside the graph."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    for p in PRECISIONS:
        stem = stem.removesuffix(f".{p}")
    return onnx_path.with_name(f"{stem}.{precision}.engine")


def sidecar_path(engine: str | Path) -> Path:
    """model.fp16.engine -> model.fp16.engine.json."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


# ---- hashing and writing -------------------------------------------------------------------------


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/mgd-rt/<name>`` (``~/.cache/mgd-rt/<name>``): where mgd-rt keeps what it can
    rebuild (engines, compiled models, calibration data); not created here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mgd-rt" / name


def cache_folder(path: str | Path | None, env: str, name: str, what: str) -> Path:
    """A cache folder, created: ``path``, else ``$env``, else :func:`user_cache` (``name``); an MgdRtError
    naming ``what`` (e.g. "engine cache") and ``env`` when it cannot be created."""
    folder = Path(path or os.environ.get(env) or user_cache(name))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MgdRtError(f"{what} {folder}: cannot create it ({exc.strerror}); set {env}") from None
    return folder


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file, read in 1 MiB chunks (B+ graphs are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_path(path: Path, suffix: str, source: Path | None = None, what: str = "output") -> None:
    """Refuse an output that cannot be written whole: wrong suffix, over its ``source``, a folder, or a
    missing or read-only parent folder. Called before long work starts."""
    parent = path.parent
    if path.suffix != suffix:
        raise MgdRtError(f"{path}: the {what} name must end in {suffix}")
    if source is not None and path.resolve() == Path(source).resolve():
        raise MgdRtError(f"{path}: would overwrite the source {Path(source).name}; pick another -o")
    if not parent.is_dir():
        raise MgdRtError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MgdRtError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise MgdRtError(f"{path}: is a folder")


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write the file there. On a clean exit it is renamed onto
    ``path``; on any error it is removed, so ``path`` holds the old file or none, never half of one.

    The file gets the permissions any new file gets (0666 minus the umask), not mkstemp's 0600, so
    a web server, a Triton container or a colleague can read what mgd-rt writes.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_write`; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (a trailing newline) through :func:`atomic_write`."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")


# ---- the engine sidecar: everything the runtime must know before touching an engine ----------------

SIDECAR_FORMAT = "mgd-rt engine sidecar"
SIDECAR_VERSION = 1
# keys a complete sidecar has (tests assert them; the runtime reads them)
SIDECAR_KEYS = (
    "format", "format_version", "engine", "library", "precision", "strongly_typed", "profile",
    "inputs", "outputs", "image_size", "source", "build", "targets",
)


def write_engine(engine: Path, engine_bytes: bytes | memoryview, sidecar: Mapping[str, Any]) -> None:
    """Write engine and sidecar under temporary names, then rename both; on any error neither remains.

    Engines stay plain TensorRT files; ``model.fp16.engine`` is described by ``model.fp16.engine.json``.
    """
    # the sidecar is renamed last: a reader that finds it finds the engine it describes
    with atomic_write(sidecar_path(engine)) as tmp_json, atomic_write(engine) as tmp_engine:
        tmp_engine.write_bytes(engine_bytes)
        tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The sidecar of ``engine``; MgdRtError when it is missing, unreadable or not ours."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise MgdRtError(
            f"{engine}: its sidecar {path.name} is missing; an engine is only usable with the sidecar "
            "mgd-rt build writes beside it (rebuild with mgd-rt build)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MgdRtError(f"{path}: not a readable sidecar ({exc}); rebuild with mgd-rt build") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise MgdRtError(f"{path}: not an mgd-rt engine sidecar; rebuild with mgd-rt build")
    if data.get("format_version", 0) > SIDECAR_VERSION:
        raise MgdRtError(f"{path}: sidecar format {data.get('format_version')} is newer than this mgd-rt reads "
                         f"({SIDECAR_VERSION}); upgrade mgd-rt")
    missing = [k for k in SIDECAR_KEYS if k not in data]
    if missing:
        raise MgdRtError(f"{path}: sidecar lacks {', '.join(missing)}; rebuild with mgd-rt build")
    return data


__all__ = [
    "CHECKPOINT_SUFFIXES", "CODE_SIZE_KEY", "DRM_INPUTS_KEY", "ENGINE_SUFFIXES", "GRAPH_SUFFIXES",
    "INT8_CHECKED_ON_KEY", "INT8_CHECK_KEY", "METADATA_KEYS",
    "PACKAGE_METADATA_KEYS", "PACKAGE_PRECISIONS", "PACKAGE_SUFFIXES", "PRECISIONS",
    "SIDECAR_FORMAT", "SIDECAR_KEYS", "SIDECAR_VERSION", "UNTRAINED", "atomic_write", "cache_folder",
    "check_output_path", "engine_path", "file_sha256", "format_floats", "fp16_path", "int8_path", "metadata_floats",
    "read_sidecar", "sidecar_path", "sized_path", "unsized_name", "user_cache", "write_atomic", "write_engine",
    "write_json_atomic",
]
