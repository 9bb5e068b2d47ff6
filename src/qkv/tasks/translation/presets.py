"""The translation recipes: the model, the engine's settings, and the job's own fields.

The model's vocabulary size (``model.src_vocab_size``, one joint vocabulary) is the
size the BPE tokenizer is trained to; the trained tokenizer's real size replaces it
when the model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from qkv.data.alternatives import ALTERNATIVES, Alternatives
from qkv.data.bpe import PAD_ID
from qkv.models.transformer import TransformerConfig
from qkv.train import TrainConfig
from qkv.train.recipe import Recipe

__all__ = ["PRESETS", "TranslationPreset"]


@dataclass(frozen=True)
class TranslationPreset(Recipe[TransformerConfig]):
    """A translation recipe: ``model``, ``train`` (:class:`~qkv.train.recipe.Recipe`)
    and what only this job has."""

    max_tokens: int = 3000  # per batch, padding included
    label_smoothing: float = 0.1
    include_phrases: bool = False  # add the dictionary's phrase pairs to training
    average_last: int = 1  # checkpoints averaged for the final model
    # The "/" alternatives of training targets (qkv.data.alternatives): "keep" the line,
    # the "first" alternative, or "split" into one pair per variant.
    alternatives: Alternatives = "keep"

    # Each source token and each decoder input token after <bos> is replaced by <unk>
    # with this probability while training (word dropout).
    word_dropout: float = 0.0
    # Back-translated pairs (train_translator's back_translated) get this word in front
    # of their source, so the model can tell them from real pairs; "" for none.
    back_translation_tag: str = "<bt>"

    derived: ClassVar[Mapping[str, str]] = {
        "train.seed": "the seed (--seed)",
        "model.tgt_vocab_size": "model.src_vocab_size (one joint vocabulary)",
        **{f"model.{name}_id": "the BPE vocabulary" for name in ("pad", "bos", "eos")},
    }

    def __post_init__(self) -> None:
        if self.alternatives not in ALTERNATIVES:
            raise ValueError(
                f"alternatives: expected one of {ALTERNATIVES}, got {self.alternatives!r}"
            )
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout: expected 0 <= p < 1, got {self.word_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected 0 <= p < 1, got {self.label_smoothing}")
        if self.max_tokens < 1 or self.average_last < 1:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) and average_last ({self.average_last}) "
                "must be >= 1"
            )
        if any(ch.isspace() for ch in self.back_translation_tag):
            raise ValueError("back_translation_tag: one word, without spaces")

    @property
    def vocab_size(self) -> int:
        """The joint BPE vocabulary the tokenizer is trained to."""
        return self.model.src_vocab_size


def _model(
    vocab_size: int,
    d_model: int,
    num_heads: int,
    num_layers: int,
    d_ff: int,
    *,
    norm_first: bool = False,
    fused_attention: bool = True,
) -> TransformerConfig:
    # Joint vocabulary: one table for both languages, tied to the output projection.
    return TransformerConfig(
        vocab_size, vocab_size, d_model=d_model, num_heads=num_heads,
        num_encoder_layers=num_layers, num_decoder_layers=num_layers, d_ff=d_ff,
        norm_first=norm_first, fused_attention=fused_attention,
        share_embeddings=True, tie_output=True, pad_id=PAD_ID, max_len=256,
    )  # fmt: skip


# The small and medium recipe, cut at different lengths. Pre-norm: with post-norm layers
# at this learning rate the encoder's last layer collapsed to the same vector at every
# position and cross-attention stayed uniform (0.9 BLEU after an hour,
# benchmarks/RESULTS.md). A small joint vocabulary, label smoothing, bf16 for speed where
# the hardware has it (precision "auto", qkv.precision),
# checkpoint averaging. The explicit attention path (fused_attention=False) trains
# faster in bf16 on a CPU at these 10-40 token sentences (benchmarks/RESULTS.md);
# decoding a trained model is not affected.
_SMALL_MODEL = _model(4000, 256, 4, 3, 1024, norm_first=True, fused_attention=False)


def _cosine(max_steps: int, warmup_steps: int, eval_every: int) -> TrainConfig:
    return TrainConfig(
        max_steps=max_steps, lr=1e-3, warmup_steps=warmup_steps, schedule="cosine",
        min_lr_factor=0.05, precision="auto", eval_every=eval_every, checkpoint_every=100,
    )  # fmt: skip


PRESETS: dict[str, TranslationPreset] = {
    # Seconds to a few minutes: smoke tests and the test suite.
    "tiny": TranslationPreset(
        "tiny", _model(2000, 64, 4, 2, 256),
        TrainConfig(max_steps=300, lr=2e-3, warmup_steps=100, eval_every=100, checkpoint_every=100),
        max_tokens=2048,
    ),
    # The quickstart: about twelve minutes on one CPU core.
    "small": TranslationPreset(
        "small", _SMALL_MODEL, _cosine(500, 200, 250), max_tokens=3000, average_last=3
    ),
    # Half an hour on one CPU core.
    "medium": TranslationPreset(
        "medium", _SMALL_MODEL, _cosine(1300, 300, 325), max_tokens=3000, average_last=3
    ),
    # The medium model trained about three times as long, held back from memorising the
    # corpus: dropout 0.2, the first of each "/" alternative as the target, the last
    # five checkpoints averaged. Under an hour on one CPU core (docs/translation.md;
    # benchmarks/RESULTS.md, "Translation levers").
    "hour": TranslationPreset(
        "hour", replace(_SMALL_MODEL, dropout=0.2), _cosine(3000, 300, 500),
        max_tokens=3000, average_last=5, alternatives="first",
    ),
    # The paper's base model; far more than this corpus needs, for GPUs.
    "base": TranslationPreset(
        "base", _model(8000, 512, 8, 6, 2048),
        TrainConfig(
            max_steps=20000, lr=7e-4, warmup_steps=4000, precision="auto", eval_every=1000,
            checkpoint_every=1000,
        ),
        max_tokens=8000, include_phrases=True, average_last=5,
    ),
}  # fmt: skip
