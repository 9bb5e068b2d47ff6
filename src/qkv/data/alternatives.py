"""Alternatives separated by "/" in a sentence: "The road is partly/partially blocked."

About one English side in ten of the dictionary's sentence pairs offers choices this
way, as the dictionary's reader would want ("I'm really / terribly sorry about that.").
As a training target such a sentence teaches the translator to write slashes; as a
reference it holds several references in one line.

The rule, at the level of words (whitespace-separated tokens): a *slash group* is a run
of words joined by "/", written together ("partly/partially") or spaced
("really / terribly"); each alternative is **one word**, so "the buck stops here /
stops with me" reads as the alternatives "here" and "stops". Punctuation around the
group stays with it ("(start/beginning)" keeps its brackets). A sentence's *variants*:
variant k takes the k-th alternative of every group (the last one where a group has
fewer), so there are as many variants as the largest group has alternatives, and
variant 0, the first alternative everywhere, is what "keep the first" keeps.

Two slash uses are not alternatives and are left alone: a slash inside a word that is
not between letters on both sides ("24/7", "km/h" is between letters and *is* split;
"HIV/Aids" is split as well, a rule cannot tell these apart) and a word that only
starts or ends with one ("/ABBR/" marks of the dictionary).

Use::

    variants("Autumn/Fall is coming/approaching.")
    # ["Autumn is coming.", "Fall is approaching."]
    expand_pairs(pairs, "split")   # one pair per variant of the target
    expand_pairs(pairs, "first")   # the first alternative only
    reference_streams(references)  # sacreBLEU's references, one stream per variant
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

__all__ = [
    "ALTERNATIVES",
    "Alternatives",
    "expand_pairs",
    "has_alternatives",
    "reference_streams",
    "variants",
]

#: What to do with a target's alternatives: keep the line as it is, keep the first
#: alternative of each group, or one pair per variant.
Alternatives = Literal["keep", "first", "split"]
ALTERNATIVES: tuple[str, ...] = ("keep", "first", "split")

# A word with alternatives written together: letters on both sides of every slash
# (any leading and trailing punctuation is split off first).
_JOINED = re.compile(r"^[^\W\d_][\w'’-]*(?:/[^\W\d_][\w'’-]*)+$")
_LEADING = re.compile(r"^[\"'“‘(\[]*")
_TRAILING = re.compile(r"[\"'”’)\].,;:!?]*$")


def _parts(word: str) -> tuple[str, list[str], str]:
    """``word`` as (leading punctuation, its alternatives, trailing punctuation); one
    alternative when it has none."""
    lead = _LEADING.match(word).group(0)  # type: ignore[union-attr]
    rest = word[len(lead) :]
    trail = _TRAILING.search(rest).group(0)  # type: ignore[union-attr]
    core = rest[: len(rest) - len(trail)] if trail else rest
    if core and _JOINED.match(core):
        return lead, core.split("/"), trail
    return lead, [core], trail


def _groups(sentence: str) -> list[list[str]]:
    """The sentence as a list of slots, each the alternatives of one word position
    (one alternative for an ordinary word)."""
    slots: list[list[str]] = []
    words = sentence.split()
    i = 0
    while i < len(words):
        lead, options, trail = _parts(words[i])
        # Spaced alternatives: "really / terribly / awfully".
        while i + 2 < len(words) and words[i + 1] == "/" and not trail:
            next_lead, next_options, next_trail = _parts(words[i + 2])
            if next_lead:
                break
            options = options + next_options
            trail = next_trail
            i += 2
        slots.append([lead + option + trail for option in options])
        i += 1
    return slots


def has_alternatives(sentence: str) -> bool:
    """Whether ``sentence`` holds at least one slash group."""
    return "/" in sentence and any(len(slot) > 1 for slot in _groups(sentence))


def variants(sentence: str) -> list[str]:
    """The sentences ``sentence`` stands for (see the module's rule); ``[sentence]``
    itself (whitespace normalised) when it has no alternatives."""
    if "/" not in sentence:
        return [sentence]
    slots = _groups(sentence)
    count = max((len(slot) for slot in slots), default=1)
    return [" ".join(slot[min(k, len(slot) - 1)] for slot in slots) for k in range(count)]


def expand_pairs(
    pairs: Iterable[tuple[str, str]], alternatives: Alternatives
) -> Iterator[tuple[str, str]]:
    """Training pairs with the target's alternatives kept (``"keep"``), reduced to the
    first (``"first"``), or split into one pair per variant (``"split"``; the source
    repeated)."""
    if alternatives not in ALTERNATIVES:
        raise ValueError(f"alternatives: expected one of {ALTERNATIVES}, got {alternatives!r}")
    for source, target in pairs:
        if alternatives == "keep" or "/" not in target:
            yield source, target
        elif alternatives == "first":
            yield source, variants(target)[0]
        else:
            for variant in variants(target):
                yield source, variant


def reference_streams(references: Sequence[str]) -> list[list[str]]:
    """sacreBLEU's multi-reference input: stream k holds every sentence's k-th variant.
    A sentence with fewer variants than the most repeats its last one; a repeated
    reference adds no n-gram a single copy does not (BLEU clips by the largest count
    in any one reference), and the closest reference length is the same."""
    expanded = [variants(reference) for reference in references]
    streams = max((len(v) for v in expanded), default=1)
    return [[v[min(k, len(v) - 1)] for v in expanded] for k in range(streams)]
