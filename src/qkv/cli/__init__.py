"""The ``qkv`` command: one subcommand per job, each in its own module.

The contract of every subcommand: an expected failure (a missing file, a bad value,
an unreadable checkpoint) is one line on stderr, ``qkv COMMAND: message``, and exit
status 1; a usage error is argparse's status 2; ``--debug`` shows the traceback
instead. :func:`main` enforces it once for all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from qkv import __version__
from qkv.cli import attention, bert, embed, explain, export, quickstart, translate, vit
from qkv.cli._errors import describe
from qkv.cli._options import Parser, positive_int

COMMANDS = (quickstart, explain, translate, bert, embed, attention, vit, export)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qkv", description="The Transformer family, from attention up.")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (default: torch's choice). On a small shared CPU one "
        "thread is often faster than two for small models.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of a failure"
    )
    parser.add_argument("--version", action="version", version=f"qkv {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _prog(args: argparse.Namespace) -> str:
    """``qkv vit classify`` for a group's subcommand, ``qkv explain`` otherwise."""
    rest = getattr(args, "args", None) or []
    if rest and rest[0] in getattr(args, "subcommands", ()):
        return f"qkv {args.command} {rest[0]}"
    return f"qkv {args.command}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the reader has gone (``qkv explain | head -1``), and the
    interpreter's last flush must not fail again with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (stdout captured in-process)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if hasattr(args, "subcommands"):
        # A group takes the rest of the line as it is; argparse will not hand it one that
        # starts with an option (``qkv translate --help``, ``qkv translate --beam 2 RUN``).
        args.args = argv[argv.index(args.command) + 1 :]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    prog = _prog(args)
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers below
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
    except KeyboardInterrupt as error:  # Ctrl-C, or a TrainingInterrupted built on it
        if args.debug:
            raise
        message, status = describe(error) or ("interrupted", 130)
        print(f"{prog}: {message}", file=sys.stderr)
        return status
    except Exception as error:
        failure = None if args.debug else describe(error)
        if failure is None:
            raise
        message, status = failure
        print(f"{prog}: {message}", file=sys.stderr)
        return status
