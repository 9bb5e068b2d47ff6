"""Checked option types and input reading shared by the subcommands.

argparse calls a ``type`` with the option's text; raising
:class:`argparse.ArgumentTypeError` there makes it print ``prog: error: argument
--limit: ...`` and exit with status 2, so a bad number is refused before any model
or data set is loaded.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

__all__ = [
    "Parser",
    "add_overwrite",
    "device",
    "finite_float",
    "non_negative_float",
    "non_negative_int",
    "overwrite_option",
    "positive_float",
    "positive_int",
    "probability",
    "read_lines",
]


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (``qkv vit train: argument --limit: must
    be at least 1, got 0``) and status 2; ``--help`` still prints the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def positive_int(value: str) -> int:
    """A count that must be at least 1 (``--steps``, ``--batch-size``, ``--beam``)."""
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """A count that may be 0 (``--values``, ``--examples``)."""
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def finite_float(value: str) -> float:
    """A number; ``nan`` and ``inf``, which ``float()`` accepts, are refused."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def non_negative_float(value: str) -> float:
    """A finite number >= 0 (``--length-penalty``)."""
    number = finite_float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0 (``--lr``, ``--epochs``)."""
    number = finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def probability(value: str) -> float:
    """A dropout rate: finite, in [0, 1)."""
    number = finite_float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def device(value: str) -> str:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Checked here so that a typo or a missing GPU is one line before training starts,
    not a torch traceback after the data is loaded. The text is returned as given.
    """
    import torch

    try:
        parsed = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"not a device: {value!r} (expected cpu, cuda, cuda:N or mps)"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(
                f"{value}: no such GPU, this machine has {count} (cuda:0 to cuda:{count - 1})"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{value}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{value}: unsupported device (use cpu, cuda or mps)")
    return value


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run directory that already holds a run (its files are replaced)",
    )


def overwrite_option(function: Callable[..., Any], overwrite: bool) -> dict[str, bool]:
    """``{"overwrite": True}`` for ``function(**...)`` when asked for; nothing otherwise,
    so a task function that does not know the keyword yet still runs without it."""
    if not overwrite:
        return {}
    if "overwrite" not in inspect.signature(function).parameters:
        raise ValueError(f"--overwrite: {function.__name__} does not support it in this version")
    return {"overwrite": True}


def read_lines(stream: Any = None, *, name: str = "stdin") -> list[str]:
    """The lines of ``stream`` (default: standard input), without their line ends.

    Bytes are decoded line by line, so input that is not UTF-8 is refused with the
    number of the line at fault rather than a decoder's byte offset into the whole
    stream. A text stream (as tests substitute for stdin) is read as it is.
    """
    from qkv.data.textio import decode_lines

    stream = sys.stdin if stream is None else stream
    binary: BinaryIO | None = getattr(stream, "buffer", None)
    if binary is None:
        return stream.read().splitlines()
    return list(decode_lines(binary.read().splitlines(), name=name))
