"""AOTInductor backend: a .pt2 package from ``mgd-rt export --aoti``, run without the model's Python code.

A package is compiled code for one device kind, one CPU instruction set (CPU) or GPU architecture
(CUDA), one platform, and one torch build. Its metadata (mgd-rt's, artifacts.PACKAGE_METADATA_KEYS,
and AOTInductor's own AOTI_* keys) is read from the archive before its library is loaded, and a
package made for anything else is refused with the fix (re-export here), never loaded to crash on an
illegal instruction or an ABI mismatch. torch's own loader only logs a warning on such mismatches.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mgd_rt.artifacts import METADATA_KEYS, PACKAGE_METADATA_KEYS, PACKAGE_PRECISIONS
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.backends.base import Backend

log = logging.getLogger("mgd_rt")

# the archive member holding the default model's metadata (AOTInductor writes it beside the library:
# <archive>/data/aotinductor/model/<hash>.wrapper_metadata.json); torch's loader reads the same file
_METADATA_MEMBER = re.compile(r"(^|/)data/aotinductor/model/[^/]+\.wrapper_metadata\.json$")
# mgd-rt keys every package has (opset aside: no ONNX in it)
REQUIRED_KEYS = tuple(k for k in METADATA_KEYS if k != "opset") + tuple(PACKAGE_METADATA_KEYS)
_REEXPORT = "re-export it here with mgd-rt export --aoti"


def read_package_metadata(path: str | Path) -> dict[str, str]:
    """All metadata of the .pt2 package at ``path``: mgd-rt's keys and AOTInductor's (AOTI_DEVICE_KEY,
    AOTI_CPU_ISA, AOTI_COMPUTE_CAPABILITY, AOTI_PLATFORM, AOTI_MACHINE), read from the archive without
    loading its compiled library. MgdRtError when it is not an mgd-rt package."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if _METADATA_MEMBER.search(n)]
            if len(members) != 1:
                raise MgdRtError(f"{path}: not an AOTInductor package with one model ({len(members)} model "
                                 "metadata files); export one with mgd-rt export --aoti")
            meta = json.loads(archive.read(members[0]))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise MgdRtError(f"{path}: not a readable .pt2 package ({first_line(exc)}); export one with "
                         "mgd-rt export --aoti") from None
    if not isinstance(meta, dict):
        raise MgdRtError(f"{path}: its model metadata is not a JSON object; export it with mgd-rt export --aoti")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise MgdRtError(f"{path}: not an mgd-rt package, its metadata lacks {', '.join(missing)}; "
                         "export it with mgd-rt export --aoti")
    return {str(k): str(v) for k, v in meta.items()}


def cpu_isas() -> list[str]:
    """The vector instruction sets AOTInductor can compile for on this CPU, best first, spelled as a
    package's AOTI_CPU_ISA ("AVX512 AVX512_VNNI", "AVX512", "AVX2")."""
    from torch._inductor import cpu_vec_isa

    return [str(isa).upper() for isa in cpu_vec_isa.valid_vec_isa_list()]


def check_package(meta: Mapping[str, str], path: Path, device: str | None) -> torch.device:
    """The device to run the package described by ``meta`` on (``device`` None: the one it was compiled
    for); MgdRtError, one line naming ``path`` and the fix, when it cannot run here."""
    name = path.name
    built, here = meta["torch_version"], torch.__version__
    if built != here:
        raise MgdRtError(f"{name}: compiled by torch {built}, this is torch {here}; an AOTInductor package runs "
                         f"on the torch that compiled it: {_REEXPORT}")
    kind = meta["device"]
    try:
        dev = torch.device(device if device is not None else kind)
    except RuntimeError:
        raise MgdRtError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type != kind:
        raise MgdRtError(f"{name}: compiled for {kind}, not {dev.type}; run it with --device {kind} or export "
                         f"one for {dev.type} (mgd-rt export --aoti --device {dev.type})")
    for key, value in (("AOTI_PLATFORM", sys.platform), ("AOTI_MACHINE", platform.machine())):
        if meta.get(key, value) != value:
            raise MgdRtError(f"{name}: compiled for {meta[key]}, this machine is {value}; {_REEXPORT}")
    if kind == "cpu":
        isa = meta.get("AOTI_CPU_ISA", "")
        # its kernels use these instructions unconditionally: a CPU without them stops on the first one
        if isa and isa not in (have := cpu_isas()):
            raise MgdRtError(f"{name}: compiled for {isa} instructions, which this CPU lacks (it has "
                             f"{', '.join(have) or 'no vector ISA AOTInductor uses'}); {_REEXPORT}")
        return dev
    if not torch.cuda.is_available():
        raise MgdRtError(f"{name}: compiled for CUDA, which is not usable here (torch {here}); export one for the "
                         "CPU (mgd-rt export --aoti --device cpu)")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise MgdRtError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    dev = torch.device("cuda", index)
    major, minor = torch.cuda.get_device_capability(dev)
    arch = meta.get("AOTI_COMPUTE_CAPABILITY", "")
    if arch and arch != f"{major}{minor}":
        raise MgdRtError(f"{name}: compiled for compute capability {arch}, {torch.cuda.get_device_name(dev)} is "
                         f"{major}{minor}; {_REEXPORT} on this GPU")
    return dev


class AOTIBackend(Backend):
    """``model``: path of a .pt2 package: image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S)."""

    name = "aoti"
    kind = "package"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
    ) -> None:
        super().__init__(check_inputs)
        path = self.model_file(model, "AOTInductor package")
        meta = read_package_metadata(path)
        self.torch_device = check_package(meta, path, device)
        self.apply_metadata(meta)
        self.precision = meta["precision"]
        if self.precision not in PACKAGE_PRECISIONS:
            raise MgdRtError(f"{path.name}: precision {self.precision!r} in its metadata; this mgd-rt runs "
                             f"{', '.join(PACKAGE_PRECISIONS)} packages: upgrade mgd-rt or re-export")
        self.check_dtype(dtype, path.name, f"export a {dtype} package (mgd-rt export --aoti --dtype {dtype})")
        try:
            self.image_size = int(meta["image_size"])
            self.min_batch, self.max_batch = int(meta["min_batch"]), int(meta["max_batch"])
        except ValueError:
            raise MgdRtError(f"{path.name}: image_size or batch range in its metadata is not a number; "
                             "re-export it with mgd-rt export --aoti") from None
        index = self.torch_device.index if self.torch_device.type == "cuda" else -1
        try:
            self.model = torch._inductor.aoti_load_package(str(path), device_index=index)
        except Exception as exc:  # torch raises RuntimeError and others from its C++ loader
            raise MgdRtError(f"{path.name}: torch cannot load this package ({first_line(exc)}); {_REEXPORT}") from None
        if self.torch_device.type == "cpu":
            self.device = f"cpu ({meta.get('AOTI_CPU_ISA') or 'scalar'} kernels)"
        else:
            self.device = f"{self.torch_device} ({torch.cuda.get_device_name(self.torch_device)})"

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        # the compiled code does not check the batch against the range it was compiled for:
        # run_unchecked keeps batches <= max_batch, a batch under min_batch is padded with copies of
        # its last image here and their logits dropped
        n = batch.shape[0]
        x = torch.from_numpy(batch).to(self.torch_device)
        if n < self.min_batch:
            x = torch.cat([x, x[-1:].expand(self.min_batch - n, *x.shape[1:])])
        with torch.inference_mode():
            logits = self.model(x)
        # float32 on the host (the package's output already is float32: the I/O contract)
        return logits[:n].float().cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["AOTIBackend", "check_package", "cpu_isas", "read_package_metadata"]
