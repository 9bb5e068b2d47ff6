"""Back-translation: more training pairs from text in the target language alone.

A German→English translator learns from (German, English) pairs, and real ones are
few. English text alone is plentiful. Train the reverse model (English→German) on the
same pairs, let it translate English sentences into German, and keep each machine
translation beside the sentence it came from: a *synthetic* pair whose target side is
real, fluent English (Sennrich, Haddow and Birch, 2016, "Improving Neural Machine
Translation Models with Monolingual Data"). The German side is imperfect; the model
being trained only reads it, and learns to write from the real side.

:func:`back_translate` writes the pairs as a TSV file, synthetic source first, so
``train_translator(back_translated=FILE)`` (``qkv translate train
--back-translated FILE``) adds them to the real pairs, each source behind a tag word
that tells the model it is reading a machine translation (Caswell, Chelba and
Grangier, 2019, "Tagged Back-Translation").

Use::

    reverse = load_translator("runs/en-de")
    back_translate(reverse, monolingual_sentences(), "synthetic.tsv")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from qkv.fileio import atomic_write
from qkv.tasks.translation.translator import Translator

__all__ = ["back_translate", "synthetic_pairs"]

logger = logging.getLogger(__name__)

# Sentences translated per call (and per progress update): many batches of similar
# length, so the sort inside Translator.translate still groups them well.
_CHUNK = 2048


def synthetic_pairs(
    sentences: Sequence[str], translations: Sequence[str], *, max_ratio: float = 2.0
) -> list[tuple[str, str]]:
    """``(translation, sentence)`` pairs, in order, leaving out a translation that is
    empty, would break a TSV line (a tab or a line break in it), or whose length in
    words is off by more than ``max_ratio`` either way (plus three words of slack): a
    weak reverse model sometimes repeats a word until its length limit, and such a pair
    teaches nothing but the repetition."""
    if len(sentences) != len(translations):
        raise ValueError(f"{len(sentences)} sentences but {len(translations)} translations")
    kept = []
    for sentence, translation in zip(sentences, translations, strict=True):
        translation = " ".join(translation.split())
        if not translation or "\t" in sentence or "\n" in sentence:
            continue
        words, source_words = len(translation.split()), len(sentence.split())
        if words > max_ratio * source_words + 3 or source_words > max_ratio * words + 3:
            continue
        kept.append((translation, sentence))
    return kept


def back_translate(
    reverse: Translator,
    sentences: Sequence[str],
    output: str | Path,
    *,
    beam_size: int = 1,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool | None = None,
) -> int:
    """Translate ``sentences`` (target-language text) with ``reverse`` (a translator
    into the source language) and write ``translation<TAB>sentence`` lines to
    ``output`` (written whole or not at all). Greedy by default (``beam_size`` 1): the
    synthetic side only has to be readable, and greedy is several times faster than a
    beam. Returns the number of pairs written.

    Refuses an empty ``sentences`` and an ``output`` that exists (unless
    ``overwrite``), before translating anything."""
    output = Path(output)
    if not sentences:
        raise ValueError("no sentences to back-translate")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: no such folder")
    translations: list[str] = []
    bar = tqdm(
        total=len(sentences),
        unit="sentence",
        desc=f"back-translating ({reverse.src_lang}->{reverse.tgt_lang})",
        disable=None if progress is None else not progress,  # None: on a terminal only
    )
    with bar:
        for start in range(0, len(sentences), _CHUNK):
            chunk = list(sentences[start : start + _CHUNK])
            # A limit on the output's length (in tokens) that a sound translation never
            # reaches: degenerate repetitions stop early instead of at the model's limit.
            longest = max(len(s.split()) for s in chunk)
            translations += reverse.translate(
                chunk, beam_size=beam_size, batch_size=batch_size, max_length=4 * longest + 10
            )
            bar.update(len(chunk))
    pairs = synthetic_pairs(sentences, translations)
    with atomic_write(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for translation, sentence in pairs:
            f.write(f"{translation}\t{sentence}\n")
    logger.info(
        "%s: %d synthetic pairs (%d sentences had no usable translation)",
        output,
        len(pairs),
        len(sentences) - len(pairs),
    )
    return len(pairs)
