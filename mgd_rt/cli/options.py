"""Option groups several subcommands share, defined once."""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser, checkpoint_flag: bool = True) -> None:
    """--checkpoint, --variant, --image-size: what load_model takes."""
    group = parser.add_argument_group("model")
    if checkpoint_flag:
        group.add_argument(
            "--checkpoint", metavar="CKPT",
            help="MGD-SAM2 (or SAM2.1) checkpoint: .pth/.pt/.safetensors; "
            "without it, seeded UNTRAINED weights",
        )
    group.add_argument(
        "--variant", choices=["b+", "t", "s", "l", "tiny"],
        help="model size; detected from the checkpoint when left out (b+ without one)",
    )
    group.add_argument(
        "--image-size", type=int, metavar="S",
        help="side of the square model input, S/2 a multiple of 32 (default: 1024, tiny 512)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
