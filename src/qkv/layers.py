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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import KVCache, MultiHeadAttention, weights_version
from qkv.dropout import Dropout
from qkv.outputs import export_output
from qkv.quantize import QUANTIZATIONS, int8_linear, int8_unavailable, pack_int8_weight

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
    "StaticDecoderCache",
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
        self.dropout = Dropout(dropout)

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
        self.dropout = Dropout(dropout)

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


class _LayerStep(NamedTuple):
    """One decoder layer's tensors for :meth:`Decoder.step`, gathered once per cache so
    that a step reads them without going through the modules."""

    norm_first: bool
    feed_forward_in: Callable[[Tensor], Tensor]  # activation(linear1(x))
    linear: Callable[..., Tensor]  # F.linear, or the one for the packed forms (step_linear)
    # Each matrix with its bias as step_matrix gives them, called as linear(x, *pair): a
    # tensor, or in the int8 form an opaque packed weight with the bias inside (bias None).
    qkv_weight: Tensor  # (3d, d): the q, k and v projections stacked
    qkv_bias: Tensor | None  # (3d,)
    self_out: tuple[Tensor, Tensor | None]
    self_norm: tuple[Tensor | None, Tensor | None, float]  # LayerNorm weight, bias, eps
    cross_query: tuple[Tensor, Tensor | None]
    cross_out: tuple[Tensor, Tensor | None]
    cross_norm: tuple[Tensor | None, Tensor | None, float]
    linear2: tuple[Tensor, Tensor | None]
    feed_forward_norm: tuple[Tensor | None, Tensor | None, float]


def _norm_args(add_norm: AddNorm) -> tuple[Tensor | None, Tensor | None, float]:
    norm = add_norm.norm
    return norm.weight, norm.bias, norm.eps


def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` with a weight packed by :func:`pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def pack_weight(weight: Tensor) -> Tensor:
    # oneDNN's blocked layout for its bf16 matrix-vector kernels (the one torch.compile's
    # freezing uses); the batch-size hint of 1 serves larger batches as well.
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def packs_bf16_weights(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :meth:`Decoder.step` packs its weights for oneDNN: bf16 on a CPU whose
    oneDNN has bf16 kernels. A decoding step reads every weight once for a few rows, and
    the plain bf16 ``F.linear`` runs no faster than fp32 there; the packed one does."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


# How a decoding step holds its matrices: as the modules have them ("plain"), packed for
# oneDNN's bf16 kernels ("bf16-packed", packs_bf16_weights), or as int8 (qkv.quantize).
StepWeights = Literal["plain", "bf16-packed", "int8"]


def step_weights(device: torch.device, dtype: torch.dtype, quantize: str | None) -> StepWeights:
    """The form of the step's matrices for a model on ``device`` in ``dtype``:
    ``quantize="int8"`` (:mod:`qkv.quantize`; raises ``ValueError`` where it cannot run),
    or the fastest exact form."""
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize: expected one of {QUANTIZATIONS} or None, got {quantize!r}")
        why = int8_unavailable(device)
        if why is not None:
            raise ValueError(f"quantize={quantize!r}: {why}")
        return "int8"
    return "bf16-packed" if packs_bf16_weights(device, dtype) else "plain"


def step_linear(form: StepWeights) -> Callable[..., Tensor]:
    """``F.linear`` for the matrices of :func:`step_matrix` in this form."""
    return {"plain": F.linear, "bf16-packed": packed_linear, "int8": int8_linear}[form]


def step_matrix(linear_weight: Tensor, bias: Tensor | None, form: StepWeights) -> tuple:
    """``(weight, bias)`` in this form, to call as ``step_linear(form)(x, *pair)``: the int8
    form packs the bias with the weight."""
    if form == "int8":
        return pack_int8_weight(linear_weight, bias), None
    if form == "bf16-packed":
        return pack_weight(linear_weight), bias
    return linear_weight, bias


def _layer_step_weights(layer: DecoderLayer, form: StepWeights) -> _LayerStep:
    sa, ca, ff = layer.self_attn, layer.cross_attn, layer.feed_forward
    # Stacked once, not per step: a copy of the weights per step would cost about what
    # the three projections of one token do.
    qkv_weight, qkv_bias = sa.stacked_qkv()

    def w(linear: nn.Linear) -> tuple:
        return step_matrix(linear.weight, linear.bias, form)

    linear = step_linear(form)
    linear1, activation = w(ff.linear1), _ACTIVATIONS[ff.activation]
    if form == "bf16-packed" and ff.activation == "relu":
        # oneDNN applies the ReLU as it writes the product: one pass fewer.
        def feed_forward_in(x: Tensor) -> Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, *linear1, "relu", [], "")
    else:

        def feed_forward_in(x: Tensor) -> Tensor:
            return activation(linear(x, *linear1))

    return _LayerStep(
        layer.norm_first,
        feed_forward_in,
        linear,
        *step_matrix(qkv_weight, qkv_bias, form),
        w(sa.out_proj),
        _norm_args(layer.self_attn_norm),
        w(ca.q_proj),
        w(ca.out_proj),
        _norm_args(layer.cross_attn_norm),
        w(ff.linear2),
        _norm_args(layer.feed_forward_norm),
    )


# What a step needs of a module's weights (stacked, packed), kept between caches while the
# module's parameters stay the same (addresses and in-place versions): building it costs
# a few steps.
_KEPT: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, object]] = weakref.WeakKeyDictionary()


def kept_weights(module: nn.Module, form: str, build: Callable[[], object]) -> object:
    """``build()`` (under ``no_grad``), or what it returned before for ``module`` with the
    same parameters and the same ``form``."""
    version = (form, weights_version(module.parameters()))
    kept = _KEPT.get(module)
    if kept is not None and kept[0] == version:
        return kept[1]
    with torch.no_grad():
        value = build()
    _KEPT[module] = (version, value)
    return value


def _layer_norm(x: Tensor, args: tuple[Tensor | None, Tensor | None, float]) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], args[0], args[1], args[2])


def _layer_step(
    x: Tensor,
    w: _LayerStep,
    key: Tensor,
    value: Tensor,
    cross_key: Tensor,
    cross_value: Tensor,
    position: Tensor,
    self_mask: Tensor,
    memory_mask: Tensor,
) -> Tensor:
    """:meth:`DecoderLayer.forward` for one new token with a :class:`StaticDecoderCache`,
    in functional calls (no module calls, checks or mask building: a batch-1 step on a
    CPU is a few hundred small operations, each paying such costs).

    Shape: x ``(b, 1, d)``; key, value ``(b, h, T, dh)`` (written at ``position``);
    cross_key, cross_value ``(b, h, s, dh)``; self_mask ``(1, 1, 1, T)`` and memory_mask
    ``(b, 1, 1, s)`` additive (0: may attend, -inf: not) -> ``(b, 1, d)``.
    """
    b, _, d = x.shape
    heads, head_dim = key.shape[1], key.shape[3]
    h = _layer_norm(x, w.self_norm) if w.norm_first else x
    # (b, 1, 3d) -> three (b, h, 1, dh): the one new position's query, key and value.
    linear = w.linear
    q, k, v = linear(h, w.qkv_weight, w.qkv_bias).view(b, 3, heads, 1, head_dim).unbind(1)
    key.index_copy_(2, position, k)
    value.index_copy_(2, position, v)
    # Every slot is in the buffer; the mask keeps the written ones (up to position).
    attn = F.scaled_dot_product_attention(q, key, value, attn_mask=self_mask)  # (b, h, 1, dh)
    y = linear(attn.transpose(1, 2).reshape(b, 1, d), *w.self_out)
    x = x + y if w.norm_first else _layer_norm(x + y, w.self_norm)

    h = _layer_norm(x, w.cross_norm) if w.norm_first else x
    q = linear(h, *w.cross_query).view(b, heads, 1, head_dim)  # (b, h, 1, dh)
    attn = F.scaled_dot_product_attention(q, cross_key, cross_value, attn_mask=memory_mask)
    y = linear(attn.transpose(1, 2).reshape(b, 1, d), *w.cross_out)
    x = x + y if w.norm_first else _layer_norm(x + y, w.cross_norm)

    h = _layer_norm(x, w.feed_forward_norm) if w.norm_first else x
    y = linear(w.feed_forward_in(h), *w.linear2)
    return x + y if w.norm_first else _layer_norm(x + y, w.feed_forward_norm)


class StaticDecoderCache:
    """Key/value buffers of a :class:`Decoder` allocated once for ``max_len`` target
    positions, written in place one position per step (:meth:`Decoder.step`), with the
    cross-attention keys and values of the source projected once.

    Every tensor keeps its address from step to step, so a step can be captured in a
    CUDA graph; the position is a tensor (``position``) for the same reason, and
    ``offset`` is its value on the host (steps taken). Build one with
    :meth:`Decoder.init_static_cache` (or ``Transformer.init_static_cache``).

    Shape: ``key``, ``value`` ``(n, b, h, T, dh)`` (n layers, T = ``max_len``);
    ``cross_key``, ``cross_value`` ``(n, b, h, s, dh)``; ``memory_mask`` ``(b, 1, 1, s)``
    and ``self_mask`` ``(1, 1, 1, T)``, additive, in the model's dtype: 0 where a query
    may attend (real source tokens; the positions written so far), -inf elsewhere; the
    attention kernel would otherwise turn a boolean mask into this at every call.
    ``position`` ``(1,)``.
    """

    def __init__(
        self,
        weights: list[_LayerStep] | object,
        key: Tensor,
        value: Tensor,
        cross_key: Tensor,
        cross_value: Tensor,
        memory_mask: Tensor,
        form: StepWeights = "plain",
    ) -> None:
        self.weights: list[_LayerStep] = weights  # type: ignore[assignment]
        self.form = form  # how the step holds its matrices (step_weights)
        # The output projection in the same form, (weight, bias) for step_linear(form),
        # set by the model; None: the model's own module.
        self.output_weight: tuple | None = None
        self.key, self.value = key, value
        self.cross_key, self.cross_value = cross_key, cross_value
        self.memory_mask = memory_mask
        self.self_mask = torch.full_like(key[0, :1, :1, :, 0], float("-inf"))[None]
        self.position = torch.zeros(1, dtype=torch.long, device=key.device)  # (1,)
        self.offset = 0

    @property
    def max_len(self) -> int:
        return self.key.shape[3]

    def restart(self, cross_key: Tensor, cross_value: Tensor, memory_mask: Tensor) -> None:
        """Start again at position 0 with another source, in place (same shapes)."""
        self.cross_key.copy_(cross_key)
        self.cross_value.copy_(cross_value)
        self.memory_mask.copy_(memory_mask)
        # Slots past the position are masked, but a masked slot still multiplies its
        # zero weight with its value: old values must be finite, zeros are.
        self.key.zero_()
        self.value.zero_()
        self.self_mask.fill_(float("-inf"))
        self.position.zero_()
        self.offset = 0

    def reorder(self, index: Tensor, *, cross: bool = True) -> None:
        """Keep batch rows ``index`` (beam search), in place. ``cross=False`` leaves the
        source's keys and values as they are: right when ``index`` only moves rows among
        copies of the same source (the beams of one sentence)."""
        t = self.offset
        if t > 0:
            self.key[:, :, :, :t] = self.key[:, :, :, :t].index_select(1, index)
            self.value[:, :, :, :t] = self.value[:, :, :, :t].index_select(1, index)
        if cross:
            self.cross_key.copy_(self.cross_key.index_select(1, index))
            self.cross_value.copy_(self.cross_value.index_select(1, index))
            self.memory_mask.copy_(self.memory_mask.index_select(0, index))


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

    @property
    def supports_static_cache(self) -> bool:
        """Whether :meth:`step` can run this stack (every layer a plain
        :class:`DecoderLayer`; a wrapped layer goes through :meth:`forward` instead)."""
        return all(type(layer) is DecoderLayer for layer in self.layers)

    def cross_attention_cache(
        self, memory: Tensor, memory_key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer's cross-attention keys and values of ``memory``, and its mask for
        :meth:`step`. Shape: memory ``(b, s, d)``, mask ``(b, s)`` True = real token ->
        ``(n, b, h, s, dh)`` twice and ``(b, 1, 1, s)`` (additive: 0 or -inf, in the
        dtype of ``memory``)."""
        keys, values = [], []
        for layer in self.layers:
            attn = layer.cross_attn
            keys.append(attn._split_heads(attn.k_proj(memory)))  # (b, h, s, dh)
            values.append(attn._split_heads(attn.v_proj(memory)))
        b, s, _ = memory.shape
        mask = memory.new_zeros(b, 1, 1, s)
        if memory_key_padding_mask is not None:
            real = memory_key_padding_mask.to(torch.bool).reshape(b, 1, 1, s)
            mask = mask.masked_fill(~real, float("-inf"))
        return torch.stack(keys), torch.stack(values), mask

    def init_static_cache(
        self,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        max_len: int,
        *,
        quantize: str | None = None,
    ) -> StaticDecoderCache:
        """A :class:`StaticDecoderCache` for up to ``max_len`` new positions, with the
        cross-attention keys and values of ``memory`` projected. ``quantize="int8"``:
        the steps multiply by int8 copies of the weights (:mod:`qkv.quantize`; a CPU
        only), within a tolerance of the model's own.

        Shape: memory ``(b, s, d)``, memory_key_padding_mask ``(b, s)`` True = real token.
        """
        if not self.supports_static_cache:
            raise ValueError("a static cache needs plain DecoderLayer layers in the decoder")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        form = step_weights(memory.device, memory.dtype, quantize)
        cross_key, cross_value, mask = self.cross_attention_cache(memory, memory_key_padding_mask)
        n, b, heads, _, head_dim = cross_key.shape
        key = memory.new_zeros(n, b, heads, max_len, head_dim)
        value = memory.new_zeros(n, b, heads, max_len, head_dim)
        weights = kept_weights(
            self, form, lambda: [_layer_step_weights(layer, form) for layer in self.layers]
        )
        return StaticDecoderCache(weights, key, value, cross_key, cross_value, mask, form)

    def step(self, x: Tensor, cache: StaticDecoderCache) -> Tensor:
        """The stack on one new position per row with a :class:`StaticDecoderCache`:
        what :meth:`forward` computes for it with a :class:`DecoderCache`, without
        weights or checks. Writes the position's keys and values and advances
        ``cache.position`` and ``cache.offset`` by one.

        Shape: x ``(b, 1, d)`` (embedded, with its position) -> ``(b, 1, d)``.
        """
        if cache.offset >= cache.max_len:
            raise ValueError(f"the static cache holds {cache.max_len} positions, all used")
        position = cache.position
        self_mask = cache.self_mask.index_fill_(3, position, 0.0)  # (1, 1, 1, T)
        for i, weights in enumerate(cache.weights):
            x = _layer_step(
                x,
                weights,
                cache.key[i],
                cache.value[i],
                cache.cross_key[i],
                cache.cross_value[i],
                position,
                self_mask,
                cache.memory_mask,
            )
        position.add_(1)
        cache.offset += 1
        return self.norm(x)

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
