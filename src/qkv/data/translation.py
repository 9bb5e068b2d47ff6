"""German–English sentence pairs from the Ding dictionary (Debian ``trans-de-en``).

The corpus is Frank Richter's Ding dictionary (TU Chemnitz, GPL-2+), which Debian ships as one
UTF-8 file, ``/usr/share/trans/de-en``. Besides words, many of its entries carry example
sentences, and those sentences are what we translate. ``scripts/setup.sh`` installs it.

Notation, for one line of the file::

    German sub-entry 1 | German sub-entry 2 :: English sub-entry 1 | English sub-entry 2

- entry: one line; its German and English sides are separated by `` :: ``.
- sub-entry: a part of a side separated by `` | ``; the k-th German sub-entry translates the
  k-th English one. A line whose sides have different numbers of sub-entries is skipped.
- synonyms: within a sub-entry, alternatives are separated by ``;`` ("Aal {m}; Flussaal {m}").
- tags: ``{m}``, ``{pl}``, ``{adj}`` (grammar) and ``[ugs.]``, ``[Am.]`` (register, region,
  subject); they are removed. ``(...)`` is kept in sentences: there it marks optional words.
- sentence pair: an aligned sub-entry pair where both sides have at least 3 words, end in
  ``.``, ``?`` or ``!``, and contain no ``;``. One more rule: a side whose
  last word is a dictionary placeholder (``sth.``, ``sb.``, ``etw.``, ``jdm.`` ...) is a phrase
  that happens to end in a full stop ("the senseless waste of sth."), not a sentence.
- phrase pair: an aligned sub-entry pair that is not a sentence pair, has no ``;`` on either side
  (a list of synonyms is not one translation), and has at least 2 words on both sides once
  parenthetical glosses ``(...)`` and abbreviation marks ``/ABBR/`` are removed.
  ("in den Rückwärtsgang schalten" -> "to go into reverse").

The split is by a SHA-256 hash of the German side of each sentence pair, so it depends on
nothing but the sentence itself: the same on every machine, every Python version, every run,
whatever the order of the file or the ``limit``. A German sentence with two English
translations lands in one split with both. Phrases are only ever added to train, and a phrase
whose German or English side is a valid or test sentence is dropped so it cannot leak the answer.

Use::

    corpus = load_translation()                        # de-en, sentences only
    corpus = load_translation(include_phrases=True)    # + ~55k phrase pairs in train
    for src, tgt in corpus.train: ...
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qkv.data.splits import Split, hash_split
from qkv.data.textio import read_lines

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("/usr/share/trans/de-en")

Direction = Literal["de-en", "en-de"]
Pair = tuple[str, str]

# Percent of the hash buckets that go to train and valid; the rest (5%) is test.
_TRAIN_PERCENT = 90
_VALID_PERCENT = 5

# A tag together with the whitespace before it, so "verlegt [Ös.]." becomes "verlegt.",
# not "verlegt .". The file has no nested or unbalanced braces.
_TAG = re.compile(r"\s*(?:\{[^}]*\}|\[[^\]]*\])")
# Phrases only: glosses such as "(of an event)" or "(Akku)" explain the entry rather than
# translate it, and "/OTP NVM/" marks an abbreviation. Neither has a counterpart on the other side.
_GLOSS = re.compile(r"\s*\([^()]*\)")
_ABBREVIATION = re.compile(r"(?:^|\s)/[^/\s][^/]*/(?=\s|$)")
_SENTENCE_END = (".", "?", "!")
# Placeholders of the dictionary ("somebody", "something", "jemandem", ...): a sub-entry
# ending in one is a phrase, not a sentence, even though it ends in a full stop.
_PLACEHOLDERS = frozenset(
    {"sb.", "sth.", "sb.'s", "sb.’s", "sth.'s", "sth.’s", "jd.", "jdm.", "jdn.", "jds.", "etw."}
)

_INSTALL_HINT = (
    "Install the German–English corpus with `sudo apt-get install trans-de-en` (Debian/Ubuntu; "
    "it provides /usr/share/trans/de-en), or download the Ding dictionary by Frank Richter, "
    "TU Chemnitz (https://dict.tu-chemnitz.de, file de-en.txt) and pass its path."
)


@dataclass(frozen=True)
class ParallelCorpus:
    """Sentence pairs split into train/valid/test, as (source, target) in the chosen direction.

    ``train`` holds the train sentence pairs first, then the phrase pairs if they were asked
    for (``num_phrases`` of them). ``valid`` and ``test`` hold sentence pairs only.
    """

    train: tuple[Pair, ...]
    valid: tuple[Pair, ...]
    test: tuple[Pair, ...]
    direction: Direction
    num_phrases: int  # phrase pairs at the end of ``train``; 0 unless include_phrases=True
    path: Path

    @property
    def train_sentences(self) -> tuple[Pair, ...]:
        """The train split without the phrase pairs."""
        return self.train[: len(self.train) - self.num_phrases]

    @property
    def num_sentences(self) -> int:
        """Distinct sentence pairs over all three splits."""
        return len(self.train) - self.num_phrases + len(self.valid) + len(self.test)

    def __repr__(self) -> str:
        return (
            f"ParallelCorpus({self.direction}, train={len(self.train)} "
            f"(of which phrases={self.num_phrases}), valid={len(self.valid)}, "
            f"test={len(self.test)}, path={str(self.path)!r})"
        )


def clean(text: str) -> str:
    """Remove ``{...}`` and ``[...]`` tags and tidy whitespace.

    >>> clean("Er ist pleite [ugs.].  ")
    'Er ist pleite.'
    """
    if "{" in text or "[" in text:  # most sub-entries have no tag: skip the regex (speed)
        text = _TAG.sub("", text)
    return " ".join(text.split())


def _strip_glosses(text: str) -> str:
    if "(" in text:
        text = _GLOSS.sub("", text)
    if "/" in text:
        text = _ABBREVIATION.sub(" ", text)
    return " ".join(text.split())


def parse_line(line: str) -> list[Pair]:
    """The aligned (German, English) sub-entries of one line, cleaned; [] for a comment,
    a blank line, a line without `` :: `` or a line whose sides do not align."""
    line = line.strip()
    if not line or line.startswith("#") or " :: " not in line:
        return []
    german, english = line.split(" :: ", 1)
    german_parts, english_parts = german.split(" | "), english.split(" | ")
    if len(german_parts) != len(english_parts):
        return []
    return [(clean(de), clean(en)) for de, en in zip(german_parts, english_parts, strict=True)]


def is_sentence(text: str) -> bool:
    """The sentence test for one side: at least 3 words, ends in ``.?!``, has no ``;`` (and does not
    end in a placeholder such as ``sth.``)."""
    words = text.split()
    return (
        len(words) >= 3
        and text.endswith(_SENTENCE_END)
        and ";" not in text
        and words[-1] not in _PLACEHOLDERS
    )


def as_phrase(german: str, english: str) -> Pair | None:
    """The pair with glosses removed if it is a phrase pair (see the module docstring), else None.

    Call it only on pairs that are not sentence pairs.
    """
    if ";" in german or ";" in english:
        return None
    german, english = _strip_glosses(german), _strip_glosses(english)
    if len(german.split()) < 2 or len(english.split()) < 2:
        return None
    return german, english


def split_of(german: str) -> Split:
    """The split of a sentence pair, from a SHA-256 hash of its German side as it is, unsalted
    (90/5/5; see :func:`qkv.data.splits.hash_bucket`)."""
    return hash_split(german, train_percent=_TRAIN_PERCENT, valid_percent=_VALID_PERCENT)


def find_corpus(path: str | Path | None = None) -> Path:
    """The corpus file: ``path`` if given, else the Debian one; FileNotFoundError saying how to
    get it when missing."""
    candidate = Path(path) if path is not None else DEFAULT_PATH
    if not candidate.is_file():
        raise FileNotFoundError(f"German–English corpus not found at {candidate}. {_INSTALL_HINT}")
    return candidate


def _read_lines(path: Path) -> Iterator[str]:
    # Plain or .gz (upstream also ships de-en.txt.gz); a byte that is not UTF-8 is a
    # ValueError naming the file and the line (qkv.data.textio).
    return read_lines(path)


def extract_pairs(
    lines: Iterable[str], *, limit: int | None = None, phrases: bool = True
) -> tuple[list[Pair], list[Pair]]:
    """Distinct sentence pairs and distinct phrase pairs (German, English), in file order.

    ``limit`` stops reading once that many sentence pairs were found (for fast tests).
    ``phrases=False`` skips looking for phrase pairs (faster) and returns [] for them.
    A phrase pair identical to a sentence pair is kept only as the sentence.
    """
    sentences: dict[Pair, None] = {}  # a dict keeps the first-seen order, unlike a set
    found_phrases: dict[Pair, None] = {}
    for line in lines:
        for german, english in parse_line(line):
            if is_sentence(german) and is_sentence(english):
                sentences[german, english] = None
            elif phrases and (phrase := as_phrase(german, english)) is not None:
                found_phrases[phrase] = None
        if limit is not None and len(sentences) >= limit:
            break
    return list(sentences)[:limit], [p for p in found_phrases if p not in sentences]


def _leak_key(text: str) -> str:
    # Case and final punctuation do not make a phrase a different sentence.
    return text.casefold().rstrip(".?! ")


def load_translation(
    path: str | Path | None = None,
    *,
    direction: Direction = "de-en",
    include_phrases: bool = False,
    limit: int | None = None,
) -> ParallelCorpus:
    """Read, clean and split the Ding dictionary's German–English sentence pairs.

    Args:
        path: the dictionary file (plain or ``.gz``); default ``/usr/share/trans/de-en``.
        direction: ``"de-en"`` gives (German, English) pairs; ``"en-de"`` gives (English,
            German). The split is by the German side either way, so both directions share the
            same test sentences.
        include_phrases: append the multi-word phrase pairs to train (never to valid/test).
        limit: keep only the first ``limit`` distinct sentence pairs of the file, for tests.
            Each pair's split does not depend on it.

    Raises:
        FileNotFoundError: the file is missing; the message says how to install it.
        ValueError: an unknown ``direction``, a ``limit`` below 1, or a line that is not
            UTF-8 (the message names the file and the line).
    """
    if direction not in ("de-en", "en-de"):
        raise ValueError(f"direction must be 'de-en' or 'en-de', got {direction!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    file = find_corpus(path)
    sentences, phrases = extract_pairs(_read_lines(file), limit=limit, phrases=include_phrases)

    splits: dict[Split, list[Pair]] = {"train": [], "valid": [], "test": []}
    for pair in sentences:
        splits[split_of(pair[0])].append(pair)

    kept_phrases: list[Pair] = []
    if include_phrases:
        # Either side: in en-de the English side of a test pair is the question.
        held_out = {_leak_key(text) for pair in splits["valid"] + splits["test"] for text in pair}
        kept_phrases = [
            p
            for p in phrases
            if _leak_key(p[0]) not in held_out and _leak_key(p[1]) not in held_out
        ]
        logger.debug(
            "dropped %d phrases that match a held-out sentence", len(phrases) - len(kept_phrases)
        )

    def oriented(pairs: list[Pair]) -> tuple[Pair, ...]:
        return tuple(pairs) if direction == "de-en" else tuple((en, de) for de, en in pairs)

    corpus = ParallelCorpus(
        train=oriented(splits["train"] + kept_phrases),
        valid=oriented(splits["valid"]),
        test=oriented(splits["test"]),
        direction=direction,
        num_phrases=len(kept_phrases),
        path=file,
    )
    logger.info("loaded %r", corpus)
    return corpus
