"""The network contract every stage shares: I/O names, the dynamic axis, normalisation.

The metadata keys an artifact carries live in mgd_rt.artifacts.

numpy-free and torch-free, so the light runtime imports it without pulling anything heavy.
"""

from __future__ import annotations

# ONNX graph input: float32 (B, 3, S, S), normalised with IMAGENET_MEAN / IMAGENET_STD; or, in an
# artifact exported with a pixel input (metadata INPUT_FORMAT_KEY = PIXEL_INPUT), uint8 (B, S, S, 3)
# RGB as resized, the normalisation done inside the graph (a quarter of the bytes, no host float work).
INPUT_NAME = "image"
INPUT_FORMAT_KEY = "input_format"
FLOAT_INPUT = "float32"
PIXEL_INPUT = "uint8"
INPUT_FORMATS = (FLOAT_INPUT, PIXEL_INPUT)
# ONNX graph output: float32 (B, 1, S, S) mask logits (sigmoid gives the matte).
OUTPUT_NAME = "mask_logits"

# The one dynamic axis of a batch-dynamic graph: the batch; spatial sizes are static.
BATCH_AXIS_NAME = "batch"

# Normalisation of RGB in [0, 1]: x = (rgb - mean) / std, per channel (SAM2's ImageNet values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
