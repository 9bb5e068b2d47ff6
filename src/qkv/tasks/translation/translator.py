"""A trained translator: load it, translate with it, score it.

A run directory of :func:`qkv.tasks.translation.train_translator` holds
``tokenizer.json`` and ``checkpoints/step-*/`` (weights and, in ``meta.json``, the
model configuration and the recipe): everything :func:`load_translator` needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sacrebleu
import torch

from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer
from qkv.data.padding import pad_ids
from qkv.data.translation import Direction, ParallelCorpus
from qkv.decoding import beam_search, greedy_decode
from qkv.families import identify
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.train import load_weights
from qkv.train.checkpoint import average_checkpoints, list_checkpoints

__all__ = ["FAMILY", "Translator", "evaluate_test", "load_translator", "score"]

FAMILY = "transformer-translation"

log = logging.getLogger(__name__)


@dataclass
class Translator:
    """A trained model with its tokenizer, ready to translate."""

    model: Transformer
    tokenizer: TranslationTokenizer
    direction: Direction = "de-en"

    @property
    def src_lang(self) -> str:
        """The source language's code (``de``), as recorded in the run."""
        return self.direction.split("-")[0]

    @property
    def tgt_lang(self) -> str:
        """The target language's code (``en``), as recorded in the run."""
        return self.direction.split("-")[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def translate(
        self,
        sentences: Sequence[str],
        *,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        batch_size: int = 64,
    ) -> list[str]:
        """Translate sentences (greedy when ``beam_size == 1``), in batches of
        similar length; the output order is the input order.

        An empty or blank sentence translates to an empty line (a model asked to
        translate nothing would invent a sentence); one longer than the model's
        positions is cut to fit, with a warning.
        """
        self.model.eval()
        encoded = [self._encode(s, i) if s.strip() else [] for i, s in enumerate(sentences)]
        # Only the sentences with words go to the model; the blank ones stay "".
        order = sorted((i for i, e in enumerate(encoded) if e), key=lambda i: len(encoded[i]))
        outputs: list[str] = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            src = pad_ids([encoded[i] for i in chunk], PAD_ID).to(self.device)  # (b, k)
            if beam_size == 1:
                result = greedy_decode(self.model, src, bos_id=BOS_ID, eos_id=EOS_ID)
            else:
                result = beam_search(
                    self.model,
                    src,
                    bos_id=BOS_ID,
                    eos_id=EOS_ID,
                    beam_size=beam_size,
                    length_penalty=length_penalty,
                )
            for i, tokens in zip(chunk, result.tokens, strict=True):
                outputs[i] = self.tokenizer.target.decode(tokens)
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
    path: str | Path, *, average_last: int | None = None, device: str | torch.device = "cpu"
) -> Translator:
    """Load a translator from a run directory (its latest checkpoint) or a checkpoint.

    ``average_last > 1`` averages the weights of the run's last N checkpoints (up to
    the one asked for); ``None`` takes the number the run's preset recommends.
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
    return Translator(model.to(device).eval(), tokenizer, meta.get("direction", "de-en"))


def evaluate_test(
    translator: Translator,
    corpus: ParallelCorpus,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    limit: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """BLEU and chrF of ``translator`` on the test split; returns the scores and the
    hypotheses."""
    pairs = list(corpus.test[:limit] if limit else corpus.test)
    hypotheses = translator.translate(
        [s for s, _ in pairs], beam_size=beam_size, length_penalty=length_penalty
    )
    return score(hypotheses, [t for _, t in pairs]), hypotheses
