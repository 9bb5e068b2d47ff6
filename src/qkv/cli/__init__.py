"""The ``qkv`` command: one subcommand per job, each in its own module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from qkv.cli import attention, bert, embed, explain, translate, vit

COMMANDS = (explain, translate, bert, embed, attention, vit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv", description="The Transformer family, from attention up."
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice). On a small shared CPU one "
        "thread is often faster than two for small models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"qkv: --threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    return int(args.run(args) or 0)
