"""Export stage, ahead of time: PyTorch model -> model.pt2, an AOTInductor package, verified.

``torch.export`` captures the export form (:func:`mgd_rt.export.forms.export_form`: constant position
codes, Conv2d pairs) with a dynamic batch, AOTInductor compiles it into one shared library of C++ (CPU)
or Triton (CUDA) kernels with the weights inside, and packages that with the same metadata an ONNX
graph carries (artifacts.METADATA_KEYS but opset) plus artifacts.PACKAGE_METADATA_KEYS. The runtime
(:mod:`mgd_rt.runtime.backends.aoti_backend`) runs it without the model's Python code, on the device
kind, CPU instruction set or GPU architecture, and torch build it was compiled for, and refuses others.

Precision: fp16 and bf16 packages are exported under ``torch.autocast`` (captured into the program,
so the casts are compiled in), the same policy as the PyTorch backend's: weights stay FP32, autocast
runs matrix products and convolutions in the low precision and keeps the sensitive ops (softmax,
layer norms, the neck's FP32 interpolation, the DRM: ``MGDSAM2.refine``) in FP32. Casting the whole
model instead fails: the neck interpolates in FP32 on purpose and its sum would meet a half-precision
convolution.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mgd_rt.artifacts import PACKAGE_PRECISIONS, UNTRAINED, atomic_write, check_output_path, file_sha256
from mgd_rt.errors import MgdRtError
from mgd_rt.export.verify import VerifyReport, verify
from mgd_rt.machine import peak_rss_mb
from mgd_rt.runtime.backends.aoti_backend import read_package_metadata
from mgd_rt.runtime.backends.torch_backend import resolve_device

log = logging.getLogger("mgd_rt")

# the largest batch a package takes unless told (the ONNX export's dynamic range, torch_export.MAX_BATCH)
DEFAULT_MAX_BATCH = 256
# autocast dtype of each package precision (fp32: no autocast)
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class AOTIResult:
    """What export_aoti wrote and measured."""

    path: Path
    variant: str
    image_size: int
    device: str  # the device kind compiled for: cpu or cuda
    precision: str
    min_batch: int
    max_batch: int
    checkpoint_sha256: str
    metadata: dict[str, str] = field(default_factory=dict)  # as read back from the written package
    file_bytes: int = 0
    program_nodes: int = 0  # nodes of the exported program's graph (what AOTInductor compiled)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    verification: list[VerifyReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(self.verification)

    def lines(self) -> list[str]:
        s = self.image_size
        batch = str(self.min_batch) if self.min_batch == self.max_batch else f"{self.min_batch}..{self.max_batch}"
        target = self.metadata.get("AOTI_CPU_ISA") if self.device == "cpu" else \
            f"compute capability {self.metadata.get('AOTI_COMPUTE_CAPABILITY')}"
        out = [
            f"wrote {self.path} ({self.file_bytes / 1e6:.1f} MB), AOTInductor package, variant {self.variant}, "
            f"S={s}, {self.precision}, batch {batch}",
            f"  input image (B, 3, {s}, {s}) float32 -> mask_logits (B, 1, {s}, {s}) float32; "
            f"{self.program_nodes} graph nodes compiled",
            f"  runs on: {self.device} ({target or 'no vector ISA'}) with torch "
            f"{self.metadata.get('torch_version')} only (another device or torch: re-export)",
        ]
        for report in self.verification:
            out.extend("  " + line for line in report.lines())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        out.append(f"time: {steps}; peak memory {self.peak_rss_mb:.0f} MB")
        total = sum(self.timings.values())
        verdict = "PASS" if self.passed else "FAIL"
        out.append(f"{verdict}: export in {total:.1f} s" if self.verification
                   else f"done (not verified) in {total:.1f} s")
        return out


def _check_request(device: str, dtype: str, min_batch: int, max_batch: int) -> None:
    """Refuse what cannot be compiled, before the model is loaded (seconds) and compiled (minutes)."""
    if dtype not in PACKAGE_PRECISIONS:
        raise MgdRtError(f"--dtype {dtype}: an AOTInductor package computes in {', '.join(PACKAGE_PRECISIONS)}")
    if dtype == "fp16" and device.split(":")[0] == "cpu":
        # as the torch backend: CPU float16 autocast is slow and less accurate than bf16 there
        raise MgdRtError("--dtype fp16 on the CPU: use bf16 on the CPU, or fp16 with --device cuda")
    if not 1 <= min_batch <= max_batch:
        raise MgdRtError(f"batch range {min_batch}..{max_batch}: need 1 <= --min-batch <= --max-batch")


def export_aoti(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    output: str | Path = "model.pt2",
    device: str = "cpu",
    dtype: str = "fp32",
    min_batch: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    verify_package: bool = True,
    images: str | Path | None = None,
    pixel_input: bool = False,
) -> AOTIResult:
    """Compile MGD-SAM2 into the AOTInductor package ``output`` (.pt2) for ``device`` (cpu, cuda, cuda:N).

    The package: image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S), computed in ``dtype``
    (fp32; fp16 on CUDA; bf16), for batches ``min_batch``..``max_batch`` (equal: a static batch).
    Metadata: artifacts.METADATA_KEYS but opset, plus artifacts.PACKAGE_METADATA_KEYS. Written under a
    temporary name and renamed, so an error leaves nothing half-written. ``verify_package``: compare
    it with the PyTorch FP32 model on photos and random input (``mgd-rt verify``'s measures, the
    tolerance of ``dtype``), on the device it was compiled for. ``pixel_input``: image is uint8 (B, S, S, 3)
    RGB, normalised inside the package (metadata input_format uint8), as ``export_onnx``'s.
    """
    from mgd_rt.checkpoint import load_model
    from mgd_rt.contract import BATCH_AXIS_NAME, INPUT_FORMAT_KEY, INPUT_NAME, PIXEL_INPUT
    from mgd_rt.export import model_metadata
    from mgd_rt.export.forms import PixelInput, export_form
    from mgd_rt.export.torch_export import example_input

    output = Path(output)
    check_output_path(output, ".pt2")
    _check_request(device, dtype, min_batch, max_batch)
    dev = resolve_device(device)  # refuses cuda where CUDA is not usable
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        log.info("%s: %.1f s", name, timings[name])

    t0 = time.perf_counter()
    model = load_model(checkpoint, variant, image_size, device=dev)
    sha = file_sha256(checkpoint) if checkpoint is not None else UNTRAINED
    if checkpoint is None:
        log.warning("exporting SEEDED UNTRAINED weights (no --checkpoint): for benchmarks only")
    step("load", t0)
    result = AOTIResult(output, model.variant.name, model.image_size, dev.type, dtype, min_batch, max_batch, sha)

    t0 = time.perf_counter()
    static = min_batch == max_batch
    # a dynamic batch is traced with B >= 2: torch.export specialises a traced batch of 1
    example = example_input(model.image_size, min_batch if static else max(2, min_batch), pixel_input).to(dev)
    dynamic_shapes = None if static else {INPUT_NAME: {0: torch.export.Dim(BATCH_AXIS_NAME, min=min_batch,
                                                                           max=max_batch)}}
    log.info("exporting %s at S=%d for %s %s (torch.export, batch %d..%d)...", model.variant.name,
             model.image_size, dev.type, dtype, min_batch, max_batch)
    with export_form(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on lifted constants and the like
        # non-strict: traces the Python as it runs (the strict, TorchDynamo capture cannot trace the neck's
        # FP32 interpolation under autocast)
        traced = PixelInput(model) if pixel_input else model  # the normalisation in FP32 (autocast leaves it)
        if dtype != "fp32":
            traced = AutocastLogits(traced, dev.type, _AUTOCAST[dtype])
        program = torch.export.export(traced, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    result.program_nodes = len(program.graph.nodes)
    step("export", t0)

    meta = {
        **model_metadata(model, sha, dtype),  # what an ONNX graph of the model says, opset aside
        "device": dev.type,
        "torch_version": torch.__version__,
        "min_batch": str(min_batch),
        "max_batch": str(max_batch),
    }
    if pixel_input:
        meta[INPUT_FORMAT_KEY] = PIXEL_INPUT
    t0 = time.perf_counter()
    log.info("compiling with AOTInductor (minutes)...")
    # our metadata is stored beside AOTInductor's own (device key, CPU ISA, compute capability)
    configs: dict[str, object] = {"aot_inductor.metadata": meta}
    if dev.type == "cpu":
        # freezing: the weights become constants, constant-folded and laid out for oneDNN's
        # convolutions and matrix products once, at compile time: PyTorch's advice for
        # AOTInductor on CPUs. Same logits; tiny at S=512, batch 1: 1.80 s against 2.22 s (best of 9,
        # 2-core EPYC under load); it also compiled faster (144 s against 191 s)
        configs["freezing"] = True
    with atomic_write(output) as tmp, open(tmp, "wb") as package:
        # AOTInductor compiles for the device the program's tensors are on (dev)
        torch._inductor.aoti_compile_and_package(program, package_path=package, inductor_configs=configs)
    result.file_bytes = output.stat().st_size
    result.metadata = read_package_metadata(output)
    step("compile", t0)
    del program

    if verify_package:
        t0 = time.perf_counter()
        log.info("verifying %s on %s...", output.name, dev)
        # the reference is the PyTorch FP32 model on the CPU, as for ONNX graphs
        result.verification.append(verify(output, checkpoint, images, model=model.to("cpu")))
        step("verify", t0)
    result.timings = timings
    result.peak_rss_mb = peak_rss_mb()
    return result


class AutocastLogits(nn.Module):
    """``model`` under autocast to ``dtype`` on ``device_type``, its logits cast back to float32 (the I/O
    contract): what torch.export captures for an fp16 or bf16 package."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image float32 (B, 3, S, S) -> mask_logits float32 (B, 1, S, S)."""
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits = self.model(image)
        return logits.float()


__all__ = ["DEFAULT_MAX_BATCH", "AOTIResult", "AutocastLogits", "export_aoti"]
