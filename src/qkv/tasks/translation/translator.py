"""A trained translator: load it, translate with it, score it.

A run directory of :func:`qkv.tasks.translation.train_translator` holds
``tokenizer.json`` and ``checkpoints/step-*/`` (weights and, in ``meta.json``, the
model configuration and the recipe): everything :func:`load_translator` needs. A run
fine-tuned from a Marian (OPUS-MT) folder holds that folder's SentencePiece tokenizer
(``source.spm``, ``target.spm``, ``vocab.json``) instead of ``tokenizer.json``;
:func:`load_translator` also reads a Hugging Face Marian folder itself
(:mod:`qkv.convert.marian`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import sacrebleu
import torch

from qkv.data.alternatives import reference_streams
from qkv.data.bpe import TranslationTokenizer
from qkv.data.padding import pad_ids
from qkv.data.sentencepiece import SentencePieceTokenizer, is_sentencepiece_folder
from qkv.data.translation import ParallelCorpus
from qkv.decoding import beam_search, greedy_decode, sample_decode
from qkv.families import identify
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.train import load_weights
from qkv.train.checkpoint import average_checkpoints, list_checkpoints

__all__ = [
    "FAMILY",
    "Candidate",
    "Translator",
    "evaluate_test",
    "load_run_tokenizer",
    "load_translator",
    "score",
]

FAMILY = "transformer-translation"

log = logging.getLogger(__name__)


@dataclass
class Translator:
    """A trained model with its tokenizer, ready to translate.

    ``search``: the beam search's scoring and stopping (:func:`qkv.decoding.beam_search`'s
    ``style``): ``"gnmt"`` for qkv's own models, ``"hugging_face"`` for Marian models,
    so that they translate as ``transformers``' ``generate`` does. Its default length
    penalty follows: 0.6 (GNMT's α) or 1.0 (``generate``'s).

    ``cuda_graphs``: replay each decoder step as a CUDA graph (see
    :func:`qkv.decoding.greedy_decode`); ``None``: on for a model on a CUDA device.
    ``quantize``: ``"int8"`` decodes with int8 copies of the decoder's weights
    (:mod:`qkv.quantize`, a CPU only).
    """

    model: Transformer
    tokenizer: TranslationTokenizer | SentencePieceTokenizer
    direction: str = "de-en"  # "src_lang-tgt_lang", for display
    # The languages' codes as recorded in the run (``de``, ``en``, ``pt-BR``); from
    # ``direction`` when not given (runs from before they were recorded).
    src_lang: str = ""
    tgt_lang: str = ""
    # Where the run's data came from (the checkpoint's ``data``): the dictionary, or the
    # user's files, so ``qkv translate eval`` finds the test split. None when not recorded.
    data: dict[str, Any] | None = None
    search: Literal["gnmt", "hugging_face"] = "gnmt"
    # Decoder steps replayed as CUDA graphs (qkv.decoding's ``cuda_graphs``): None, on
    # when the model is on a CUDA device; False, off.
    cuda_graphs: bool | None = None
    # "int8": decode with int8 copies of the decoder's weights (qkv.decoding's
    # ``quantize``; a CPU only); None: the model's own weights.
    quantize: str | None = None

    def __post_init__(self) -> None:
        source, _, target = self.direction.partition("-")
        self.src_lang = self.src_lang or source
        self.tgt_lang = self.tgt_lang or target

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def default_length_penalty(self) -> float:
        """The length penalty a search uses when none is given: GNMT's α = 0.6, or
        ``generate``'s 1.0 for a Hugging Face-style search."""
        return 1.0 if self.search == "hugging_face" else 0.6

    def translate(
        self,
        sentences: Sequence[str],
        *,
        beam_size: int = 4,
        length_penalty: float | None = None,
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
        length_penalty: float | None = None,
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
                (``n_best`` from 1 to ``beam_size``); ``length_penalty`` None: the
                :attr:`default_length_penalty`.
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
        if length_penalty is None:
            length_penalty = self.default_length_penalty
        self.model.eval()
        encoded = [self._encode(s, i) if s.strip() else [] for i, s in enumerate(sentences)]
        # Only the sentences with words go to the model; the blank ones stay [].
        order = sorted((i for i, e in enumerate(encoded) if e), key=lambda i: len(encoded[i]))
        outputs: list[list[Candidate]] = [[] for _ in encoded]
        decode = self.tokenizer.target.decode
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src = pad_ids([encoded[i] for i in chunk], self.model.config.pad_id)  # (b, k)
            src = src.to(self.device)
            # The decoder's start and end ids are the model's (config.bos_id, eos_id).
            common: dict[str, Any] = dict(
                max_len=max_length, cuda_graphs=self.cuda_graphs, quantize=self.quantize
            )
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
                    style=self.search,
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
        """Token ids ending in eos, cut to the model's ``max_len`` positions."""
        ids = self.tokenizer.source.encode(sentence, add_eos=True)
        limit = self.model.config.max_len
        if len(ids) > limit:
            log.warning(
                "sentence %d is %d tokens long, the model reads at most %d: truncated",
                index + 1,
                len(ids),
                limit,
            )
            ids = [*ids[: limit - 1], self.model.config.eos_id]
        return ids


class Candidate(NamedTuple):
    """One translation of a sentence: its ``text``, the ``score`` its search maximised
    (beam search: log-probability / length penalty; greedy and sampling: the
    log-probability) and its total natural-log ``log_prob``."""

    text: str
    score: float
    log_prob: float


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF on detokenized text, with sacreBLEU's signatures.

    ``bleu`` has one reference per sentence, as given. ``bleu_multi`` reads the "/"
    alternatives of a reference as several references
    (:func:`qkv.data.alternatives.reference_streams`: stream k holds the k-th variant of
    every reference); it equals ``bleu`` when no reference has alternatives, and is
    reported beside it, never instead of it.
    """
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_result = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_result = chrf.corpus_score(list(hypotheses), [list(references)])
    multi = sacrebleu.metrics.BLEU()
    multi_result = multi.corpus_score(list(hypotheses), reference_streams(references))
    return {
        "bleu": bleu_result.score,
        "chrf": chrf_result.score,
        "bleu_multi": multi_result.score,
        "bleu_signature": str(bleu.get_signature()),
        "bleu_multi_signature": str(multi.get_signature()),
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

    ``path`` may also be a Hugging Face Marian (OPUS-MT) folder (``config.json`` with
    ``model_type`` ``marian``, the weights, ``source.spm``, ``target.spm``,
    ``vocab.json``); its languages come from ``tokenizer_config.json``. Such a
    translator, and one fine-tuned from it, searches as ``generate`` does
    (``search="hugging_face"``).
    """
    found = identify(path, expect="translator")
    if found.hugging_face:
        return _load_marian(found.path, average_last, device, dtype)
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
    tokenizer = load_run_tokenizer(run_dir)
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
        search="hugging_face" if isinstance(tokenizer, SentencePieceTokenizer) else "gnmt",
    )


def load_run_tokenizer(run_dir: str | Path) -> TranslationTokenizer | SentencePieceTokenizer:
    """The tokenizer a run directory holds: the Marian SentencePiece files of a run
    fine-tuned from a Marian folder, else qkv's BPE ``tokenizer.json``."""
    if is_sentencepiece_folder(run_dir):
        return SentencePieceTokenizer.load(run_dir)
    return TranslationTokenizer.load(run_dir)


def _load_marian(
    folder: Path, average_last: int | None, device: str | torch.device, dtype: torch.dtype | None
) -> Translator:
    """A translator of a Hugging Face Marian folder (:func:`load_translator`)."""
    from qkv.convert.marian import from_pretrained

    if average_last is not None and average_last > 1:
        raise ValueError(f"{folder} is a Hugging Face folder: there are no checkpoints to average")
    model, tokenizer, src_lang, tgt_lang = from_pretrained(folder)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    src_lang, tgt_lang = src_lang or "src", tgt_lang or "tgt"
    return Translator(
        model.eval(),
        tokenizer,
        f"{src_lang}-{tgt_lang}",
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        search="hugging_face",
    )


def evaluate_test(
    translator: Translator,
    corpus: ParallelCorpus | Iterable[tuple[str, str]],
    *,
    beam_size: int = 4,
    length_penalty: float | None = None,
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
