"""Export MGD-SAM2 to ONNX: the same flags and library call as ``mgd-rt export``.

    python export/to_onnx.py [--checkpoint CKPT] [--variant V] [--image-size 1024] [-o model.onnx]
                             [--fp16] [--batch dynamic|N] [--opset N] [--no-verify]
"""

from __future__ import annotations

import sys

from mgd_rt.cli import run_script
from mgd_rt.cli.export import DESCRIPTION, add_export_arguments, run


def main(argv: list[str] | None = None) -> int:
    return run_script("to_onnx.py", DESCRIPTION, add_export_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
