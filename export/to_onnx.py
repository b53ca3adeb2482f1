"""Export MGD-SAM2 to ONNX: the same flags and library call as ``mgd-rt export``.

    python export/to_onnx.py [--checkpoint CKPT] [--variant V] [--image-size 1024] [-o model.onnx]
                             [--fp16] [--batch dynamic|N] [--opset N] [--no-verify]
"""

from __future__ import annotations

import argparse
import logging
import sys

from mgd_rt.cli.export import DESCRIPTION, add_export_arguments, run
from mgd_rt.errors import MgdRtError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="to_onnx.py", description=DESCRIPTION)
    add_export_arguments(parser)  # the parser `mgd-rt export` uses
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="mgd-rt: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except MgdRtError as exc:
        print(f"mgd-rt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
