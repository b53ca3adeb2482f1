"""INT8 calibration: the same flags and library call as ``mgd-rt calibrate``.

    python calibration/calibrate.py model.onnx [--images DIR] [-n 64] [--method entropy|max|percentile]
                                    [--exclude PATTERN ...] [-o model.int8.onnx]
"""

from __future__ import annotations

import argparse
import logging
import sys

from mgd_rt.cli.calibrate import DESCRIPTION, add_calibrate_arguments, run
from mgd_rt.errors import MgdRtError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calibrate.py", description=DESCRIPTION)
    add_calibrate_arguments(parser)  # the parser `mgd-rt calibrate` uses
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="mgd-rt: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except MgdRtError as exc:
        print(f"mgd-rt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
