"""Which exceptions are a user's mistake or the machine's state, and how to say them.

:func:`qkv.cli.main` prints an expected failure as one line, ``qkv COMMAND: message``,
and exits with the status :func:`describe` gives; anything else is a bug in qkv and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import signal
from typing import Any

__all__ = ["describe"]


def _optional(module: str, name: str) -> type[BaseException] | None:
    """An exception class that may not exist (yet) in this version, or ``None``."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _expected_types() -> tuple[type[BaseException], ...]:
    """Missing or unreadable files (OSError, which covers PIL's UnidentifiedImageError),
    bad values and bad JSON (ValueError, which covers UnicodeDecodeError, JSONDecodeError
    and qkv's CheckpointError), bad meta.json (KeyError), and the libraries' own."""
    types: list[type[BaseException] | None] = [OSError, ValueError, KeyError]
    types += [
        _optional("safetensors", "SafetensorError"),
        _optional("PIL.Image", "DecompressionBombError"),
        _optional("qkv.train.engine", "TrainingDiverged"),
        _optional("qkv.train.rundir", "RunDirError"),
    ]
    return tuple(t for t in types if t is not None)


# Torch raises RuntimeError for a device that is missing or out of memory; any other
# RuntimeError is more likely a bug and keeps its traceback.
_DEVICE_WORDS = ("cuda", "device", "mps", "out of memory")


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError):  # str() of a KeyError is only the quoted key
        return f"missing entry {error.args[0]!r} (an incomplete or foreign meta.json or config?)"
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"  # without "[Errno 2]"
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())  # one line, whatever the library wrote


def _interrupt_status(error: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    number = getattr(error, "signal_number", None) or getattr(error, "signum", None)
    if isinstance(number, int):
        return 128 + number
    return 128 + (signal.SIGTERM if "SIGTERM" in str(error) else signal.SIGINT)


def describe(error: BaseException) -> tuple[str, int] | None:
    """(the one-line message, the exit status) of an expected failure; ``None`` for one
    that is not expected (a bug: let it show its traceback)."""
    interrupted: Any = _optional("qkv.train.engine", "TrainingInterrupted")
    if interrupted is not None and isinstance(error, interrupted):
        return _message(error), _interrupt_status(error)
    if isinstance(error, _expected_types()):
        return _message(error), 1
    if isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _DEVICE_WORDS):
        return _message(error), 1
    return None
