"""The ``mgd-rt`` command: one subcommand per library entry point, each a thin wrapper.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mgd_rt import __version__
from mgd_rt.errors import MgdRtError

# one module per subcommand, in the order the pipeline runs
COMMANDS = [
    "mgd_rt.cli.smoke",
    "mgd_rt.cli.export",
    "mgd_rt.cli.verify",
    "mgd_rt.cli.infer",
    "mgd_rt.cli.demo",
    "mgd_rt.cli.bench",
    "mgd_rt.cli.eval",
    "mgd_rt.cli.build",
    "mgd_rt.cli.calibrate",
    "mgd_rt.cli.triton_repo",
    "mgd_rt.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgd-rt",
        description="MGD-SAM2 in production: export, build engines, segment, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"mgd-rt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="mgd-rt: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except MgdRtError as exc:
        print(f"mgd-rt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mgd-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
