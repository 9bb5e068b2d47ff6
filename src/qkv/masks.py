"""Every attention mask in qkv is built here.

The convention, stated once for the whole project:

    A mask is a boolean tensor, ``True`` where a query MAY attend to a key,
    broadcastable to ``(batch, num_heads, q_len, k_len)``.

It is the polarity of ``torch.nn.functional.scaled_dot_product_attention``, so
masks go to the fused kernel untouched. ``torch.nn.MultiheadAttention`` uses the
opposite polarity (``True`` = ignore); tests convert at that boundary.

Notation: b = batch, h = heads, q = query length, k = key length.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "causal_mask",
    "check_mask",
    "combine_masks",
    "expand_padding_mask",
    "padding_mask_from_ids",
]


def causal_mask(q_len: int, k_len: int | None = None, device: torch.device | None = None) -> Tensor:
    """Lower-triangular mask, aligned so the last query sees the last key.

    With ``k_len > q_len`` the queries are the *newest* ``q_len`` positions of a
    sequence of ``k_len`` (incremental decoding with a key/value cache), so query
    ``i`` may attend keys ``0 .. k_len - q_len + i``.

    Shape: ``(q_len, k_len)``.
    """
    k_len = q_len if k_len is None else k_len
    if q_len < 1 or k_len < q_len:
        raise ValueError(f"causal_mask needs 1 <= q_len <= k_len, got q_len={q_len}, k_len={k_len}")
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def padding_mask_from_ids(ids: Tensor, pad_id: int) -> Tensor:
    """``True`` at real tokens, ``False`` at padding. Shape: ``(b, k)`` like ``ids``."""
    return ids != pad_id


def expand_padding_mask(mask: Tensor, batch: int, k_len: int) -> Tensor:
    """Check a ``(b, k)`` key padding mask and lift it to ``(b, 1, 1, k)``."""
    if mask.dtype != torch.bool:
        raise ValueError(
            f"key_padding_mask must be torch.bool (True = real token), got {mask.dtype}"
        )
    if tuple(mask.shape) != (batch, k_len):
        raise ValueError(
            f"key_padding_mask must have shape (batch, k_len) = {(batch, k_len)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask[:, None, None, :]  # (b, 1, 1, k)


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of the given masks (``None`` means "no restriction")."""
    result: Tensor | None = None
    for mask in masks:
        if mask is None:
            continue
        result = mask if result is None else result & mask
    return result


def check_mask(mask: Tensor, q_len: int, k_len: int, batch_shape: tuple[int, ...] = ()) -> None:
    """Raise ``ValueError`` unless ``mask`` is boolean and broadcastable to
    ``(*batch_shape, q_len, k_len)``."""
    if mask.dtype != torch.bool:
        raise ValueError(
            f"attention mask must be torch.bool (True = may attend), got {mask.dtype}; "
            "qkv does not take additive float masks"
        )
    target = (*batch_shape, q_len, k_len)
    ok = 2 <= mask.dim() <= len(target)
    if ok:
        for have, want in zip(reversed(mask.shape), reversed(target), strict=False):
            if have not in (1, want):
                ok = False
                break
    if not ok:
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not broadcast to "
            f"(batch..., q_len, k_len) = {target}"
        )
