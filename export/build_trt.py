"""Build a TensorRT / TensorRT-RTX engine: the same flags and library call as ``mgd-rt build``.

    python export/build_trt.py model.onnx [--fp16 | --int8 [--calib-images DIR [-n 64] [--method max] ...]]
                               [--batch MIN:OPT:MAX]
                               [--workspace GiB] [--timing-cache FILE] [--opt-level 0-5]
                               [--rtx [--target sm86,sm89,sm120]] [-o model.<prec>.engine]
"""

from __future__ import annotations

import sys

from mgd_rt.cli import run_script
from mgd_rt.cli.build import DESCRIPTION, add_build_arguments, run


def main(argv: list[str] | None = None) -> int:
    return run_script("build_trt.py", DESCRIPTION, add_build_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
