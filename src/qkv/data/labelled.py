"""The user's own labelled text for ``qkv bert finetune --train FILE``: CSV, TSV, JSON Lines.

The format follows the file name: ``.csv`` (comma-separated, RFC 4180 quoting), ``.tsv``
(tab-separated, no quoting: quote characters are text), ``.jsonl`` or ``.json`` (one JSON
object per line), each optionally gzip-compressed (``.csv.gz``, ...). CSV and TSV files
start with a header row naming the columns. A text is a string; a label is a string or a
number (``1`` and ``"1"`` are the same label, a name like any other).

Classes: the label names of the *train* file, sorted (numerically when every name is an
integer, so ``0 … 10`` keep their order), define the classes and their indices; a label of
the valid or test file that the train file lacks is an error naming the file, the line and
the label.

Splits (:meth:`LabelledFiles.load`): the files given are used as they are; a split that
is not given (``valid`` or ``test``) is carved out of the train file by the hash split of
:func:`qkv.data.text.split_of` (its 10% bucket of that split), the rest stays train. So
``--train`` alone gives 80/10/10, as the built-in sets; duplicates are dropped from a file
that is split this way (a duplicate across splits would leak the answer).

Every problem in a file is one ``ValueError`` naming the file and the line (the first
line of a CSV record): a missing column (with the columns the file has), an empty text or
label, a malformed JSON line, a row with the wrong number of fields, bytes that are not
UTF-8, a file without examples.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.data.text import LabelledText, split_of
from qkv.data.textio import decode_text

__all__ = ["FORMATS", "LabelledFiles", "Record", "file_format", "read_labelled_file"]

logger = logging.getLogger(__name__)

#: File name endings (before an optional ``.gz``) and their format.
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class Record:
    """One example of a file: its text (and second text of a pair), label name, line."""

    text: str
    pair: str | None
    label: str
    line: int


def file_format(path: str | Path) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the name of ``path`` (``.gz`` looked through)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if not suffixes or suffixes[-1] not in FORMATS:
        raise ValueError(
            f"{path}: unknown format; name the file .csv, .tsv, .jsonl or .json (JSON Lines), "
            "optionally with .gz"
        )
    return FORMATS[suffixes[-1]]


def _read_text(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file (give a .csv, .tsv or .jsonl file)")
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a readable gzip file ({error})") from None
    text = decode_text(data, name=str(path))  # names the line of a bad byte
    return text.removeprefix("\ufeff")  # a byte-order mark some spreadsheets write


def _label_name(value: Any, where: str) -> str:
    """A label as a name: strings as they are (stripped), integers and other numbers as
    written; anything else (null, a list, true/false) is refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: the label must be a string or a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: the label must be a string or a finite number, got {value}")
    name = value.strip() if isinstance(value, str) else str(value)
    if not name:
        raise ValueError(f"{where}: empty label")
    return name


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must hold a string, got {value!r}")
    if not value.strip():
        raise ValueError(f"{where}: empty text in column {column!r}")
    return value


def _have(columns: Sequence[str]) -> str:
    return "it has: " + (", ".join(repr(c) for c in columns) or "none")


def _table_rows(path: Path, text: str, fmt: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header of a CSV/TSV and ``(first line of the record, fields)`` of each
    non-blank row after it."""
    stream = io.StringIO(text, newline="")
    if fmt == "tsv":
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(stream, strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    end = 0  # the last line of the previous record
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue  # a blank line
            if header is None:
                header = [f.strip() for f in fields]
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}: line {start}: {len(fields)} fields, the header has {len(header)}"
                    + (" (a tab inside a text? TSV has no quoting)" if fmt == "tsv" else "")
                )
            rows.append((start, fields))
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({error})") from None
    if header is None:
        raise ValueError(f"{path}: the file is empty (no header row, no examples)")
    return header, rows


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
) -> list[Record]:
    """The examples of one CSV, TSV or JSON Lines file (format by :func:`file_format`),
    in file order. Raises ``ValueError`` naming the file and line of any problem (see
    the module docstring), ``FileNotFoundError`` for a missing file."""
    path = Path(path)
    fmt = file_format(path)
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    wanted = [("text column", text_column), ("label column", label_column)]
    if text_pair_column is not None:
        wanted.insert(1, ("text pair column", text_pair_column))
    records: list[Record] = []
    if fmt == "jsonl":
        # Split at line feeds only: a JSON string may hold U+2028, which splitlines() breaks.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                kind = "an array" if isinstance(row, list) else type(row).__name__
                raise ValueError(f"{where}: expected one JSON object per line, got {kind}")
            for what, key in wanted:
                if key not in row:
                    raise ValueError(f"{where}: no {what} {key!r} ({_have(list(row))})")
            records.append(_record(row, text_column, text_pair_column, label_column, where, number))
    else:
        header, rows = _table_rows(path, text, fmt)
        for what, key in wanted:
            if key not in header:
                raise ValueError(f"{path}: no {what} {key!r} ({_have(header)})")
        for number, fields in rows:
            row = dict(zip(header, fields, strict=True))
            where = f"{path}: line {number}"
            records.append(_record(row, text_column, text_pair_column, label_column, where, number))
    if not records:
        raise ValueError(f"{path}: no examples in the file")
    return records


def _record(
    row: dict[str, Any],
    text_column: str,
    pair_column: str | None,
    label_column: str,
    where: str,
    number: int,
) -> Record:
    text = _text(row[text_column], text_column, where)
    pair = _text(row[pair_column], pair_column, where) if pair_column is not None else None
    return Record(text, pair, _label_name(row[label_column], where), number)


def _sorted_labels(names: set[str]) -> list[str]:
    """Numeric order when every name is an integer (``2`` before ``10``), else text order."""
    try:
        return sorted(names, key=lambda n: (int(n), n))
    except ValueError:
        return sorted(names)


def _split_key(record: Record) -> str:
    """What the hash split sees: the text, or both texts of a pair."""
    return record.text if record.pair is None else f"{record.text}\t{record.pair}"


@dataclass(frozen=True)
class LabelledFiles:
    """Where the user's labelled examples are and which columns hold what."""

    train: str | Path
    valid: str | Path | None = None
    test: str | Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None

    @property
    def pairs(self) -> bool:
        return self.text_pair_column is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": str(self.train),
            "valid": None if self.valid is None else str(self.valid),
            "test": None if self.test is None else str(self.test),
            "text_column": self.text_column,
            "label_column": self.label_column,
            "text_pair_column": self.text_pair_column,
        }

    def _read(self, path: str | Path) -> list[Record]:
        return read_labelled_file(
            path,
            text_column=self.text_column,
            label_column=self.label_column,
            text_pair_column=self.text_pair_column,
        )

    def load(self) -> LabelledText:
        """All the files read and checked, as a :class:`~qkv.data.text.LabelledText`
        whose texts are strings, or ``(text, pair)`` tuples with a pair column."""
        train = self._read(self.train)
        given = {"valid": self.valid, "test": self.test}
        read = {name: self._read(path) for name, path in given.items() if path is not None}
        label_names = _sorted_labels({r.label for r in train})
        index = {name: i for i, name in enumerate(label_names)}
        for name, records in read.items():
            for r in records:
                if r.label not in index:
                    raise ValueError(
                        f"{given[name]}: line {r.line}: label {r.label!r} is not in the train "
                        f"file {self.train} (its labels: {', '.join(label_names)})"
                    )

        def example(r: Record) -> tuple[Any, int]:
            return (r.text if r.pair is None else (r.text, r.pair)), index[r.label]

        parts: dict[str, list[tuple[Any, int]]] = {"train": [], "valid": [], "test": []}
        if len(read) == 2:
            parts["train"] = [example(r) for r in train]
        else:
            # A split not given is carved out of the train file by the text's hash; the
            # hash bucket of a split that *is* given stays train.
            seen: set[str] = set()
            for r in train:
                key = " ".join(_split_key(r).split())
                if key in seen:
                    continue
                seen.add(key)
                split = split_of(_split_key(r))
                parts[split if split != "train" and split not in read else "train"].append(
                    example(r)
                )
            if len(seen) < len(train):
                logger.info("%s: dropped %d duplicate texts", self.train, len(train) - len(seen))
        for name, records in read.items():
            parts[name] = [example(r) for r in records]
        if not parts["train"]:
            raise ValueError(f"{self.train}: no training examples left after the split")
        return LabelledText(
            Path(self.train).name,
            tuple(label_names),
            tuple(parts["train"]),
            tuple(parts["valid"]),
            tuple(parts["test"]),
        )
