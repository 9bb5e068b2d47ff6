"""Tagged sentences from CoNLL-style files: a token and its tag per line, a blank line
between sentences (the layout of CoNLL-2003, WNUT and most named-entity corpora)::

    -DOCSTART- -X- -X- O

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O
    German JJ B-NP B-MISC

    Peter B-PER
    Blackburn I-PER

Rules:

- columns are separated by whitespace (spaces or tabs); the token is the FIRST column
  and the tag the LAST, so the four-column CoNLL-2003 files and two-column files read
  alike, and the columns between (part of speech, chunk) are ignored;
- a blank line (or one of spaces only) ends a sentence; several in a row, or at the
  start or end of the file, are one boundary;
- a line whose token is ``-DOCSTART-`` marks a new document: it is skipped, and it ends
  the sentence before it;
- a line with a single column is an error naming the file and the line;
- a tag is any string: the scheme (IOB1, IOB2, IOBES, plain types) is not checked here;
  :mod:`seqeval` scores IOB2-style tags;
- the file is UTF-8, plain or gzip-compressed (``.gz``); a bad byte is an error naming
  the line (:mod:`qkv.data.textio`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qkv.data.textio import read_lines

__all__ = ["DOCSTART", "OUTSIDE", "TaggedSentence", "check_tags", "read_conll", "tag_set"]

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"  # the tag of a token outside every entity


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: ``words`` and their ``tags`` (as many), and ``line``, the line of
    the file its first word is on (word ``i`` is on line ``line + i``)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int = 0

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise ValueError(f"{len(self.words)} words but {len(self.tags)} tags")


def read_conll(path: str | os.PathLike[str]) -> list[TaggedSentence]:
    """The sentences of the CoNLL-style file ``path`` (rules: the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with one column, bytes that are not UTF-8, or a file with no
            sentence at all; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def end_sentence() -> None:
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags), start))
            words.clear()
            tags.clear()

    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split()
        if not columns:
            end_sentence()
            continue
        if columns[0] == DOCSTART:
            end_sentence()
            continue
        if len(columns) == 1:
            raise ValueError(
                f"{path}: line {number}: expected a token and its tag separated by "
                f"whitespace, got one column {columns[0]!r}"
            )
        if not words:
            start = number
        words.append(columns[0])
        tags.append(columns[-1])
    end_sentence()
    if not sentences:
        raise ValueError(f"{path}: no tagged sentence (expected a token and its tag per line)")
    return sentences


def tag_set(sentences: Iterable[TaggedSentence]) -> list[str]:
    """The sorted tags of ``sentences``, with ``O`` among them even where no token has it
    (a prediction outside every entity must be possible)."""
    return sorted({OUTSIDE}.union(*(s.tags for s in sentences)))


def check_tags(
    sentences: Sequence[TaggedSentence], tags: Sequence[str], path: str | os.PathLike[str]
) -> None:
    """ValueError naming ``path`` and the line of the first tag that is not in ``tags``
    (a valid or test file with a tag the training file lacks: the model cannot predict it)."""
    known = set(tags)
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in known:
                raise ValueError(
                    f"{path}: line {sentence.line + i}: tag {tag!r} is not among the "
                    f"{len(known)} tags of the training file ({', '.join(sorted(known))})"
                )
