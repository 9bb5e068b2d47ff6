"""The encoder–decoder Transformer for translation (Vaswani et al. 2017, figure 1).

Source ids -> embedding · sqrt(d) + positional encoding -> encoder (N layers) ->
memory; target ids (shifted right) -> embedding + positions -> decoder (masked
self-attention, cross-attention to the memory) -> linear to vocabulary logits.

Notation: b batch, k source length, q target length, d ``d_model``, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import ConfigDict
from qkv.dropout import Dropout
from qkv.embedding import TokenEmbedding
from qkv.layers import (
    Activation,
    Decoder,
    DecoderCache,
    DecoderLayer,
    DecoderOutput,
    Encoder,
    EncoderLayer,
    EncoderOutput,
    StaticDecoderCache,
    kept_weights,
    step_linear,
    step_matrix,
)
from qkv.losses import IGNORE_INDEX, cross_entropy
from qkv.masks import padding_mask_from_ids
from qkv.outputs import ModelOutput, export_output
from qkv.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

__all__ = ["Seq2SeqOutput", "Transformer", "TransformerConfig"]


@dataclass(frozen=True)
class TransformerConfig(ConfigDict):
    """Sizes and switches of the seq2seq Transformer; defaults are the paper's base model."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1  # on embeddings + positions and on every sublayer output
    # Not in the paper. Off by default: on the CPU any attention dropout makes the
    # fused kernel fall back to building the q × k matrix.
    attention_dropout: float = 0.0
    activation_dropout: float | None = None  # inside the feed-forward; None: ``dropout``
    activation: Activation = "relu"
    norm_first: bool = False  # the paper is post-norm
    layer_norm_eps: float = 1e-5
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    # Where the sines and cosines go: "interleaved" (the paper: sin in the even
    # channels, cos in the odd ones) or "halves" (Marian: sines, then cosines).
    sinusoid_layout: Literal["interleaved", "halves"] = "interleaved"
    scale_embedding: bool = True  # token embeddings times sqrt(d) (section 3.4; Marian: optional)
    max_len: int = 1024  # longest source or target sequence
    share_embeddings: bool = False  # one embedding for source and target (joint vocabulary)
    tie_output: bool = True  # output projection reuses the target embedding (section 3.4)
    pad_id: int = 0
    # The decoder's first input and the end token. The defaults are qkv's BPE ids
    # (qkv.data.bpe.BOS_ID, EOS_ID); Marian starts the decoder with its pad id.
    bos_id: int = 1
    eos_id: int = 2
    # A fixed bias added to the logits (Marian's ``final_logits_bias`` buffer).
    final_logits_bias: bool = False
    # Decoding: at a sentence's maximum length only eos may come (Hugging Face's
    # ``forced_eos_token_id``, which Marian checkpoints set).
    forced_eos: bool = False

    # The fused attention kernel when no weights are asked for; False: the explicit
    # matmul-softmax-matmul path, faster to train in bf16 on a CPU at sentence lengths
    # (benchmarks/RESULTS.md).
    fused_attention: bool = True

    def __post_init__(self) -> None:
        self.check(
            positive=(
                "src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "d_ff", "max_len",
                "num_encoder_layers", "num_decoder_layers", "layer_norm_eps",
            ),
            probabilities=("dropout", "attention_dropout", "activation_dropout"),
            heads=("num_heads", "d_model"),
        )  # fmt: skip
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "share_embeddings needs one vocabulary, got src_vocab_size "
                f"{self.src_vocab_size} and tgt_vocab_size {self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id ({self.pad_id}) must be a valid id in both vocabularies")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab_size:
                raise ValueError(
                    f"{name} ({value}) must be a valid id in the target vocabulary "
                    f"[0, {self.tgt_vocab_size})"
                )
        if self.eos_id == self.pad_id:
            raise ValueError(f"eos_id ({self.eos_id}) must differ from pad_id ({self.pad_id})")

    @classmethod
    def base(cls, src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> TransformerConfig:
        """The paper's base model: 512 wide, 8 heads, 6 + 6 layers, feed-forward 2048."""
        return cls(src_vocab_size, tgt_vocab_size, **overrides)

    @classmethod
    def tiny(cls, src_vocab_size: int, tgt_vocab_size: int, **overrides: Any) -> TransformerConfig:
        """A model for tests and toy tasks: 64 wide, 4 heads, 2 + 2 layers."""
        sizes: dict[str, Any] = dict(
            d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=128
        )
        return cls(src_vocab_size, tgt_vocab_size, **{**sizes, **overrides})


@export_output
@dataclass(kw_only=True)
class Seq2SeqOutput(ModelOutput):
    """``logits`` ``(b, q, V)``; ``loss`` and ``num_targets`` when labels were given
    (:class:`~qkv.outputs.ModelOutput`); the encoder and decoder outputs (with
    weights when asked for)."""

    encoder: EncoderOutput
    decoder: DecoderOutput


class Transformer(nn.Module):
    """Encoder–decoder Transformer.

    ``forward(src_ids, tgt_ids)`` is the training pass (teacher forcing: ``tgt_ids``
    starts with BOS and is the target shifted right). For generation use
    :meth:`encode` once, then :meth:`decode` with a cache from :meth:`init_cache`,
    one token at a time.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        scale = c.scale_embedding
        self.src_embed = TokenEmbedding(
            c.src_vocab_size, c.d_model, padding_idx=c.pad_id, scale=scale
        )
        self.tgt_embed = (
            self.src_embed
            if c.share_embeddings
            else TokenEmbedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id, scale=scale)
        )
        self.src_positional = self._positional(c)
        self.tgt_positional = self._positional(c)
        self.dropout = Dropout(c.dropout)
        layer_args: dict[str, Any] = dict(
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            activation_dropout=c.activation_dropout,
            activation=c.activation,
            norm_first=c.norm_first,
            layer_norm_eps=c.layer_norm_eps,
            fused_attention=c.fused_attention,
        )
        self.encoder = Encoder(
            EncoderLayer(c.d_model, c.num_heads, c.d_ff, **layer_args), c.num_encoder_layers
        )
        self.decoder = Decoder(
            DecoderLayer(c.d_model, c.num_heads, c.d_ff, **layer_args), c.num_decoder_layers
        )
        self.output_proj = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.final_logits_bias:
            # A buffer, as in Marian: saved with the weights, never trained.
            self.register_buffer("final_logits_bias", torch.zeros(c.tgt_vocab_size))
        else:
            self.final_logits_bias: Tensor | None = None
        self.reset_parameters()

    @staticmethod
    def _positional(c: TransformerConfig) -> nn.Module:
        if c.positional == "learned":
            return LearnedPositionalEmbedding(c.d_model, c.max_len)
        return SinusoidalPositionalEncoding(c.d_model, c.max_len, layout=c.sinusoid_layout)

    def logits(self, hidden: Tensor, *, cache: StaticDecoderCache | None = None) -> Tensor:
        """The decoder's output ``(..., d)`` -> vocabulary logits ``(..., V)``: the output
        projection, plus the final logits bias when the model has one. ``cache``: the
        static cache of the step, whose packed copy of the projection is used if it has
        one (bf16 on a CPU, or int8)."""
        if cache is not None and cache.output_weight is not None:
            logits = step_linear(cache.form)(hidden, *cache.output_weight)
        else:
            logits = self.output_proj(hidden)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias.to(logits.dtype)
        return logits

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix in the stacks (the reference
        implementation's choice); embeddings N(0, d^-0.5), so that times sqrt(d)
        they have unit scale; the padding row zero."""
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        embeddings = (
            [self.src_embed] if self.config.share_embeddings else [self.src_embed, self.tgt_embed]
        )
        for embed in embeddings:
            nn.init.normal_(embed.weight, std=self.config.d_model**-0.5)
            with torch.no_grad():
                embed.weight[self.config.pad_id].zero_()
        if self.config.tie_output:
            self.output_proj.weight = self.tgt_embed.weight
        else:
            nn.init.xavier_uniform_(self.output_proj.weight)

    def no_weight_decay(self) -> set[str]:
        """Parameters a trainer should not decay beyond the 1-D ones: none (the paper
        trains without weight decay; where a recipe adds it, it decays every matrix)."""
        return set()

    def encode(
        self,
        src_ids: Tensor,
        *,
        src_key_padding_mask: Tensor | None = None,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> EncoderOutput:
        """Shape: src_ids ``(b, k)``; mask ``(b, k)`` True = real token (default:
        ``src_ids != pad_id``). Returns ``last_hidden_state`` ``(b, k, d)``.
        ``validate``: check that every id is in the vocabulary (see :meth:`forward`)."""
        if src_key_padding_mask is None:
            src_key_padding_mask = padding_mask_from_ids(src_ids, self.config.pad_id)
        x = self.src_embed(src_ids, validate=validate)  # (b, k, d)
        x = self.dropout(self.src_positional(x))
        return self.encoder(x, key_padding_mask=src_key_padding_mask, need_weights=need_weights)

    def init_cache(self) -> DecoderCache:
        """An empty cache for :meth:`decode`, one token at a time."""
        return self.decoder.init_cache()

    @property
    def supports_static_cache(self) -> bool:
        """Whether :meth:`init_static_cache` works for this model: plain decoder layers
        and a sinusoidal or learned target positional encoding."""
        positional = (SinusoidalPositionalEncoding, LearnedPositionalEmbedding)
        return self.decoder.supports_static_cache and isinstance(self.tgt_positional, positional)

    def init_static_cache(
        self,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        max_len: int,
        *,
        quantize: str | None = None,
    ) -> StaticDecoderCache:
        """A cache for :meth:`decode` allocated once for ``max_len`` new tokens and written
        in place (:class:`~qkv.layers.StaticDecoderCache`), with the cross-attention keys
        and values of ``memory`` projected now. :meth:`decode` then takes one token per
        row and step, and reads neither ``memory`` nor its mask again. ``quantize="int8"``:
        int8 copies of the decoder's matrices and the output projection
        (:mod:`qkv.quantize`; a CPU only).

        Shape: memory ``(b, k, d)``, memory_key_padding_mask ``(b, k)`` True = real token.
        """
        if not self.supports_static_cache:
            raise ValueError(
                "this model cannot use a static cache (wrapped decoder layers or another "
                "positional encoding): use init_cache()"
            )
        if max_len > self.config.max_len:
            raise ValueError(
                f"max_len ({max_len}) exceeds the model's {self.config.max_len} positions"
            )
        cache = self.decoder.init_static_cache(
            memory, memory_key_padding_mask, max_len, quantize=quantize
        )
        projection, form = self.output_proj, cache.form
        if form != "plain":
            cache.output_weight = kept_weights(  # type: ignore[assignment]
                projection, form, lambda: step_matrix(projection.weight, projection.bias, form)
            )
        return cache

    def _decode_static(self, tgt_ids: Tensor, cache: StaticDecoderCache) -> DecoderOutput:
        """One token per row through the decoder with a static cache (see :meth:`decode`):
        embedding and position taken by tensor index, so that the step can be captured."""
        if tgt_ids.dim() != 2 or tgt_ids.shape[1] != 1:
            raise ValueError(
                f"with a static cache tgt_ids must be (batch, 1), got {tuple(tgt_ids.shape)}"
            )
        embed = self.tgt_embed
        x = F.embedding(tgt_ids, embed.weight)  # (b, 1, d)
        if embed.multiplier != 1.0:
            x = x * embed.multiplier
        positional = self.tgt_positional
        if isinstance(positional, SinusoidalPositionalEncoding):
            table = positional.encoding
        else:
            table = positional.embedding.weight
        x = x + table.index_select(0, cache.position).to(x.dtype)  # (b, 1, d) + (1, d)
        return DecoderOutput(self.decoder.step(x, cache))

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        *,
        memory_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        cache: DecoderCache | StaticDecoderCache | None = None,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> DecoderOutput:
        """Run the decoder on target ids (the new ones only, with a ``cache``).

        With a :class:`~qkv.layers.StaticDecoderCache` (:meth:`init_static_cache`):
        one token per row, ``memory`` and ``memory_key_padding_mask`` are not read (the
        cache holds what the decoder needs of them), no target mask, no weights, and
        the model must be in eval mode.

        Shape: tgt_ids ``(b, q)``, memory ``(b, k, d)``, masks ``(b, k)`` and
        ``(b, q_total)``, True = real token. Returns ``last_hidden_state``
        ``(b, q, d)``; :meth:`logits` turns it into logits. ``validate``: check
        that every id is in the vocabulary (see :meth:`forward`).
        """
        if isinstance(cache, StaticDecoderCache):
            if self.training or need_weights is not False or tgt_key_padding_mask is not None:
                raise ValueError(
                    "a static cache is for inference: model.eval(), no need_weights, "
                    "no tgt_key_padding_mask"
                )
            return self._decode_static(tgt_ids, cache)
        offset = 0 if cache is None else cache.offset
        if tgt_key_padding_mask is not None and self.config.bos_id == self.config.pad_id:
            # The decoder starts with the pad id (Marian): position 0 is a real token,
            # not padding, whatever an ``ids != pad_id`` mask says.
            tgt_key_padding_mask = torch.cat(
                [torch.ones_like(tgt_key_padding_mask[:, :1]), tgt_key_padding_mask[:, 1:]], dim=1
            )
        x = self.tgt_embed(tgt_ids, validate=validate)  # (b, q, d)
        x = self.dropout(self.tgt_positional(x, offset))
        return self.decoder(
            x,
            memory,
            key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            need_weights=need_weights,
            cache=cache,
        )

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        *,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> Seq2SeqOutput:
        """Teacher-forced pass. Padding masks default to ``ids != pad_id``.

        ``labels``: the token each position should predict (the target shifted
        left); positions holding ``pad_id`` or ``-100`` carry no loss. With labels,
        ``loss`` is the label-smoothed cross-entropy (section 5.4: ε = 0.1 hurts
        perplexity but helps BLEU), averaged over the real target tokens.

        ``validate``: check that every id is in its vocabulary, with a message naming
        the id. Reading the values waits for the device and breaks ``torch.compile``
        graphs, so it is off by default (an out-of-range id then fails inside
        ``nn.Embedding``); shapes and dtypes are always checked.

        Shape: src_ids ``(b, k)``, tgt_ids ``(b, q)``, labels ``(b, q)`` -> logits
        ``(b, q, V)``.
        """
        if src_ids.dim() != 2 or tgt_ids.dim() != 2 or src_ids.shape[0] != tgt_ids.shape[0]:
            raise ValueError(
                "src_ids and tgt_ids must be (batch, length) with the same batch, got "
                f"{tuple(src_ids.shape)} and {tuple(tgt_ids.shape)}"
            )
        if src_key_padding_mask is None:
            src_key_padding_mask = padding_mask_from_ids(src_ids, self.config.pad_id)
        if tgt_key_padding_mask is None:
            tgt_key_padding_mask = padding_mask_from_ids(tgt_ids, self.config.pad_id)
        encoded = self.encode(
            src_ids,
            src_key_padding_mask=src_key_padding_mask,
            need_weights=need_weights,
            validate=validate,
        )
        decoded = self.decode(
            tgt_ids,
            encoded.last_hidden_state,
            memory_key_padding_mask=src_key_padding_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            need_weights=need_weights,
            validate=validate,
        )
        logits = self.logits(decoded.last_hidden_state)  # (b, q, V)
        output = Seq2SeqOutput(logits=logits, encoder=encoded, decoder=decoded)
        if labels is not None:
            labels = labels.masked_fill(labels == self.config.pad_id, IGNORE_INDEX)  # (b, q)
            output.loss, output.num_targets = cross_entropy(
                logits, labels, label_smoothing=label_smoothing
            )
        return output
