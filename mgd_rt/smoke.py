"""One forward pass of the PyTorch model, summarised: does this checkpoint run, and how."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mgd_rt.checkpoint import load_model


@dataclass
class SmokeReport:
    variant: str
    image_size: int
    trained: bool
    parameters: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    logit_min: float
    logit_max: float
    logit_mean: float
    logit_std: float
    fraction_positive: float
    seconds: float
    device: str

    def lines(self) -> list[str]:
        weights = "trained checkpoint" if self.trained else "UNTRAINED seeded weights"
        return [
            f"variant      {self.variant} ({weights})",
            f"parameters   {self.parameters:,}",
            f"input        image {list(self.input_shape)} float32, ImageNet-normalised",
            f"output       mask_logits {list(self.output_shape)} float32",
            f"logits       min {self.logit_min:.4f}  max {self.logit_max:.4f}  "
            f"mean {self.logit_mean:.4f}  std {self.logit_std:.4f}",
            f"mask > 0     {100 * self.fraction_positive:.2f}% of pixels",
            f"forward      {self.seconds:.2f} s on {self.device}",
        ]

    def as_dict(self) -> dict:
        return asdict(self)


def smoke(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    batch: int = 1,
    seed: int = 0,
) -> SmokeReport:
    """Load the model and run one forward on seeded N(0, 1) input of shape (batch, 3, S, S)."""
    model = load_model(checkpoint, variant=variant, image_size=image_size, device=device)
    size = model.image_size
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=generator).to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(image)
    if logits.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    logits = logits.float().cpu()
    return SmokeReport(
        variant=model.variant.name,
        image_size=size,
        trained=model.trained,
        parameters=sum(p.numel() for p in model.parameters()),
        input_shape=tuple(image.shape),
        output_shape=tuple(logits.shape),
        logit_min=float(logits.min()),
        logit_max=float(logits.max()),
        logit_mean=float(logits.mean()),
        logit_std=float(logits.std()),
        fraction_positive=float((logits > 0).float().mean()),
        seconds=seconds,
        device=str(device),
    )
