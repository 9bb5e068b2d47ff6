"""English running text cut into sentences: the target side of back-translation.

The Wikipedia lead sections and the BBC News articles that BERT reads
(:mod:`qkv.data.text`) are paragraphs; a translator learns from sentences. The
splitter is a rule, not a model: a sentence ends at ``.``, ``?`` or ``!`` (with any
closing quotes or brackets after it) followed by a space and an upper-case letter,
a digit or an opening quote, unless the word before the full stop is a known
abbreviation ("Mr.", "U.S.", "e.g.") or a single initial ("J. R. R. Tolkien").

:func:`monolingual_sentences` keeps the sentences a dictionary-trained translator can
use: within a length range in words, no list or table debris, each once, in a fixed
order. Use::

    sentences = monolingual_sentences()            # Wikipedia + BBC News, installed
    split_sentences("Mr. Smith left. He was late.")  # ["Mr. Smith left.", "He was late."]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from qkv.data.text import load_bbc_bodies, load_wikipedia

__all__ = ["ABBREVIATIONS", "monolingual_sentences", "split_sentences"]

#: Words that end in a full stop without ending a sentence (compared in lower case).
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "gen", "col", "lt", "sgt",
        "capt", "gov", "sen", "rep", "vs", "etc", "e.g", "i.e", "cf", "approx", "no", "nos",
        "vol", "fig", "ca", "c", "inc", "ltd", "co", "corp", "bros", "dept", "univ", "jan",
        "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mt",
        "ft", "u.s", "u.k", "u.n", "e.u", "a.m", "p.m",
    }
)  # fmt: skip

# A candidate end: the end mark, any closing quotes or brackets, then space, then what
# may open a sentence (an upper-case letter, a digit, an opening quote or bracket).
_END = re.compile(r"""([.?!]+)(["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _is_abbreviation(text_before: str) -> bool:
    """Whether the full stop after ``text_before`` marks an abbreviation, not an end."""
    found = _WORD_BEFORE.search(text_before)
    if found is None:
        return False
    word = found.group(1).lstrip("\"'“‘([").lower()
    if len(word) == 1 and word.isalpha():  # an initial: "J. Smith"
        return True
    return word in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """``text`` (a paragraph; whitespace is normalised) cut into sentences, in order.
    Text after the last end mark is a sentence too (a headline, a list item)."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _END.finditer(text):
        marks = match.group(1)
        if marks == "." and _is_abbreviation(text[start : match.start(1)]):
            continue
        sentences.append(text[start : match.end(2)])
        start = match.end()
    if start < len(text):
        sentences.append(text[start:])
    return [s for s in sentences if s]


# What a usable sentence looks like: it starts with an upper-case letter or a quote and
# ends with an end mark (optionally quoted); no tabs (they separate TSV columns).
_USABLE = re.compile(r"""^["'“‘]?[A-Z].*[.?!]["'”’)]?$""")


def usable(sentence: str, min_words: int, max_words: int) -> bool:
    """Whether ``sentence`` is worth translating: ``min_words`` to ``max_words`` words,
    starts like a sentence and ends with an end mark, and is mostly words (a line of
    figures, a table row or a list of names is not)."""
    words = sentence.split()
    if not min_words <= len(words) <= max_words or "\t" in sentence:
        return False
    if not _USABLE.match(sentence):
        return False
    letters = sum(ch.isalpha() for ch in sentence)
    return letters >= 0.7 * sum(not ch.isspace() for ch in sentence)


def _texts(wikipedia: str | Path | None, bbc: str | Path | None) -> Iterator[str]:
    for _, extract in load_wikipedia(wikipedia):
        yield extract
    yield from load_bbc_bodies(bbc)


def monolingual_sentences(
    texts: Iterable[str] | None = None,
    *,
    min_words: int = 4,
    max_words: int = 25,
    wikipedia: str | Path | None = None,
    bbc: str | Path | None = None,
) -> list[str]:
    """The usable sentences (:func:`usable`) of ``texts``, each once, in order of first
    appearance. ``texts``: paragraphs; default the installed Wikipedia lead sections
    (``wikipedia``: their file) and BBC News article bodies (``bbc``: their folder)."""
    source = _texts(wikipedia, bbc) if texts is None else texts
    seen: set[str] = set()
    kept = []
    for text in source:
        for sentence in split_sentences(text):
            if sentence not in seen and usable(sentence, min_words, max_words):
                seen.add(sentence)
                kept.append(sentence)
    return kept
