"""German–English translation with qkv's Transformer: train, translate, score.

The pieces: the Ding dictionary's sentence pairs (:mod:`qkv.data.translation`), a
joint BPE vocabulary trained on the training split (:mod:`qkv.data.bpe`), batches
grouped by length (:mod:`qkv.data.batching`), the shared training engine
(:mod:`qkv.train`), greedy and beam decoding (:mod:`qkv.decoding`) and sacreBLEU.

A run directory holds ``tokenizer.json``, ``checkpoints/step-*/`` (weights and the
model configuration), ``metrics.csv`` and ``loss_curves.png``: everything needed to
translate with it later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import sacrebleu
import torch
from torch import nn

from qkv.attention import MultiHeadAttention
from qkv.data.batching import Seq2SeqBatch, collate_pairs, token_batches
from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer
from qkv.data.translation import Direction, ParallelCorpus, load_translation
from qkv.decoding import beam_search, greedy_decode
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.train import TrainConfig, Trainer, TrainResult, load_weights
from qkv.train.checkpoint import average_checkpoints, list_checkpoints, resolve_checkpoint
from qkv.train.losses import seq2seq_loss

__all__ = [
    "PRESETS",
    "TranslationPreset",
    "Translator",
    "load_translator",
    "score",
    "train_translator",
]

logger = logging.getLogger(__name__)
FAMILY = "transformer-translation"


@dataclass(frozen=True)
class TranslationPreset:
    """Model sizes and the training recipe of one preset."""

    name: str
    d_model: int
    num_heads: int
    num_layers: int  # encoder and decoder each
    d_ff: int
    dropout: float
    vocab_size: int  # joint BPE vocabulary
    max_tokens: int  # per batch, padding included
    max_steps: int
    lr: float
    warmup_steps: int
    label_smoothing: float = 0.1
    include_phrases: bool = False  # add the dictionary's phrase pairs to training
    attention_dropout: float = 0.0  # > 0 turns off the fused attention kernel on CPU
    activation_dropout: float | None = None  # None: ``dropout``
    weight_decay: float = 0.0
    schedule: str = "inverse_sqrt"  # or "cosine": decays to min_lr_factor · lr at max_steps
    min_lr_factor: float = 0.0
    precision: str = "fp32"  # bf16 autocast: about 1.8x the fp32 step rate on a Zen 4 CPU
    eval_every: int = 500
    checkpoint_every: int = 250
    average_last: int = 1  # checkpoints averaged for the final model
    norm_first: bool = False  # pre-norm layers (and a final norm) instead of the paper's post-norm
    # Train with the fused attention kernel. False: the explicit matmul-softmax-matmul path,
    # 1.35x faster to train in bf16 on a Zen 4 CPU at these 10-40 token sentences
    # (benchmarks/RESULTS.md); decoding a trained model is not affected.
    fused_attention: bool = True

    def model_config(self, vocab_size: int) -> TransformerConfig:
        return TransformerConfig(
            src_vocab_size=vocab_size,
            tgt_vocab_size=vocab_size,
            d_model=self.d_model,
            num_heads=self.num_heads,
            num_encoder_layers=self.num_layers,
            num_decoder_layers=self.num_layers,
            d_ff=self.d_ff,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            norm_first=self.norm_first,
            share_embeddings=True,  # joint vocabulary: one table for both languages
            tie_output=True,
            pad_id=PAD_ID,
            max_len=256,
        )


PRESETS: dict[str, TranslationPreset] = {
    # Seconds to a few minutes: smoke tests and the test suite.
    "tiny": TranslationPreset(
        "tiny", d_model=64, num_heads=4, num_layers=2, d_ff=256, dropout=0.1,
        vocab_size=2000, max_tokens=2048, max_steps=300, lr=2e-3, warmup_steps=100,
        eval_every=100, checkpoint_every=100,
    ),
    # The quickstart: about twelve minutes on one CPU core. The recipe of `medium`,
    # cut short.
    "small": TranslationPreset(
        "small", d_model=256, num_heads=4, num_layers=3, d_ff=1024, dropout=0.1,
        vocab_size=4000, max_tokens=3000, max_steps=500, lr=1e-3, warmup_steps=200,
        schedule="cosine", min_lr_factor=0.05, precision="bf16", norm_first=True,
        eval_every=250, checkpoint_every=100, average_last=3, fused_attention=False,
    ),
    # Half an hour on one CPU core. Pre-norm: with post-norm layers at this learning
    # rate the encoder's last layer collapsed to the same vector at every position and
    # cross-attention stayed uniform (0.9 BLEU after an hour, benchmarks/RESULTS.md).
    # A small joint vocabulary, label smoothing, bf16 for speed, checkpoint averaging.
    "medium": TranslationPreset(
        "medium", d_model=256, num_heads=4, num_layers=3, d_ff=1024, dropout=0.1,
        vocab_size=4000, max_tokens=3000, max_steps=1300, lr=1e-3, warmup_steps=300,
        schedule="cosine", min_lr_factor=0.05, precision="bf16", norm_first=True,
        eval_every=325, checkpoint_every=100, average_last=3, fused_attention=False,
    ),
    # The paper's base model; far more than this corpus needs, for GPUs.
    "base": TranslationPreset(
        "base", d_model=512, num_heads=8, num_layers=6, d_ff=2048, dropout=0.1,
        vocab_size=8000, max_tokens=8000, max_steps=20000, lr=7e-4, warmup_steps=4000,
        include_phrases=True, precision="bf16", eval_every=1000, checkpoint_every=1000,
        average_last=5,
    ),
}  # fmt: skip


@dataclass
class Translator:
    """A trained model with its tokenizer, ready to translate."""

    model: Transformer
    tokenizer: TranslationTokenizer
    direction: str = "de-en"

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
        similar length; the output order is the input order."""
        self.model.eval()
        encoded = [
            self.tokenizer.source.encode(s, add_eos=True)[: self.model.config.max_len]
            for s in sentences
        ]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        outputs: list[str] = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            src = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
            for row, i in enumerate(chunk):
                src[row, : len(encoded[i])] = torch.tensor(encoded[i])
            src = src.to(self.device)
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


def _encode_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: TranslationTokenizer, max_len: int
) -> list[tuple[list[int], list[int]]]:
    sources = tokenizer.source.encode_batch([s for s, _ in pairs])
    targets = tokenizer.target.encode_batch([t for _, t in pairs])
    # +1 for the eos (source) or bos/eos (target) that collation adds.
    return [
        (s, t)
        for s, t in zip(sources, targets, strict=True)
        if 0 < len(s) + 1 <= max_len and 0 < len(t) + 1 <= max_len
    ]


def _batches_fn(encoded: list[tuple[list[int], list[int]]], max_tokens: int, seed: int) -> Any:
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
    max_steps: int | None = None,
    limit: int | None = None,
    bleu_sentences: int = 200,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> TrainResult:
    """Train a translator into ``run_dir``.

    Validation every ``eval_every`` steps: loss on the whole valid split and BLEU
    (greedy) on its first ``bleu_sentences`` sentences. ``limit`` keeps only that
    many sentence pairs (tests). With ``resume`` the tokenizer and the training
    state come from ``run_dir``.
    """
    recipe = PRESETS[preset] if isinstance(preset, str) else preset
    if max_steps is not None:
        recipe = replace(recipe, max_steps=max_steps)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_translation(
        data_path, direction=direction, include_phrases=recipe.include_phrases, limit=limit
    )
    logger.info("%r", corpus)
    if resume and (run_dir / "tokenizer.json").is_file():
        tokenizer = TranslationTokenizer.load(run_dir)
    else:
        tokenizer = TranslationTokenizer.train(corpus.train, vocab_size=recipe.vocab_size)
        tokenizer.save(run_dir)
    torch.manual_seed(seed)
    config = recipe.model_config(tokenizer.source.vocab_size)
    model = Transformer(config)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.fused = recipe.fused_attention
    train_pairs = _encode_pairs(corpus.train, tokenizer, config.max_len)
    valid_pairs = _encode_pairs(corpus.valid, tokenizer, config.max_len)
    valid_batches = _batches_fn(valid_pairs, recipe.max_tokens, seed)(0)
    bleu_set = list(corpus.valid[:bleu_sentences])

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss = _valid_loss(model, valid_batches, device)
        translator = Translator(model, tokenizer, direction)  # type: ignore[arg-type]
        hypotheses = translator.translate([s for s, _ in bleu_set], beam_size=1)
        bleu = score(hypotheses, [t for _, t in bleu_set])["bleu"]
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": bleu}

    trainer = Trainer(
        model,
        TrainConfig(
            max_steps=recipe.max_steps,
            lr=recipe.lr,
            warmup_steps=recipe.warmup_steps,
            weight_decay=recipe.weight_decay,
            schedule=recipe.schedule,  # type: ignore[arg-type]
            min_lr_factor=recipe.min_lr_factor,
            precision=recipe.precision,  # type: ignore[arg-type]
            eval_every=recipe.eval_every,
            checkpoint_every=recipe.checkpoint_every,
            seed=seed,
        ),
        run_dir,
        batches=_batches_fn(train_pairs, recipe.max_tokens, seed),
        loss_fn=lambda m, b: seq2seq_loss(m, b, label_smoothing=recipe.label_smoothing),
        evaluate=evaluate,
        meta={
            "family": FAMILY,
            "model_config": config.to_dict(),
            "preset": asdict(recipe),
            "direction": direction,
        },
        device=device,
        progress=progress,
    )
    return trainer.fit(resume=resume)


def load_translator(
    path: str | Path, *, average_last: int | None = None, device: str | torch.device = "cpu"
) -> Translator:
    """Load a translator from a run directory (its latest checkpoint) or a checkpoint.

    ``average_last > 1`` averages the weights of the run's last N checkpoints (up to
    the one asked for); ``None`` takes the number the run's preset recommends.
    """
    found = resolve_checkpoint(path)
    checkpoint, meta = found.path, found.meta
    run_dir = checkpoint.parent.parent  # RUN/checkpoints/step-N
    if meta.get("family") != FAMILY:
        raise ValueError(f"{checkpoint} holds a {meta.get('family')!r} model, not a translator")
    if average_last is None:
        average_last = int(meta.get("preset", {}).get("average_last", 1))
    if average_last < 1:
        raise ValueError(f"average_last must be at least 1, got {average_last}")
    model = Transformer(TransformerConfig.from_dict(meta["model_config"]))
    if average_last > 1:
        paths = [c.path for c in list_checkpoints(run_dir) if c.step <= meta["step"]]
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
