"""The runtime: Segmenter, image I/O, pre/post-processing, window tiling, backends.

Light by design: nothing here imports torch except ``backends/torch_backend.py``, which is
loaded only for a checkpoint (design.md, "A light runtime").
"""

from mgd_rt.runtime.backends import BACKENDS, Backend, load_backend
from mgd_rt.runtime.segmenter import Result, Segmenter

__all__ = ["BACKENDS", "Backend", "Result", "Segmenter", "load_backend"]
