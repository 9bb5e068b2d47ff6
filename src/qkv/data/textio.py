"""Reading UTF-8 text so that a bad byte is one clear line, not a decoder's traceback.

A :class:`UnicodeDecodeError` gives a byte offset into the whole input; a person needs
the file, the line and the column. Every reader of UTF-8 text (the translation corpus,
the Wikipedia extracts, the command line's standard input) decodes through here, so
they all say it the same way: ``de-en: line 3: not valid UTF-8 (byte 0xff at column 1)``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["decode_line", "decode_lines", "decode_text", "read_lines"]


def decode_line(raw: bytes, *, name: str, number: int) -> str:
    """``raw`` (line ``number`` of ``name``) decoded as UTF-8; ValueError naming the
    file, the line, the byte and its column (from 1) when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{name}: line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} "
            f"at column {error.start + 1})"
        ) from None


def decode_lines(lines: Iterable[bytes], *, name: str) -> Iterator[str]:
    """Each of ``lines`` decoded by :func:`decode_line`, numbered from 1."""
    for number, raw in enumerate(lines, start=1):
        yield decode_line(raw, name=name, number=number)


def decode_text(data: bytes, *, name: str) -> str:
    """All of ``data`` decoded as UTF-8. The whole is decoded at once (fast); only when
    that fails are the lines decoded one by one, to name the line at fault."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        for _ in decode_lines(data.splitlines(), name=name):
            pass
        raise  # not reached: some line holds the bad byte


def read_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of the UTF-8 file ``path`` (gzip-compressed when it ends in ``.gz``),
    with their line ends, read lazily; ValueError naming the line of a bad byte."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield from decode_lines(f, name=str(path))
