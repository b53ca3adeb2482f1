"""PyTorch backend: a checkpoint (or a loaded MGDSAM2) run under inference mode.

The only runtime module that imports torch. FP16/BF16 run under autocast (weights stay
FP32, numerically sensitive ops stay FP32 as autocast decides); the logits are returned as
float32 whatever the compute precision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgd_rt.errors import MgdRtError
from mgd_rt.runtime.backends.base import Backend

log = logging.getLogger("mgd_rt")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """None picks CUDA when usable, else the CPU; an explicit CUDA without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MgdRtError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MgdRtError(f"--device {device}: CUDA is not usable here (torch {torch.__version__}, "
                             f"no GPU or no CUDA build); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MgdRtError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise MgdRtError(f"--device {device}: the torch backend runs on cpu or cuda")
    return dev


class TorchBackend(Backend):
    """``model``: a checkpoint path (see :func:`mgd_rt.load_model`) or an MGDSAM2 module."""

    name = "torch"

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        **load_kwargs: Any,
    ) -> None:
        from mgd_rt.checkpoint import load_model

        super().__init__(check_inputs)
        dev = resolve_device(device)
        dtype = dtype or "fp32"
        if dtype not in _DTYPES:
            raise MgdRtError(f"--dtype {dtype}: the torch backend runs fp32, fp16 or bf16")
        if dtype == "fp16" and dev.type == "cpu":
            # CPU autocast to float16 exists but is slow and less accurate than bf16 there;
            # refuse rather than quietly run something else
            raise MgdRtError("--dtype fp16 on the CPU: use bf16 on the CPU, or fp16 with --device cuda")
        if isinstance(model, torch.nn.Module):
            self.model = model.to(dev).eval()
        else:
            self.model = load_model(model, device=dev, **load_kwargs)
        self.image_size = int(self.model.image_size)
        self.variant = self.model.variant.name
        self.trained = bool(getattr(self.model, "trained", False))
        self.torch_device = dev
        self.device = str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})"
        self.precision = dtype
        self.autocast = _DTYPES[dtype]

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(
            self.torch_device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            logits = self.model(x)
        # float32 on the host: the post-processing contract whatever the compute precision
        return logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
