"""Segment images with a checkpoint or an .onnx graph: ``python runtime/infer.py MODEL INPUT... -o OUTDIR``.

A thin wrapper over ``mgd_rt.runtime.infer.infer``, the same as ``mgd-rt infer`` (same flags).
"""

import sys

from mgd_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
