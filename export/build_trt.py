"""Build a TensorRT / TensorRT-RTX engine: the same flags and library call as ``mgd-rt build``.

    python export/build_trt.py model.onnx [--fp16 | --int8 [--calib-images DIR]] [--batch MIN:OPT:MAX]
                               [--workspace GiB] [--timing-cache FILE] [--opt-level 0-5]
                               [--rtx [--target sm86,sm89,sm120]] [-o model.<prec>.engine]
"""

from __future__ import annotations

import argparse
import logging
import sys

from mgd_rt.cli.build import DESCRIPTION, add_build_arguments, run
from mgd_rt.errors import MgdRtError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_trt.py", description=DESCRIPTION)
    add_build_arguments(parser)  # the parser `mgd-rt build` uses
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="mgd-rt: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except MgdRtError as exc:
        print(f"mgd-rt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
