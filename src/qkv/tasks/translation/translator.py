"""A trained translator: load it, translate with it, score it.

A run directory of :func:`qkv.tasks.translation.train_translator` holds
``tokenizer.json`` and ``checkpoints/step-*/`` (weights and, in ``meta.json``, the
model configuration and the recipe): everything :func:`load_translator` needs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sacrebleu
import torch

from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer
from qkv.data.padding import pad_ids
from qkv.data.translation import ParallelCorpus
from qkv.decoding import beam_search, greedy_decode, sample_decode
from qkv.families import identify
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.train import load_weights
from qkv.train.checkpoint import average_checkpoints, list_checkpoints

__all__ = ["FAMILY", "Candidate", "Translator", "evaluate_test", "load_translator", "score"]

FAMILY = "transformer-translation"

log = logging.getLogger(__name__)


@dataclass
class Translator:
    """A trained model with its tokenizer, ready to translate."""

    model: Transformer
    tokenizer: TranslationTokenizer
    direction: str = "de-en"  # "src_lang-tgt_lang", for display
    # The languages' codes as recorded in the run (``de``, ``en``, ``pt-BR``); from
    # ``direction`` when not given (runs from before they were recorded).
    src_lang: str = ""
    tgt_lang: str = ""
    # Where the run's data came from (the checkpoint's ``data``): the dictionary, or the
    # user's files, so ``qkv translate eval`` finds the test split. None when not recorded.
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        source, _, target = self.direction.partition("-")
        self.src_lang = self.src_lang or source
        self.tgt_lang = self.tgt_lang or target

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def translate(
        self,
        sentences: Sequence[str],
        *,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        batch_size: int = 64,
        max_length: int | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Translate sentences (greedy when ``beam_size == 1``), in batches of
        similar length; the output order is the input order.

        An empty or blank sentence translates to an empty line (a model asked to
        translate nothing would invent a sentence); one longer than the model's
        positions is cut to fit, with a warning. The options are those of
        :meth:`candidates`.
        """
        results = self.candidates(
            sentences,
            beam_size=beam_size,
            length_penalty=length_penalty,
            batch_size=batch_size,
            max_length=max_length,
            sample=sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )
        return [found[0].text if found else "" for found in results]

    @torch.inference_mode()
    def candidates(
        self,
        sentences: Sequence[str],
        *,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        n_best: int = 1,
        batch_size: int = 64,
        max_length: int | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[list[Candidate]]:
        """Each sentence's translations with their scores, best first: the ``n_best``
        best of beam search, or the one of greedy decoding (``beam_size == 1``) or of
        sampling (``sample=True``); an empty list for a blank sentence.

        Args:
            beam_size, length_penalty, n_best: as :func:`qkv.decoding.beam_search`
                (``n_best`` from 1 to ``beam_size``).
            batch_size: sentences decoded together (sorted by length first).
            max_length: most output tokens per sentence, eos included; default: the
                sentence's own length + 50.
            sample: draw tokens at random (:func:`qkv.decoding.sample_decode`, with
                ``temperature``, ``top_k``, ``top_p`` and ``generator``, which must be
                on :attr:`device`); needs ``beam_size == 1``.
        """
        if sample and beam_size != 1:
            raise ValueError(f"sampling draws one hypothesis: beam_size must be 1, got {beam_size}")
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be from 1 to beam_size ({beam_size}), got {n_best}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model.eval()
        encoded = [self._encode(s, i) if s.strip() else [] for i, s in enumerate(sentences)]
        # Only the sentences with words go to the model; the blank ones stay [].
        order = sorted((i for i, e in enumerate(encoded) if e), key=lambda i: len(encoded[i]))
        outputs: list[list[Candidate]] = [[] for _ in encoded]
        decode = self.tokenizer.target.decode
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src = pad_ids([encoded[i] for i in chunk], PAD_ID).to(self.device)  # (b, k)
            common = dict(bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_length)
            if sample:
                result = sample_decode(
                    self.model,
                    src,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                    **common,
                )
            elif beam_size == 1:
                result = greedy_decode(self.model, src, **common)
            else:
                result = beam_search(
                    self.model,
                    src,
                    beam_size=beam_size,
                    length_penalty=length_penalty,
                    n_best=n_best,
                    **common,
                )
            if result.n_best:
                for i, kept in zip(chunk, result.n_best, strict=True):
                    outputs[i] = [Candidate(decode(h.tokens), h.score, h.log_prob) for h in kept]
            else:
                scores, log_probs = result.scores.tolist(), result.log_probs.tolist()
                for j, i in enumerate(chunk):
                    outputs[i] = [Candidate(decode(result.tokens[j]), scores[j], log_probs[j])]
        return outputs

    def _encode(self, sentence: str, index: int) -> list[int]:
        """Token ids ending in EOS, cut to the model's ``max_len`` positions."""
        ids = self.tokenizer.source.encode(sentence, add_eos=True)
        limit = self.model.config.max_len
        if len(ids) > limit:
            log.warning(
                "sentence %d is %d tokens long, the model reads at most %d: truncated",
                index + 1,
                len(ids),
                limit,
            )
            ids = [*ids[: limit - 1], EOS_ID]
        return ids


class Candidate(NamedTuple):
    """One translation of a sentence: its ``text``, the ``score`` its search maximised
    (beam search: log-probability / GNMT length penalty; greedy and sampling: the
    log-probability) and its total natural-log ``log_prob``."""

    text: str
    score: float
    log_prob: float


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF on detokenized text, with sacreBLEU's signatures."""
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_result = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_result = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu_result.score,
        "chrf": chrf_result.score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def load_translator(
    path: str | Path,
    *,
    average_last: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Translator:
    """Load a translator from a run directory (its latest checkpoint) or a checkpoint.

    ``average_last > 1`` averages the weights of the run's last N checkpoints (up to
    the one asked for); ``None`` takes the number the run's preset recommends. ``dtype``
    (e.g. ``torch.bfloat16``) casts the model for inference; default as saved (fp32).
    The languages and the data's origin come from the checkpoint; a run from before they
    were recorded gets them from its direction (default ``de-en``).
    """
    found = identify(path, expect="translator")
    checkpoint, meta = found.path, found.meta
    run_dir = checkpoint.parent.parent  # RUN/checkpoints/step-N
    asked = average_last is not None  # the preset's number shrinks to what the run has
    if average_last is None:
        average_last = int(meta.get("preset", {}).get("average_last", 1))
    if average_last < 1:
        raise ValueError(f"average_last must be at least 1, got {average_last}")
    model = Transformer(TransformerConfig.from_dict(meta["model_config"]))
    if average_last > 1:
        paths = [c.path for c in list_checkpoints(run_dir) if c.step <= meta["step"]]
        if asked and average_last > len(paths):
            raise ValueError(
                f"cannot average the last {average_last} checkpoints: {run_dir} has "
                f"{len(paths)} up to step {meta['step']}"
            )
        averaged = average_checkpoints(paths[-average_last:])
        model.load_state_dict(averaged, strict=False)
        # Tied weights are stored once; every parameter must still have been loaded.
        loaded = {model.get_parameter(n).data_ptr() for n in averaged if "." in n}
        missing = [n for n, p in model.named_parameters() if p.data_ptr() not in loaded]
        if missing:
            raise ValueError(f"averaged checkpoints lack {missing}")
    else:
        load_weights(model, checkpoint)
    tokenizer = TranslationTokenizer.load(run_dir)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    direction = str(meta.get("direction", "de-en"))
    data = meta.get("data")
    return Translator(
        model.eval(),
        tokenizer,
        direction,
        src_lang=str(meta.get("src_lang") or ""),
        tgt_lang=str(meta.get("tgt_lang") or ""),
        data=data if isinstance(data, dict) else None,
    )


def evaluate_test(
    translator: Translator,
    corpus: ParallelCorpus | Iterable[tuple[str, str]],
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    limit: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """BLEU and chrF of ``translator`` on the test split of ``corpus``, or on ``corpus``
    itself when it is (source, reference) pairs (a user's test file); the first ``limit``
    pairs only when given. Returns the scores and the hypotheses; ValueError when there is
    no pair to score."""
    test = corpus.test if isinstance(corpus, ParallelCorpus) else corpus
    pairs = list(itertools.islice(test, limit))
    if not pairs:
        raise ValueError("no test sentence pairs to score")
    hypotheses = translator.translate(
        [s for s, _ in pairs], beam_size=beam_size, length_penalty=length_penalty
    )
    return score(hypotheses, [t for _, t in pairs]), hypotheses
