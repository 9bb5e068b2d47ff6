"""A user's own parallel corpus: read it line by line, split it, keep its token ids compactly.

Two layouts, each plain or gzip-compressed (a name ending in ``.gz``):

- a TSV file: one pair per line, ``source<TAB>target``;
- two aligned text files (the layout of OPUS and Moses corpora): line ``n`` of the source
  file translates line ``n`` of the target file.

Bad data is refused with the file, the line and the problem, as one line
(``train.tsv: line 7: no tab between source and target``): a line that is not UTF-8, a line
without a tab or with more than one, an empty side, two files of different lengths. With
``skip_bad_lines`` the bad lines (pairs) are skipped and counted instead; files of different
lengths are refused even then, since every later pair would be misaligned. A corpus without
a single usable pair is an error, never a run.

Files are streamed: nothing holds the whole corpus as Python strings. Once tokenised, the ids
live in :class:`EncodedPairs`, one flat numpy array per side plus the offsets where each
sentence starts, a few bytes per token instead of a Python list per sentence.

Without a valid or a test file, the split is by a SHA-256 hash of each pair's source side
(:func:`qkv.data.splits.hash_split`, 90/5/5; 95/5 when one of valid and test is given), so it
depends on nothing but the sentence: the same on every machine and run, whatever the order
of the file or ``limit``, and a repeated source sentence lands in one split.

Use::

    data = ParallelData(ParallelFile.tsv_file("fr-en.tsv.gz"), src_lang="fr", tgt_lang="en")
    for source, target in data.pairs("train"): ...
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from qkv.data.splits import Split, hash_split
from qkv.data.textio import decode_line

__all__ = [
    "BadLineError",
    "EncodedPairs",
    "ParallelData",
    "ParallelFile",
    "SkippedLines",
    "check_lang",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

# Buckets of the hash split (of 100): train, valid; the rest is test.
_SPLIT_PERCENT: dict[tuple[bool, bool], tuple[int, int]] = {
    # (valid file given, test file given) -> (train %, valid %)
    (False, False): (90, 5),
    (True, False): (95, 0),  # the rest, 5%, is test
    (False, True): (95, 5),  # nothing left for test: it is the file
    (True, True): (100, 0),
}


class BadLineError(ValueError):
    """A line of a corpus file that cannot be a sentence pair; the message names the file,
    the line and the problem."""


def check_lang(code: str, option: str = "language") -> str:
    """``code`` if it can name a language in a run (``fr``, ``pt-BR``); ValueError otherwise."""
    if not code or any(c.isspace() for c in code) or len(code) > 35:
        raise ValueError(f"{option}: {code!r} is not a language code (e.g. fr, en, pt-BR)")
    return code


@dataclass
class SkippedLines:
    """How many bad lines ``skip_bad_lines`` skipped, per file, and the first one's problem."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, message: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.first.setdefault(name, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def log(self) -> None:
        """One warning per file that had bad lines."""
        for name, count in self.counts.items():
            logger.warning(
                "%s: skipped %d bad line%s (the first: %s)",
                name,
                count,
                "" if count == 1 else "s",
                self.first[name],
            )


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decode(raw: bytes, name: str, number: int) -> str:
    try:
        text = decode_line(raw, name=name, number=number)
    except ValueError as error:
        raise BadLineError(str(error)) from None
    return text.rstrip("\r\n")


def _side(text: str, which: str, name: str, number: int) -> str:
    text = text.strip()
    if not text:
        raise BadLineError(f"{name}: line {number}: empty {which} side")
    return text


def _tsv_pair(raw: bytes, name: str, number: int) -> Pair:
    text = _decode(raw, name, number)
    tabs = text.count("\t")
    if tabs != 1:
        if not text.strip():
            raise BadLineError(f"{name}: line {number}: empty line, expected source<TAB>target")
        if tabs == 0:
            raise BadLineError(f"{name}: line {number}: no tab between source and target")
        raise BadLineError(
            f"{name}: line {number}: {tabs} tabs, expected one between source and target"
        )
    source, target = text.split("\t")
    return _side(source, "source", name, number), _side(target, "target", name, number)


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies a file's content in a run: its absolute path, size and SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class ParallelFile:
    """One parallel corpus file: a TSV (``tsv``), or two aligned files (``source`` and
    ``target``). Paths are absolute, so a run can find them again from anywhere."""

    tsv: Path | None = None
    source: Path | None = None
    target: Path | None = None

    def __post_init__(self) -> None:
        if (self.tsv is None) == (self.source is None and self.target is None):
            raise ValueError("a parallel file is a TSV or a source and a target file")
        if self.tsv is None and (self.source is None or self.target is None):
            raise ValueError("two aligned files need both a source and a target file")

    @classmethod
    def tsv_file(cls, path: str | os.PathLike[str]) -> ParallelFile:
        """A ``source<TAB>target`` file."""
        return cls(tsv=Path(path).absolute())

    @classmethod
    def aligned(
        cls, source: str | os.PathLike[str], target: str | os.PathLike[str]
    ) -> ParallelFile:
        """Two files aligned line by line."""
        return cls(source=Path(source).absolute(), target=Path(target).absolute())

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.tsv,) if self.tsv is not None else (self.source, self.target)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """The file, or the two files joined by `` + ``, for messages."""
        return " + ".join(str(p) for p in self.paths)

    def check(self, what: str = "corpus file") -> None:
        """FileNotFoundError naming a missing file."""
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such {what}")

    def record(self) -> dict[str, Any]:
        """Where the file is and what it holds (path, size, SHA-256), for a run's identity."""
        self.check()
        if self.tsv is not None:
            return {"tsv": _fingerprint(self.tsv)}
        return {"source": _fingerprint(self.source), "target": _fingerprint(self.target)}  # type: ignore[arg-type]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ParallelFile:
        """The file of a :meth:`record`."""
        if "tsv" in record:
            return cls(tsv=Path(record["tsv"]["path"]))
        return cls(source=Path(record["source"]["path"]), target=Path(record["target"]["path"]))

    def pairs(
        self, *, skip_bad_lines: bool = False, skipped: SkippedLines | None = None
    ) -> Iterator[Pair]:
        """The (source, target) pairs, in file order, read lazily; each side stripped of
        surrounding whitespace. A bad line is a :class:`BadLineError`, or skipped (and
        counted into ``skipped``) with ``skip_bad_lines``."""
        self.check()
        if self.tsv is not None:
            name = str(self.tsv)
            with _open(self.tsv) as f:
                for number, raw in enumerate(f, start=1):
                    try:
                        yield _tsv_pair(raw, name, number)
                    except BadLineError as error:
                        if not skip_bad_lines:
                            raise
                        if skipped is not None:
                            skipped.add(name, str(error).removeprefix(f"{name}: "))
            return
        yield from self._aligned_pairs(skip_bad_lines, skipped)

    def _aligned_pairs(self, skip_bad_lines: bool, skipped: SkippedLines | None) -> Iterator[Pair]:
        source_path, target_path = self.source, self.target
        assert source_path is not None and target_path is not None
        source_name, target_name = str(source_path), str(target_path)
        with _open(source_path) as sources, _open(target_path) as targets:
            number = 0
            for number, (raw_source, raw_target) in enumerate(
                itertools.zip_longest(sources, targets), start=1
            ):
                if raw_source is None or raw_target is None:
                    # Different lengths misalign every pair: refused even with skip_bad_lines.
                    short, long, rest = (
                        (source_name, target_name, targets)
                        if raw_source is None
                        else (target_name, source_name, sources)
                    )
                    more = 1 + sum(1 for _ in rest)
                    raise ValueError(
                        f"{short} has {number - 1} lines but {long} has {number - 1 + more}: "
                        "the two files must be aligned line by line"
                    )
                try:
                    source = _side(
                        _decode(raw_source, source_name, number), "source", source_name, number
                    )
                    target = _side(
                        _decode(raw_target, target_name, number), "target", target_name, number
                    )
                except BadLineError as error:
                    if not skip_bad_lines:
                        raise
                    if skipped is not None:
                        file, _, problem = str(error).partition(": ")
                        skipped.add(file, problem)
                    continue
                yield source, target


@dataclass(frozen=True)
class ParallelData:
    """A user's corpus: the train file, optional valid and test files, the languages.

    ``limit`` keeps the first ``limit`` usable pairs of the train file (before the hash
    split, which does not depend on it); valid and test files are read whole.
    """

    train: ParallelFile
    valid: ParallelFile | None = None
    test: ParallelFile | None = None
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    skip_bad_lines: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        check_lang(self.src_lang, "--src-lang")
        check_lang(self.tgt_lang, "--tgt-lang")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")

    @property
    def direction(self) -> str:
        """``src-tgt`` (``fr-en``), for display."""
        return f"{self.src_lang}-{self.tgt_lang}"

    @property
    def split_percent(self) -> tuple[int, int]:
        """(train %, valid %) of the hash split of the train file; the rest is test."""
        return _SPLIT_PERCENT[self.valid is not None, self.test is not None]

    def check(self) -> None:
        """FileNotFoundError naming the first missing file."""
        for file, what in ((self.train, "train"), (self.valid, "valid"), (self.test, "test")):
            if file is not None:
                file.check(f"{what} file")

    def split_of(self, source: str) -> Split:
        """The split of a pair of the train file, from its source side."""
        train, valid = self.split_percent
        if train == 100:
            return "train"
        return hash_split(source, train_percent=train, valid_percent=valid)

    def train_file_pairs(self, skipped: SkippedLines | None = None) -> Iterator[tuple[Split, Pair]]:
        """(split, pair) for each usable pair of the train file, up to ``limit``; a
        ValueError when the file has none."""
        count = 0
        pairs = self.train.pairs(skip_bad_lines=self.skip_bad_lines, skipped=skipped)
        for pair in itertools.islice(pairs, self.limit):
            count += 1
            yield self.split_of(pair[0]), pair
        if count == 0:
            raise ValueError(f"{self.train.name}: no sentence pairs (the corpus is empty)")

    def pairs(self, split: Split, skipped: SkippedLines | None = None) -> Iterator[Pair]:
        """The pairs of one split, streamed: from its own file when given, else the train
        file's pairs that the hash puts there."""
        own = {"valid": self.valid, "test": self.test}.get(split)
        if own is not None:
            count = 0
            for pair in own.pairs(skip_bad_lines=self.skip_bad_lines, skipped=skipped):
                count += 1
                yield pair
            if count == 0:
                raise ValueError(f"{own.name}: no sentence pairs (the {split} file is empty)")
            return
        for where, pair in self.train_file_pairs(skipped):
            if where == split:
                yield pair

    def record(self) -> dict[str, Any]:
        """What defines the data in a run (files with sizes and hashes, the split, the
        options), JSON-able; :meth:`from_record` finds the files again."""
        train, valid = self.split_percent
        return {
            "kind": "parallel",
            "train": self.train.record(),
            "valid": self.valid.record() if self.valid is not None else None,
            "test": self.test.record() if self.test is not None else None,
            "split": f"hash of the source side: {train}/{valid}/{100 - train - valid}",
            "limit": self.limit,
            "skip_bad_lines": self.skip_bad_lines,
        }

    @classmethod
    def from_record(
        cls, record: dict[str, Any], *, src_lang: str = "src", tgt_lang: str = "tgt"
    ) -> ParallelData:
        """The data of a run's :meth:`record` (the files must still be there to read)."""

        def file(key: str) -> ParallelFile | None:
            value = record.get(key)
            return ParallelFile.from_record(value) if value else None

        train = file("train")
        assert train is not None
        return cls(
            train,
            file("valid"),
            file("test"),
            src_lang=src_lang,
            tgt_lang=tgt_lang,
            skip_bad_lines=bool(record.get("skip_bad_lines", False)),
            limit=record.get("limit"),
        )

    def with_limit(self, limit: int | None) -> ParallelData:
        return replace(self, limit=limit)


# -- compact token ids ----------------------------------------------------------------------


def _id_dtype(vocab_size: int) -> np.dtype:
    # Two bytes a token while the ids fit; most translation vocabularies are below 65,536.
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


@dataclass(frozen=True)
class EncodedPairs(Sequence[tuple[np.ndarray, np.ndarray]]):
    """Token ids of sentence pairs, one flat array per side.

    Pair ``i``'s source ids are ``source_ids[source_offsets[i]:source_offsets[i + 1]]``,
    likewise for the target. Shapes: ``*_ids (total tokens,)`` (uint16 or int32),
    ``*_offsets (n + 1,)`` int64. ``pairs[i]`` gives the two id arrays (views).
    """

    source_ids: np.ndarray
    source_offsets: np.ndarray
    target_ids: np.ndarray
    target_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.source_offsets) - 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} of {len(self)}")
        index %= len(self)
        so, to = self.source_offsets, self.target_offsets
        return (
            self.source_ids[so[index] : so[index + 1]],
            self.target_ids[to[index] : to[index + 1]],
        )

    def source_lengths(self) -> np.ndarray:
        """``(n,)`` token counts of the source sides."""
        return np.diff(self.source_offsets)

    def target_lengths(self) -> np.ndarray:
        """``(n,)`` token counts of the target sides."""
        return np.diff(self.target_offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of the four arrays."""
        return sum(
            a.nbytes
            for a in (self.source_ids, self.source_offsets, self.target_ids, self.target_offsets)
        )


class EncodedPairsBuilder:
    """Collects pairs of id lists chunk by chunk into an :class:`EncodedPairs`."""

    def __init__(self, vocab_size: int) -> None:
        self.dtype = _id_dtype(vocab_size)
        self._ids: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._lengths: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    def add(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> None:
        """Append pairs: ``sources[i]`` with ``targets[i]``."""
        for side, rows in enumerate((sources, targets)):
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
            flat = np.fromiter(
                itertools.chain.from_iterable(rows), dtype=self.dtype, count=int(lengths.sum())
            )
            self._ids[side].append(flat)
            self._lengths[side].append(lengths)

    def build(self) -> EncodedPairs:
        arrays = []
        for side in (0, 1):
            ids = np.concatenate(self._ids[side]) if self._ids[side] else np.zeros(0, self.dtype)
            lengths = self._lengths[side]
            offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
            if lengths:
                np.cumsum(np.concatenate(lengths), out=offsets[1:])
            arrays += [ids, offsets]
        self._ids, self._lengths = ([], []), ([], [])
        return EncodedPairs(*arrays)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
