"""The Transformer's layers (Vaswani et al. 2017, section 3.1 and 3.3).

- :class:`FeedForward`: two linear layers with ReLU (or GELU) in between, the
  same at every position.
- :class:`AddNorm`: residual connection and LayerNorm around a sublayer; post-norm
  (the paper, ``LayerNorm(x + Sublayer(x))``) or pre-norm (``x + Sublayer(LayerNorm(x))``,
  which trains deep stacks without warmup tricks; ViT uses it).
- :class:`EncoderLayer`, :class:`DecoderLayer`, and their stacks :class:`Encoder`,
  :class:`Decoder`.

LayerNorm rather than BatchNorm: it normalises each position over its own
features, so it does not depend on the batch or on padding, and behaves the same
in training and at inference, one token at a time.

Notation: b batch, q target length, k source length, d ``d_model``, h heads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import KVCache, MultiHeadAttention
from qkv.outputs import export_output

__all__ = [
    "AddNorm",
    "Decoder",
    "DecoderCache",
    "DecoderLayer",
    "DecoderOutput",
    "Encoder",
    "EncoderLayer",
    "EncoderOutput",
    "FeedForward",
    "LayerOutput",
]

Activation = Literal["relu", "gelu", "silu"]
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}  # silu = swish (Marian)


class FeedForward(nn.Module):
    """``linear2(dropout(activation(linear1(x))))``, applied at every position.

    Shape: ``(..., d_model)`` -> ``(..., d_model)``.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: Activation = "relu",
        dropout: float = 0.1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = _ACTIVATIONS[self.activation](self.linear1(x))  # (..., d_ff)
        return self.linear2(self.dropout(hidden))  # (..., d)


class AddNorm(nn.Module):
    """Residual connection and LayerNorm around one sublayer, split in two calls so
    the sublayer can return more than a tensor::

        y = sublayer(add_norm.before(x))
        x = add_norm.after(x, y)

    Post-norm: ``before(x) = x``, ``after = LayerNorm(x + dropout(y))``.
    Pre-norm: ``before(x) = LayerNorm(x)``, ``after = x + dropout(y)``.
    """

    def __init__(
        self, d_model: int, *, dropout: float = 0.1, norm_first: bool = False, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.norm_first else x

    def after(self, x: Tensor, sublayer_output: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_output)
        return x if self.norm_first else self.norm(x)


class LayerOutput(NamedTuple):
    """One layer's result; the weights are ``None`` unless asked for."""

    hidden: Tensor  # (b, L, d)
    self_attention: Tensor | None  # (b, h, L, L)
    cross_attention: Tensor | None = None  # (b, h, q, k), decoder only


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each inside :class:`AddNorm`.

    Args:
        d_model: width. num_heads: attention heads. d_ff: feed-forward width.
        dropout: on sublayer outputs (residual dropout) and inside the feed-forward.
        attention_dropout: on attention weights; 0 keeps the fused kernel on CPU.
        activation_dropout: inside the feed-forward, after the activation; default
            ``dropout`` (as ``torch.nn``); BERT and ViT use 0.
        activation: ``"relu"`` (paper) or ``"gelu"`` (BERT, ViT).
        norm_first: pre-norm instead of the paper's post-norm.
        layer_norm_eps: LayerNorm epsilon. bias: biases in every linear layer.
        fused_attention: attention through the fused kernel when no weights are
            asked for; ``False``: the explicit matmul-softmax-matmul path.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float | None = None,
        activation: Activation = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, dropout=attention_dropout, bias=bias, fused=fused_attention
        )
        self.self_attn_norm = AddNorm(
            d_model, dropout=dropout, norm_first=norm_first, eps=layer_norm_eps
        )
        self.feed_forward = FeedForward(
            d_model,
            d_ff,
            activation=activation,
            dropout=dropout if activation_dropout is None else activation_dropout,
            bias=bias,
        )
        self.feed_forward_norm = AddNorm(
            d_model, dropout=dropout, norm_first=norm_first, eps=layer_norm_eps
        )

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> LayerOutput:
        """Shape: x ``(b, L, d)``, key_padding_mask ``(b, L)`` (True = real token)."""
        h = self.self_attn_norm.before(x)
        attn = self.self_attn(
            h, mask=mask, key_padding_mask=key_padding_mask, need_weights=need_weights
        )
        x = self.self_attn_norm.after(x, attn.output)
        x = self.feed_forward_norm.after(x, self.feed_forward(self.feed_forward_norm.before(x)))
        return LayerOutput(x, attn.weights)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, feed-forward;
    each inside :class:`AddNorm`. Arguments as :class:`EncoderLayer`."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float | None = None,
        activation: Activation = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm_first = norm_first

        def add_norm() -> AddNorm:
            return AddNorm(d_model, dropout=dropout, norm_first=norm_first, eps=layer_norm_eps)

        self.self_attn = MultiHeadAttention(
            d_model, num_heads, dropout=attention_dropout, bias=bias, fused=fused_attention
        )
        self.self_attn_norm = add_norm()
        self.cross_attn = MultiHeadAttention(
            d_model, num_heads, dropout=attention_dropout, bias=bias, fused=fused_attention
        )
        self.cross_attn_norm = add_norm()
        self.feed_forward = FeedForward(
            d_model,
            d_ff,
            activation=activation,
            dropout=dropout if activation_dropout is None else activation_dropout,
            bias=bias,
        )
        self.feed_forward_norm = add_norm()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> LayerOutput:
        """Shape: x ``(b, q, d)``, memory ``(b, k, d)``; key_padding_mask ``(b, q)``
        (all positions so far when decoding with a cache), memory_key_padding_mask
        ``(b, k)``; cache: (self-attention, cross-attention) caches of this layer."""
        self_cache, cross_cache = (None, None) if cache is None else cache
        h = self.self_attn_norm.before(x)
        self_attn = self.self_attn(
            h,
            key_padding_mask=key_padding_mask,
            is_causal=True,
            need_weights=need_weights,
            cache=self_cache,
        )
        x = self.self_attn_norm.after(x, self_attn.output)
        h = self.cross_attn_norm.before(x)
        cross_attn = self.cross_attn(
            h,
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=need_weights,
            cache=cross_cache,
        )
        x = self.cross_attn_norm.after(x, cross_attn.output)
        x = self.feed_forward_norm.after(x, self.feed_forward(self.feed_forward_norm.before(x)))
        return LayerOutput(x, self_attn.weights, cross_attn.weights)


def _layers_returning_weights(need_weights: bool | Sequence[int], num_layers: int) -> list[bool]:
    """Which layers return weights: all, none, or the listed indices (negative ok)."""
    if isinstance(need_weights, bool):
        return [need_weights] * num_layers
    wanted = [False] * num_layers
    for index in need_weights:
        if not -num_layers <= index < num_layers:
            raise ValueError(f"layer index {index} out of range for {num_layers} layers")
        wanted[index] = True
    return wanted


def _clones(layer: nn.Module, num_layers: int) -> nn.ModuleList:
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


def _final_norm(layer: EncoderLayer | DecoderLayer, final_norm: bool | None) -> nn.Module:
    # Pre-norm stacks leave the last residual sum unnormalised, so they end in a
    # LayerNorm; post-norm stacks already end in one.
    use = layer.norm_first if final_norm is None else final_norm
    eps = layer.feed_forward_norm.norm.eps
    return nn.LayerNorm(layer.d_model, eps=eps) if use else nn.Identity()


@export_output
@dataclass
class EncoderOutput:
    """``last_hidden_state`` ``(b, k, d)``; ``attentions[i]`` ``(b, h, k, k)`` for the
    layers asked for, else ``None`` (``attentions`` is ``None`` when none were)."""

    last_hidden_state: Tensor
    attentions: tuple[Tensor | None, ...] | None = None


@export_output
@dataclass
class DecoderOutput:
    """``last_hidden_state`` ``(b, q, d)``; per-layer self-attention ``(b, h, q, q)``
    and cross-attention ``(b, h, q, k)`` weights for the layers asked for."""

    last_hidden_state: Tensor
    self_attentions: tuple[Tensor | None, ...] | None = None
    cross_attentions: tuple[Tensor | None, ...] | None = None


class Encoder(nn.Module):
    """``num_layers`` copies of ``layer``, then a final LayerNorm when the layers are
    pre-norm (override with ``final_norm``)."""

    def __init__(
        self, layer: EncoderLayer, num_layers: int, *, final_norm: bool | None = None
    ) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = _final_norm(layer, final_norm)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        need_weights: bool | Sequence[int] = False,
    ) -> EncoderOutput:
        """Shape: x ``(b, k, d)``, key_padding_mask ``(b, k)`` (True = real token).

        ``need_weights``: ``True`` for every layer, or a list of layer indices.
        """
        wanted = _layers_returning_weights(need_weights, len(self.layers))
        attentions = []
        for layer, want in zip(self.layers, wanted, strict=True):
            x, weights, _ = layer(x, key_padding_mask=key_padding_mask, need_weights=want)
            attentions.append(weights)
        return EncoderOutput(self.norm(x), tuple(attentions) if any(wanted) else None)


class DecoderCache:
    """Per-layer key/value caches of a :class:`Decoder` for incremental decoding.

    ``offset`` is the number of target positions already decoded (the position of
    the next token). :meth:`reorder` keeps the given batch rows (beam search).
    """

    def __init__(self, num_layers: int) -> None:
        self.layers = [(KVCache(), KVCache(static=True)) for _ in range(num_layers)]
        self.offset = 0

    def reorder(self, index: Tensor) -> None:
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            cross_cache.reorder(index)


class Decoder(nn.Module):
    """``num_layers`` copies of ``layer``, final LayerNorm as in :class:`Encoder`."""

    def __init__(
        self, layer: DecoderLayer, num_layers: int, *, final_norm: bool | None = None
    ) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = _final_norm(layer, final_norm)

    def init_cache(self) -> DecoderCache:
        return DecoderCache(len(self.layers))

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        need_weights: bool | Sequence[int] = False,
        cache: DecoderCache | None = None,
    ) -> DecoderOutput:
        """Shape: x ``(b, q, d)`` (the new positions only when ``cache`` is given),
        memory ``(b, k, d)``, masks ``(b, q_total)`` and ``(b, k)``, True = real token.

        With a cache, ``cache.offset`` advances by ``q``.
        """
        wanted = _layers_returning_weights(need_weights, len(self.layers))
        self_attentions, cross_attentions = [], []
        for i, (layer, want) in enumerate(zip(self.layers, wanted, strict=True)):
            x, self_weights, cross_weights = layer(
                x,
                memory,
                key_padding_mask=key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                need_weights=want,
                cache=None if cache is None else cache.layers[i],
            )
            self_attentions.append(self_weights)
            cross_attentions.append(cross_weights)
        if cache is not None:
            cache.offset += x.shape[1]
        if not any(wanted):
            return DecoderOutput(self.norm(x))
        return DecoderOutput(self.norm(x), tuple(self_attentions), tuple(cross_attentions))
