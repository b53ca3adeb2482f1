"""export_onnx's graphs kept between test sessions, for runs where exporting is most of the time.

Enabled by ``MGD_RT_TEST_EXPORT_CACHE=DIR`` (tests/conftest.py). Under QEMU (tests/as_avx2_cpu.sh) the tiny graph's
export takes half an hour where a native run takes 40 s, and it computes the same graph on every CPU: run the tests
natively once with the variable set, then under QEMU with the same folder. A graph is reused only for the same
arguments, the same checkpoint bytes, the same mgd_rt source and the same torch; CI leaves the variable unset,
since there the exports are part of what the tests check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
from pathlib import Path
from typing import Any

import mgd_rt
import mgd_rt.export as export

PACKAGE = Path(mgd_rt.__file__).resolve().parent


def _key(checkpoint: Any, variant: Any, image_size: Any, output: Path, options: dict[str, Any]) -> str:
    import torch

    digest = hashlib.sha256(repr((variant, image_size, output.name, sorted(options.items()),
                                  torch.__version__)).encode())
    path = Path(checkpoint) if checkpoint is not None else None
    digest.update(path.read_bytes() if path is not None and path.is_file() else repr(checkpoint).encode())
    for source in sorted(PACKAGE.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:24]


def install(folder: Path) -> None:
    """Replace mgd_rt.export.export_onnx (the tests import it when they run) with one that reads ``folder``
    first, and fills it on a miss."""
    original = export.export_onnx

    def export_onnx(checkpoint=None, variant=None, image_size=None, output="model.onnx", **options):
        output = Path(output)
        entry = folder / _key(checkpoint, variant, image_size, output, options)
        if not (entry / "result.pkl").is_file():
            staging = entry.with_suffix(".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            result = original(checkpoint, variant, image_size, staging / output.name, **options)
            (staging / "result.pkl").write_bytes(pickle.dumps(result))
            staging.rename(entry)  # whole or absent: an interrupted export is never reused
        result = pickle.loads((entry / "result.pkl").read_bytes())  # written by this function only
        for file in entry.iterdir():
            if file.name != "result.pkl":
                shutil.copyfile(file, output.parent / file.name)
        paths = {name: output.parent / Path(value).name for name in ("path", "fp16_path")
                 if (value := getattr(result, name)) is not None}
        return dataclasses.replace(result, **paths)

    export.export_onnx = export_onnx
