"""Train a translator: the Ding dictionary's sentence pairs (:mod:`qkv.data.translation`),
a joint BPE vocabulary trained on the training split (:mod:`qkv.data.bpe`), batches
grouped by length (:mod:`qkv.data.batching`), the shared training engine
(:mod:`qkv.train`), validation loss and greedy BLEU while training.

A run directory (:mod:`qkv.train.rundir`: locked, never overwritten by accident) holds
``run.json`` (what defines the run), ``tokenizer.json``, ``checkpoints/step-*/`` (weights, the model
configuration and the recipe), ``metrics.csv`` and ``loss_curves.png``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from qkv.data.batching import Seq2SeqBatch, collate_pairs, token_batches
from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer
from qkv.data.translation import Direction, ParallelCorpus, load_translation
from qkv.models.transformer import Transformer
from qkv.tasks.translation.presets import PRESETS, TranslationPreset
from qkv.tasks.translation.translator import FAMILY, Translator, score
from qkv.train import Trainer, TrainResult
from qkv.train.checkpoint import list_checkpoints
from qkv.train.losses import seq2seq_loss
from qkv.train.rundir import IDENTITY_FILE, RunDirError, open_run_dir

__all__ = ["encode_pairs", "epoch_batches", "tokenizer_sha256", "train_translator"]

logger = logging.getLogger(__name__)


def encode_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: TranslationTokenizer, max_len: int
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (source, target) pair; pairs with an empty side or longer than
    ``max_len`` (with the tokens collation adds) are left out."""
    sources = tokenizer.source.encode_batch([s for s, _ in pairs])
    targets = tokenizer.target.encode_batch([t for _, t in pairs])
    # +1 for the eos (source) or bos/eos (target) that collation adds.
    return [
        (s, t)
        for s, t in zip(sources, targets, strict=True)
        if 0 < len(s) + 1 <= max_len and 0 < len(t) + 1 <= max_len
    ]


def epoch_batches(
    encoded: list[tuple[list[int], list[int]]], max_tokens: int, seed: int
) -> Callable[[int], list[Seq2SeqBatch]]:
    """The engine's ``batches(epoch)``: pairs grouped by length into batches of at most
    ``max_tokens`` tokens, padding included, in an order fixed by (seed, epoch)."""
    lengths = [max(len(s), len(t)) + 1 for s, t in encoded]

    def batches(epoch: int) -> list[Seq2SeqBatch]:
        groups = token_batches(lengths, max_tokens, seed=seed, epoch=epoch)
        return [
            collate_pairs([encoded[i] for i in g], pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
            for g in groups
        ]

    return batches


@torch.inference_mode()
def _valid_loss(model: nn.Module, batches: list[Seq2SeqBatch], device: torch.device) -> float:
    total, count = 0.0, 0
    for batch in batches:
        loss, n = seq2seq_loss(model, batch.to(device), label_smoothing=0.0)
        total, count = total + float(loss), count + int(n)
    return total / max(count, 1)


def train_translator(
    run_dir: str | Path,
    preset: str | TranslationPreset = "small",
    *,
    direction: Direction = "de-en",
    data_path: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    limit: int | None = None,
    bleu_sentences: int = 200,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> TrainResult:
    """Train a translator into ``run_dir``.

    Validation every ``train.eval_every`` steps: loss on the whole valid split and
    BLEU (greedy) on its first ``bleu_sentences`` sentences. ``limit`` keeps only that
    many sentence pairs (tests). With ``resume`` the tokenizer and the training
    state come from ``run_dir``; ``overwrite`` replaces a run already there (without
    either, such a folder is refused: :mod:`qkv.train.rundir`).

    The options, the corpus and the tokenizer are settled before ``run_dir`` is touched.
    """
    recipe = PRESETS[preset] if isinstance(preset, str) else preset
    recipe = recipe.override({"train.seed": seed})
    if max_steps is not None:
        recipe = recipe.override({"train.max_steps": max_steps})
    run_dir = Path(run_dir)
    corpus = load_translation(
        data_path, direction=direction, include_phrases=recipe.include_phrases, limit=limit
    )
    tokenizer = _tokenizer(run_dir, corpus.train, recipe.vocab_size, resume=resume)
    identity = {
        "task": "translation",
        **recipe.to_dict(),
        "direction": direction,
        "data": {"path": str(data_path) if data_path is not None else None, "limit": limit},
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
    }
    with open_run_dir(
        run_dir,
        resume=resume,
        overwrite=overwrite,
        identity=identity,
        create=tokenizer.save,  # tokenizer.json first, then run.json
    ):
        return _train(run_dir, recipe, corpus, tokenizer, direction, resume=resume,
                      bleu_sentences=bleu_sentences, device=device, seed=seed,
                      progress=progress)  # fmt: skip


def tokenizer_sha256(tokenizer: TranslationTokenizer) -> str:
    """SHA-256 of the tokenizer file(s) :meth:`TranslationTokenizer.save` writes."""
    parts = [tokenizer.source] if tokenizer.joint else [tokenizer.source, tokenizer.target]
    return hashlib.sha256("".join(p.to_json() for p in parts).encode()).hexdigest()


def _tokenizer(
    run_dir: Path, sentences: Sequence[tuple[str, str]], vocab_size: int, *, resume: bool
) -> TranslationTokenizer:
    """The run's tokenizer when resuming one; else one trained on ``sentences`` (in memory:
    the run directory writes it). A resumed run whose tokenizer is gone is an error, never
    a new vocabulary under old weights."""
    if resume:
        try:
            return TranslationTokenizer.load(run_dir)
        except FileNotFoundError:
            if (run_dir / IDENTITY_FILE).is_file() or list_checkpoints(run_dir):
                raise RunDirError(
                    f"{run_dir} holds a run without its tokenizer.json; it cannot be resumed "
                    "(pass --overwrite to train a new run there)"
                ) from None
    return TranslationTokenizer.train(sentences, vocab_size=vocab_size)


def _train(
    run_dir: Path,
    recipe: TranslationPreset,
    corpus: ParallelCorpus,
    tokenizer: TranslationTokenizer,
    direction: Direction,
    *,
    resume: bool,
    bleu_sentences: int,
    device: str | None,
    seed: int,
    progress: bool | None,
) -> TrainResult:
    """Build the model and train it (the run directory is open)."""
    torch.manual_seed(seed)
    vocab_size = tokenizer.source.vocab_size
    config = replace(recipe.model, src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    model = Transformer(config)
    train_pairs = encode_pairs(corpus.train, tokenizer, config.max_len)
    valid_pairs = encode_pairs(corpus.valid, tokenizer, config.max_len)
    valid_batches = epoch_batches(valid_pairs, recipe.max_tokens, seed)(0)
    bleu_set = list(corpus.valid[:bleu_sentences])
    translator = Translator(model, tokenizer, direction)

    def evaluate(_: nn.Module) -> dict[str, float]:
        loss = _valid_loss(model, valid_batches, translator.device)
        hypotheses = translator.translate([s for s, _ in bleu_set], beam_size=1)
        bleu = score(hypotheses, [t for _, t in bleu_set])["bleu"]
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": bleu}

    trainer = Trainer(
        model,
        recipe.train,
        run_dir,
        batches=epoch_batches(train_pairs, recipe.max_tokens, seed),
        loss_fn=lambda m, b: seq2seq_loss(m, b, label_smoothing=recipe.label_smoothing),
        evaluate=evaluate,
        meta={
            "family": FAMILY,
            "model_config": config.to_dict(),
            "preset": recipe.to_dict(),
            "direction": direction,
        },
        device=device,
        progress=progress,
    )
    return trainer.fit(resume=resume)
