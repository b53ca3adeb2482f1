"""FLOPs of one forward pass of a variant at an image size, counted on the PyTorch model."""

from __future__ import annotations

import time
from typing import Any

# per process: a count builds the model, and every backend and precision of a variant shares it
_FLOPS_CACHE: dict[tuple[str, int], dict[str, Any]] = {}


def count_flops(variant: str, image_size: int) -> dict[str, Any]:
    """FLOPs of one (1, 3, S, S) forward pass, counted once per variant and size.

    The useful work: the model in the CPU graph's export form (mgd_rt.export.forms), which computes nothing for
    the zero padding of Hiera's windows (B+ at 1024: 849 GFLOP; eager PyTorch 963, the GPU graph and .pt2
    packages 942), so a row's share of the peak is the useful work it did per second. FlopCounterMode counts matmuls,
    convolutions and attention (2 FLOPs per multiply-add) as dispatched by PyTorch, with attention forced to
    PyTorch's math kernel: the CPU's fused attention kernel has no FLOP formula and would count as 0.
    Element-wise ops are not counted (they are bandwidth, not FLOPs).
    """
    key = (variant, int(image_size))
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        from mgd_rt.checkpoint import build_architecture
        from mgd_rt.export.forms import export_form
    except ImportError as exc:
        result: dict[str, Any] = {"flops_per_image": None, "error": f"needs torch and the export extra ({exc})"}
        _FLOPS_CACHE[key] = result
        return result
    t0 = time.perf_counter()
    # the architecture alone: FLOPs do not depend on the weights, and load_model's "UNTRAINED weights" warning
    # would read, in a bench of the user's checkpoint, as if their weights had not been loaded
    model = build_architecture(variant, image_size).eval()
    counter = FlopCounterMode(display=False)
    # a CPU pass: the model's autocast check knows no meta device
    with torch.inference_mode(), export_form(model, cpu_graph=True), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, 3, image_size, image_size))
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    result = {"flops_per_image": int(counter.get_total_flops()), "gflops_per_image": counter.get_total_flops() / 1e9,
              "by_op": by_op, "method": "torch.utils.flop_counter.FlopCounterMode, export form, CPU forward, "
              "math attention", "torch": torch.__version__, "seconds": time.perf_counter() - t0}
    _FLOPS_CACHE[key] = result
    return result


__all__ = ["count_flops"]
