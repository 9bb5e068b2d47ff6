"""Checked option types and input reading shared by the subcommands.

argparse calls a ``type`` with the option's text; raising
:class:`argparse.ArgumentTypeError` there makes it print ``prog: error: argument
--limit: ...`` and exit with status 2, so a bad number is refused before any model
or data set is loaded.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar

if TYPE_CHECKING:
    from qkv.train.recipe import Recipe

    R = TypeVar("R", bound=Recipe[Any])

__all__ = [
    "Parser",
    "add_compile",
    "add_inference_options",
    "add_json",
    "add_overwrite",
    "add_progress",
    "add_quantize",
    "add_training_speed",
    "check_quantize",
    "device",
    "finite_float",
    "inference_device",
    "non_negative_float",
    "non_negative_int",
    "overwrite_option",
    "positive_float",
    "positive_int",
    "print_json",
    "probability",
    "progress_option",
    "read_lines",
    "training_speed",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (it holds examples), and every option's default in its
    help, ``(default: 4)``, except where there is none to show (``None``, a flag's
    ``False``, an empty list) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (``qkv vit train: argument --limit: must
    be at least 1, got 0``) and status 2; ``--help`` still prints the whole usage, with
    each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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


DTYPES = ("fp32", "bf16", "fp16")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, the same on every command that runs a model."""
    parser.add_argument(
        "--device",
        type=device,
        help="where the model runs: cpu, cuda, cuda:N or mps (default: cuda if available, "
        "else cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="the model's number format: fp32, bf16, or fp16 (GPUs only)",
    )


def add_compile(parser: argparse.ArgumentParser) -> None:
    """``--compile``, on the commands that run a BERT or a ViT (:mod:`qkv.compile`)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the model with torch.compile: the first batch of each new shape waits "
        "for compilation, later ones may run faster (a GPU gains most); the same results",
    )


def add_quantize(parser: argparse.ArgumentParser) -> None:
    """``--quantize``, on the commands that decode with a translator (:mod:`qkv.quantize`)."""
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="decode with int8 copies of the decoder's weights (a CPU only): several times "
        "faster one sentence at a time, translations within a tolerance of the model's own",
    )


def check_quantize(
    parser: argparse.ArgumentParser, options: argparse.Namespace, where: Any
) -> None:
    """A usage error (exit 2) when :func:`add_quantize`'s choice cannot run on ``where``."""
    from qkv.quantize import int8_unavailable

    if options.quantize is not None:
        why = int8_unavailable(where)
        if why is not None:
            parser.error(f"--quantize {options.quantize}: {why}")


def inference_device(options: argparse.Namespace) -> tuple[Any, Any]:
    """(torch device, torch dtype) of :func:`add_inference_options`' choices.

    fp16 is refused on the CPU, where torch computes it slowly and some kernels lack it.
    """
    import torch

    name = getattr(options, "device", None)
    where = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = getattr(options, "dtype", "fp32")
    if dtype_name == "fp16" and where.type == "cpu":
        raise ValueError("--dtype fp16 needs a GPU (--device cuda or mps); use bf16 on the CPU")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if dtype_name == "bf16":
        from qkv.precision import bf16_is_slow

        slow = bf16_is_slow(where)
        if slow:
            logging.getLogger("qkv").warning(
                "--dtype bf16: %s, so the model will run far slower than in fp32", slow
            )
    return where, dtype


def add_json(parser: argparse.ArgumentParser, what: str = "one JSON object per input") -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} (JSON Lines; keys in docs/cli.md) instead of text for people",
    )


def print_json(record: Any) -> None:
    """One JSON Lines record on stdout: UTF-8 text as it is, no NaN (refused, not printed),
    flushed so that a pipe's reader gets it now."""
    import json

    print(json.dumps(record, ensure_ascii=False, allow_nan=False), flush=True)


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (logs and batch jobs); the bar is shown on a terminal otherwise",
    )


def progress_option(options: argparse.Namespace) -> bool | None:
    """``progress=`` for the tasks: ``False`` with --no-progress, else ``None`` (tqdm's own
    choice: shown on a terminal)."""
    return False if getattr(options, "no_progress", False) else None


def add_overwrite(
    parser: argparse.ArgumentParser,
    resume: str | None = "continue from the last checkpoint",
) -> None:
    """``--overwrite`` and, unless ``resume`` is None, ``--resume`` with that help: they
    exclude each other, so that together they are a usage error before any work."""
    group = parser.add_mutually_exclusive_group()
    if resume is not None:
        group.add_argument("--resume", action="store_true", help=resume)
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run directory that already holds a run (its files are replaced)",
    )


def add_set(parser: argparse.ArgumentParser, examples: str) -> None:
    """``--set FIELD=VALUE`` of the training commands: one field of the recipe
    (:meth:`qkv.train.recipe.Recipe.override_text`), read back with :func:`apply_set`."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"change one field of the recipe (repeatable), e.g. {examples}; an unknown "
        "field lists the known ones; recorded in the run, so --resume needs the same",
    )


def apply_set(
    parser: argparse.ArgumentParser,
    recipe: R,
    options: argparse.Namespace,
    options_for: dict[str, str] | None = None,
) -> R:
    """``recipe`` with the ``--set`` assignments; a bad one is a usage error (exit 2).
    ``options_for`` maps a field to the destination of the command's own option for it
    (``{"train.max_steps": "steps"}``): setting both is a usage error, not a silent
    choice of one."""
    for assignment in options.set:
        key = assignment.partition("=")[0]
        dest = (options_for or {}).get(key)
        if dest is not None and getattr(options, dest) != parser.get_default(dest):
            parser.error(f"--set {key} and --{dest.replace('_', '-')} both set it: give one")
    try:
        return recipe.override_text(options.set)
    except ValueError as error:
        parser.error(str(error))


def add_training_speed(parser: argparse.ArgumentParser) -> None:
    """``--compile`` and ``--checkpoint-activations`` of the training commands (read back
    with :func:`training_speed`)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train through torch.compile (the first steps wait for compilation)",
    )
    parser.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="recompute each layer's activations in the backward pass: less memory, "
        "about a third more compute",
    )


def training_speed(options: argparse.Namespace) -> dict[str, bool]:
    """``compile=`` and ``checkpoint_activations=`` for the tasks' training functions."""
    return {
        "compile": options.compile,
        "checkpoint_activations": options.checkpoint_activations,
    }


def overwrite_option(function: Callable[..., Any], overwrite: bool) -> dict[str, bool]:
    """``{"overwrite": True}`` for ``function(**...)`` when asked for; nothing otherwise,
    so a task function that does not know the keyword yet still runs without it."""
    if not overwrite:
        return {}
    if "overwrite" not in inspect.signature(function).parameters:
        raise ValueError(f"--overwrite: {function.__name__} does not support it in this version")
    return {"overwrite": True}


def check_new_folder(path: str | os.PathLike[str]) -> None:
    """Refuse (``FileExistsError``, one line) to write a new folder where something
    already is: an export never replaces files it did not write."""
    if os.path.lexists(path):
        raise FileExistsError(f"{path} already exists; give a new folder")


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
