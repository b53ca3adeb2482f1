"""The network contract every stage shares: I/O names, axes, normalisation, metadata keys.

numpy-free and torch-free, so the light runtime imports it without pulling anything heavy.
"""

from __future__ import annotations

# ONNX graph input: float32 (B, 3, S, S), normalised with IMAGENET_MEAN / IMAGENET_STD.
INPUT_NAME = "image"
# ONNX graph output: float32 (B, 1, S, S) mask logits (sigmoid gives the matte).
OUTPUT_NAME = "mask_logits"

# The dynamic axes of a batch-dynamic graph: only the batch; spatial sizes are static.
BATCH_AXIS_NAME = "batch"
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    INPUT_NAME: {0: BATCH_AXIS_NAME},
    OUTPUT_NAME: {0: BATCH_AXIS_NAME},
}

# Normalisation of RGB in [0, 1]: x = (rgb - mean) / std, per channel (SAM2's ImageNet values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ONNX metadata props written on every exported graph (all values are strings):
METADATA_KEYS: dict[str, str] = {
    "variant": "model size: b+, t, s, l or tiny",
    "image_size": "S, the side of the square input, decimal",
    "mean": "normalisation mean, comma-separated RGB floats",
    "std": "normalisation std, comma-separated RGB floats",
    "precision": "fp32, fp16 or int8: the graph's compute precision (I/O is always float32)",
    "opset": "ONNX default-domain opset, decimal",
    "mgd_rt_version": "mgd-rt version that wrote the graph",
    "checkpoint_sha256": "sha256 hex of the source checkpoint file, or 'untrained'",
}
