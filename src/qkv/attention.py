"""Attention, as the tutorials build it (docs/concepts.md), and multi-head attention.

- :func:`scaled_dot_product_attention`: ``softmax(Q Kᵀ · scale) V`` (Vaswani et al.
  2017, section 3.2.1). A fused path on ``torch.nn.functional.scaled_dot_product_attention``
  and a plain path that also returns the weights. The plain path is built from
  :func:`attention_scores` and :func:`attention_weights`, which ``qkv explain`` uses
  step by step.
- :class:`Attention`: the single-head ``Attn(X, X')`` of
  docs/concepts.md#attention-between-two-sequences, with learned ``Wq``, ``Wk``, ``Wv``.
- :class:`MultiHeadAttention`: section 3.2.2, self- and cross-attention, masks,
  per-head weights and a key/value cache for incremental decoding.

Masks follow the convention of :mod:`qkv.masks`: boolean, ``True`` = may attend.

Notation:
    b   batch size
    h   number of heads (``num_heads``)
    q   query length (target / decoder positions)
    k   key = value length (source / encoder positions)
    d   model width (``d_model``)
    dh  width of one head (``d_model // num_heads``)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.dropout import draws_own_masks, dropout
from qkv.masks import causal_mask, check_mask, combine_masks, expand_padding_mask

__all__ = [
    "Attention",
    "AttentionOutput",
    "KVCache",
    "MultiHeadAttention",
    "attention_scores",
    "attention_weights",
    "scaled_dot_product_attention",
]


class AttentionOutput(NamedTuple):
    """What attention returns: always two fields; ``weights`` is ``None`` unless asked for."""

    output: Tensor
    weights: Tensor | None


def attention_scores(query: Tensor, key: Tensor, scale: float | None = None) -> Tensor:
    """Compatibility of every query with every key: ``Q Kᵀ · scale``.

    The default scale ``1/sqrt(d_k)`` keeps the dot products at unit variance when
    query and key entries do, so the softmax does not saturate and its gradients do
    not vanish (section 3.2.1; docs/concepts.md#scaled-dot-product-attention). ``scale=1``
    gives the plain dot product of docs/concepts.md#self-attention-worked-example.

    Shape: query ``(..., q, d_k)``, key ``(..., k, d_k)`` -> ``(..., q, k)``.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return (query @ key.transpose(-2, -1)) * scale  # (..., q, k)


def attention_weights(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax over keys; masked keys get weight 0, and a query with every key
    masked gets all zeros (not NaN).

    Shape: ``(..., q, k)`` -> ``(..., q, k)``; each row sums to 1 over its allowed keys.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    # A fully masked row is softmax(-inf, ..., -inf) = NaN; every entry of such a
    # row is masked, so this fill turns it into zeros (and keeps gradients finite).
    return weights.masked_fill(~mask, 0.0)


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            "query, key and value need at least 2 dims (..., length, width), got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query width ({query.shape[-1]}) must equal key width ({key.shape[-1]}): "
            f"query {tuple(query.shape)}, key {tuple(key.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length, got key {tuple(key.shape)} "
            f"and value {tuple(value.shape)}"
        )


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> AttentionOutput:
    """``softmax(Q Kᵀ · scale) V`` with an optional boolean mask (``True`` = may attend).

    With ``need_weights=False`` this runs the fused kernel
    (``torch.nn.functional.scaled_dot_product_attention``), which never builds the
    ``q × k`` weight matrix; with ``need_weights=True`` it runs the plain path and
    returns the weights (before dropout). Both give the same output. Dropout on a CPU
    also takes the plain path: torch's kernel builds the weights for it anyway and draws
    its masks one float at a time, :func:`qkv.dropout.dropout` more cheaply.

    Args:
        query, key, value: ``(..., q, d_k)``, ``(..., k, d_k)``, ``(..., k, d_v)``.
        mask: boolean, broadcastable to ``(..., q, k)``.
        scale: multiplies the scores; default ``1/sqrt(d_k)``; ``1.0`` is unscaled.
        is_causal: add a causal mask (query ``i`` sees keys up to its own position,
            aligned to the end when ``k > q``, as with a key/value cache).
        dropout_p: dropout on the weights (only pass it while training).
        need_weights: return the weights ``(..., q, k)`` as well.

    Shape:
        output ``(..., q, d_v)``; weights ``(..., q, k)`` or ``None``.
    """
    _check_qkv(query, key, value)
    if not 0.0 <= dropout_p < 1.0:
        # torch's own message for a negative value blames the kernel, not the argument.
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    q_len, k_len = query.shape[-2], key.shape[-2]
    if mask is not None:
        check_mask(mask, q_len, k_len, tuple(query.shape[:-2]))
    fused = not need_weights and not (dropout_p > 0 and draws_own_masks(query))
    if is_causal:
        if q_len == k_len and mask is None and fused:
            # The fused kernel builds its own (top-left) causal mask; it is only
            # ours when q == k.
            out = F.scaled_dot_product_attention(
                query, key, value, dropout_p=dropout_p, is_causal=True, scale=scale
            )
            return AttentionOutput(out, None)
        mask = combine_masks(mask, causal_mask(q_len, k_len, device=query.device))

    if fused:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout_p, scale=scale
        )
        return AttentionOutput(out, None)

    weights = attention_weights(attention_scores(query, key, scale), mask)  # (..., q, k)
    dropped = dropout(weights, dropout_p)
    return AttentionOutput(dropped @ value, weights)  # (..., q, d_v)


class Attention(nn.Module):
    """Single-head attention ``Attn(X, X')`` (docs/concepts.md#attention-between-two-sequences).

    Keys and values come from ``x`` (encoder states ``h_i``), queries from
    ``x_prime`` (decoder states ``s_j``): ``k_i = Wk h_i``, ``v_i = Wv h_i``,
    ``q_j = Wq s_j``, ``α_:j = softmax(Kᵀ q_j · scale)``, ``c_j = Σ_i α_ij v_i``.
    One context vector per decoder input. Called with ``x`` alone it is
    self-attention ``Attn(X, X)``.

    The tutorial writes ``softmax(Kᵀ q_j)`` without a scale; pass ``scale=1.0`` for
    that, the default is the Transformer's ``1/sqrt(d_k)``.

    Args:
        d_in: width of the encoder states ``x``.
        d_k: width of queries and keys.
        d_v: width of values and contexts (default ``d_k``).
        d_in_prime: width of the decoder states ``x_prime`` (default ``d_in``).
        bias: add biases to the projections (the tutorial has none).
        scale: score scale; ``None`` = ``1/sqrt(d_k)``.
    """

    def __init__(
        self,
        d_in: int,
        d_k: int,
        d_v: int | None = None,
        *,
        d_in_prime: int | None = None,
        bias: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        d_v = d_k if d_v is None else d_v
        d_in_prime = d_in if d_in_prime is None else d_in_prime
        self.q_proj = nn.Linear(d_in_prime, d_k, bias=bias)  # Wq
        self.k_proj = nn.Linear(d_in, d_k, bias=bias)  # Wk
        self.v_proj = nn.Linear(d_in, d_v, bias=bias)  # Wv
        self.scale = scale

    def forward(
        self, x: Tensor, x_prime: Tensor | None = None, mask: Tensor | None = None
    ) -> AttentionOutput:
        """Contexts and weights.

        Shape:
            x ``(b, m, d_in)`` or ``(m, d_in)``; x_prime ``(b, t, d_in_prime)`` or
            ``(t, d_in_prime)``, default ``x``; mask broadcastable to ``(b, t, m)``.
            Returns output ``(b, t, d_v)`` (one context ``c_j`` per ``s_j``) and
            weights ``(b, t, m)`` (row ``j`` is ``α_:j``).
        """
        x_prime = x if x_prime is None else x_prime
        for name, tensor, layer in (("x", x, self.k_proj), ("x_prime", x_prime, self.q_proj)):
            if tensor.shape[-1] != layer.in_features:
                raise ValueError(
                    f"{name} must have width {layer.in_features}, got shape {tuple(tensor.shape)}"
                )
        query = self.q_proj(x_prime)  # (b, t, d_k)
        key = self.k_proj(x)  # (b, m, d_k)
        value = self.v_proj(x)  # (b, m, d_v)
        return scaled_dot_product_attention(
            query, key, value, mask, scale=self.scale, need_weights=True
        )


class KVCache:
    """Projected keys and values of one attention module, kept between decoding steps.

    The caller owns it; the module reads and extends it, nothing is stored on the
    module. ``static=True`` is for cross-attention: the encoder's keys and values
    are projected at the first step and reused after.

    Shape: ``key``, ``value`` ``(b, h, k, dh)``.
    """

    def __init__(self, static: bool = False) -> None:
        self.static = static
        self.key: Tensor | None = None
        self.value: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.key is None else self.key.shape[-2]

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store (static) or append (incremental) new keys/values; return all of them."""
        if self.key is None or self.value is None or self.static:
            self.key, self.value = key, value
        else:
            self.key = torch.cat([self.key, key], dim=-2)  # (b, h, k_old + k_new, dh)
            self.value = torch.cat([self.value, value], dim=-2)
        return self.key, self.value

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search: follow the surviving hypotheses)."""
        if self.key is not None and self.value is not None:
            self.key = self.key.index_select(0, index)
            self.value = self.value.index_select(0, index)


def weights_version(tensors: Iterable[Tensor]) -> tuple[tuple[Any, ...], ...]:
    """What identifies the current values of ``tensors`` without reading them: each one's
    address, in-place version counter, dtype and device. It changes when a tensor is
    replaced (``.to()``, new storage) or written in place (``load_state_dict``, an
    optimiser step), so whatever was derived from the weights (stacked, packed, captured)
    is rebuilt exactly when it must be."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (section 3.2.2): ``num_heads`` attentions on
    ``d_model / num_heads``-wide projections, concatenated and projected.

    Self-attention: ``mha(x)``. Cross-attention: ``mha(x, memory)`` (queries from
    ``x``, keys and values from ``memory``).

    Args:
        d_model: model width; input and output width.
        num_heads: number of heads; must divide ``d_model``.
        dropout: dropout on the attention weights while training. On the CPU a
            non-zero value makes the fused kernel fall back to its ``q × k`` path.
        bias: biases on the four projections.
        fused: use the fused kernel when weights are not asked for (default
            ``True``); ``False`` always runs the plain path. Kept as the attribute
            ``fused``, a per-instance switch (as timm's ``fused_attn``); models set it
            from their configuration's ``fused_attention``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model ({d_model}) and num_heads ({num_heads}) must be positive")
        if d_model % num_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.fused = fused
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # The stacked q/k/v weights of the last inference call and what they were
        # built from (see stacked_qkv); not a parameter, not saved.
        self._stacked: tuple[tuple[Any, ...], Tensor, Tensor | None] | None = None

    def stacked_qkv(self) -> tuple[Tensor, Tensor | None]:
        """The q, k and v weights (and biases) stacked into one ``(3d, d)`` matrix.

        With gradients enabled they are built anew at every call (the gradient flows
        back through the concatenation). Without gradients they are kept between
        calls: rebuilding them copies every projection per layer and call, which costs
        as much as a small batch's attention. They are rebuilt when a weight changes:
        replaced (``.to()``, a new tensor) or written in place (``load_state_dict``, an
        optimiser step: they bump the tensor's version counter).
        """
        projections = (self.q_proj, self.k_proj, self.v_proj)
        tensors = [p.weight for p in projections]
        if self.q_proj.bias is not None:
            tensors += [p.bias for p in projections]
        if torch.is_grad_enabled():
            self._stacked = None
            weight = torch.cat(tensors[:3])
            return weight, torch.cat(tensors[3:]) if len(tensors) > 3 else None
        key = weights_version(tensors)
        if self._stacked is None or self._stacked[0] != key:
            with torch.no_grad():
                weight = torch.cat(tensors[:3])
                bias = torch.cat(tensors[3:]) if len(tensors) > 3 else None
            self._stacked = (key, weight, bias)
        return self._stacked[1], self._stacked[2]

    def _split_heads(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, L, dh)

    def _project_qkv(self, query: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        tokens = query.shape[0] * query.shape[1]
        # Self-attention on many tokens: one matmul against the stacked weights is
        # faster than three (fewer, larger operations). On a few tokens (decoding one
        # step at a time) copying the weights would cost as much as the matmuls
        # themselves, so those take the three projections below. While compiling or
        # exporting the choice is left out: on a dynamic shape it would become a
        # guard, and the program would fail on batches on the other side of it; the
        # compiler can fuse the three projections itself.
        if memory is None and not torch.compiler.is_compiling() and tokens >= self.d_model:
            weight, bias = self.stacked_qkv()  # (3d, d), (3d,)
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)  # 3 × (b, q, d)
        else:
            source = query if memory is None else memory
            q, k, v = self.q_proj(query), self.k_proj(source), self.v_proj(source)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> AttentionOutput:
        """Attend from ``query`` to ``memory`` (or to ``query`` itself).

        Args:
            query: ``(b, q, d)``.
            memory: ``(b, k, d)`` for cross-attention; ``None`` for self-attention.
            mask: boolean, broadcastable to ``(b, h, q, k)``, ``True`` = may attend.
            key_padding_mask: ``(b, k)`` boolean, ``True`` = real token (k counts
                cached keys too).
            is_causal: query ``i`` attends keys up to its own position.
            need_weights: also return the weights per head.
            cache: keys/values of earlier steps; extended in place.

        Shape:
            output ``(b, q, d)``; weights ``(b, h, q, k)`` or ``None``.
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must have shape (batch, q_len, d_model={self.d_model}), "
                f"got {tuple(query.shape)}"
            )
        if memory is not None and (
            memory.dim() != 3
            or memory.shape[-1] != self.d_model
            or memory.shape[0] != query.shape[0]
        ):
            raise ValueError(
                f"memory must have shape (batch={query.shape[0]}, k_len, d_model={self.d_model}), "
                f"got {tuple(memory.shape)}"
            )
        if cache is not None and cache.static and cache.key is not None:
            q = self._split_heads(self.q_proj(query))  # (b, h, q, dh)
            k, v = cache.key, cache.value  # projected at the first step
        else:
            q, k, v = self._project_qkv(query, memory)  # (b, h, q|k, dh)
            if cache is not None:
                k, v = cache.update(k, v)  # (b, h, k_total, dh)

        batch, q_len, k_len = query.shape[0], q.shape[-2], k.shape[-2]
        if mask is not None:
            check_mask(mask, q_len, k_len, (batch, self.num_heads))
        if key_padding_mask is not None:
            mask = combine_masks(mask, expand_padding_mask(key_padding_mask, batch, k_len))
        if is_causal and q_len == 1:
            is_causal = False  # the newest token may see every cached key

        out, weights = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights or not self.fused,
        )
        out = out.transpose(1, 2).reshape(batch, q_len, self.d_model)  # (b, q, d)
        return AttentionOutput(self.out_proj(out), weights if need_weights else None)
