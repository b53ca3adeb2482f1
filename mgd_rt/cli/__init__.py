"""The ``mgd-rt`` command: one subcommand per library entry point, each a thin wrapper.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable

from mgd_rt.engine import enable_engine_cache
from mgd_rt.errors import MgdRtError
from mgd_rt.version import __version__

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
    "mgd_rt.cli.app",
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


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """mgd-rt's own messages at INFO (DEBUG with -v, WARNING with -q); other libraries' loggers (onnxslim,
    onnxscript, ModelOpt, Ray) only say warnings unless -v: their INFO chatter is not for users."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(format="mgd-rt: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("mgd_rt").setLevel(level)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so the same clean-up runs (a batch job, a
    container stop and a scheduler's kill all end the way an interactive Ctrl-C does)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


# exit codes of an interrupted command: 128 + the signal number, what a shell reports
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


def _execute(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command with the CLI's contract: user errors in one line (exit 1), bugs keep their traceback,
    SIGINT and SIGTERM stop it cleanly (exit 130 and 143): files being written are finished or removed."""
    configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    enable_engine_cache()  # an .onnx on --backend tensorrt is built once through the engine cache
    # signal handlers can only be set from the main thread (main() called from a worker thread: leave them)
    previous = (signal.signal(signal.SIGTERM, _raise_terminated)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return int(func(args) or 0)
    except MgdRtError as exc:
        print(f"mgd-rt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"mgd-rt: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _execute(args.func, args)


def run_script(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """The top-level scripts (export/to_onnx.py, ...): the subcommand's own parser and run function."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return _execute(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
