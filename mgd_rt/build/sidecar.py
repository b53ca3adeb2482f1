"""The engine's JSON sidecar: everything the runtime must know before touching the engine.

Engines stay plain TensorRT files (style.md); ``model.fp16.engine`` is described by
``model.fp16.engine.json`` beside it. Engine and sidecar together are the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mgd_rt.errors import MgdRtError

SIDECAR_FORMAT = "mgd-rt engine sidecar"
SIDECAR_VERSION = 1
# keys a complete sidecar has (tests assert them; the runtime reads them)
SIDECAR_KEYS = (
    "format", "format_version", "engine", "library", "precision", "strongly_typed", "profile",
    "inputs", "outputs", "image_size", "source", "build", "targets",
)


def sidecar_path(engine: str | Path) -> Path:
    """model.fp16.engine -> model.fp16.engine.json."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file, read in 1 MiB chunks (B+ graphs are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_beside(path: Path) -> Path:
    """A fresh temporary file in ``path``'s folder, so the final rename is atomic."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes it 0600; the artifact gets the permissions any new file would (umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_artifact(engine_path: Path, engine_bytes: bytes | memoryview, sidecar: dict[str, Any]) -> None:
    """Write engine and sidecar under temporary names, then rename both; on any error neither remains."""
    tmp_engine = temp_beside(engine_path)
    tmp_json = temp_beside(sidecar_path(engine_path))
    try:
        tmp_engine.write_bytes(engine_bytes)
        tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")
        # the sidecar goes last: a reader that finds it finds the engine it describes
        os.replace(tmp_engine, engine_path)
        os.replace(tmp_json, sidecar_path(engine_path))
    except BaseException:
        tmp_engine.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
        raise


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


__all__ = ["SIDECAR_KEYS", "file_sha256", "read_sidecar", "sidecar_path", "write_artifact"]
