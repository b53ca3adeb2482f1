"""INT8 calibration: the same flags and library call as ``mgd-rt calibrate``.

    python calibration/calibrate.py model.onnx [--images DIR] [-n 64] [--method entropy|max|percentile]
                                    [--exclude PATTERN ...] [-o model.int8.onnx]
                                    [--target-accuracy IOU] [--recover-budget steps=N,fp32=F] [--no-recover]
"""

from __future__ import annotations

import sys

from mgd_rt.cli import run_script
from mgd_rt.cli.calibrate import DESCRIPTION, add_calibrate_arguments, run


def main(argv: list[str] | None = None) -> int:
    return run_script("calibrate.py", DESCRIPTION, add_calibrate_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
