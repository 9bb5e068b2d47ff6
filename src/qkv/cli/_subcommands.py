"""The plumbing shared by command groups with subcommands (``qkv vit train|eval|classify``).

A group registers one argparse sub-parser that takes the rest of the command line
as it is; :func:`dispatch` then picks the subcommand, prints the group's usage for
``-h``; :func:`qkv.cli.main` turns the errors of missing files and bad input into
one line on stderr, naming the subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from qkv.cli._options import HelpFormatter

__all__ = ["add_group_parser", "dispatch"]

Subcommand = Callable[[list[str]], int]


def add_group_parser(
    subparsers: Any,
    name: str,
    *,
    help: str,
    usage: str,
    commands: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Register ``qkv NAME ...``; everything after NAME reaches ``run`` as ``args.args``.
    ``commands`` is the help of that rest (``"train | eval | classify"``)."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=usage,
        add_help=False,  # ``-h`` reaches dispatch, which adds the default action's options
        formatter_class=HelpFormatter,
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=commands)
    # The lowercase words of ``commands`` name the subcommands, for error messages.
    names = tuple(word for word in commands.replace("|", " ").split() if word.islower())
    parser.set_defaults(run=run, subcommands=names)
    return parser


def dispatch(
    group: str,
    usage: str,
    commands: Mapping[str, Subcommand],
    argv: list[str],
    *,
    default: Subcommand | None = None,
    default_parser: Callable[[], argparse.ArgumentParser] | None = None,
) -> int:
    """Run ``commands[argv[0]](argv[1:])``.

    ``default``, when given, takes the whole ``argv`` when ``argv[0]`` names no
    command (``qkv translate CHECKPOINT ...``); ``default_parser`` builds its parser,
    whose options the group's ``--help`` then lists too.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:  # a usage error: the usage goes to stderr, status 2
            print(usage, file=sys.stderr)
            return 2
        print(usage)
        if default_parser is not None:
            print(default_parser().format_help())
        return 0
    name = argv[0]
    if name in commands:
        command, rest = commands[name], argv[1:]
    elif default is not None:
        command, rest = default, argv
    else:
        print(
            f"qkv {group}: unknown command {name!r}; choose from {', '.join(commands)}",
            file=sys.stderr,
        )
        return 2
    return command(rest)
