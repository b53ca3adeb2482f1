"""``mgd_rt.ray``: batch segmentation on a Ray cluster (see :mod:`mgd_rt.serve.ray_data`).

``mgd_rt.ray.segment_dataset(model, inputs, outdir, actors=2)`` is ``mgd-rt infer --ray``.
Importing this module does not import ray; the call does.
"""

from __future__ import annotations

from mgd_rt.serve.ray_data import segment_dataset

__all__ = ["segment_dataset"]
