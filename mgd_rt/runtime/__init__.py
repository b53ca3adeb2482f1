"""The runtime: Segmenter, image I/O, pre/post-processing, window tiling, backends.

Light by design: nothing here imports torch except ``backends/torch_backend.py``, which is
loaded only for a checkpoint, so a deployment machine runs .onnx graphs and engines without
torch (tests/test_runtime.py proves it). The runtime consumes artifacts; it imports nothing from
the stages that make them (export, calibration, engine).
"""

from mgd_rt.runtime.backends import BACKENDS, Backend, load_backend
from mgd_rt.runtime.segmenter import Result, Segmenter

__all__ = ["BACKENDS", "Backend", "Result", "Segmenter", "load_backend"]
