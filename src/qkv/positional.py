"""Positional encodings added to token embeddings (Vaswani et al. 2017, section 3.5).

Attention by itself is blind to order: permuting the inputs permutes the outputs.
Adding a vector that depends on the position gives the model the order back.

- :class:`SinusoidalPositionalEncoding`: the paper's fixed sin/cos,
  ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(...)``; or, in
  Marian's layout, the same values with the sines in the first half of the channels
  and the cosines in the second.
- :class:`LearnedPositionalEmbedding`: one trained vector per position (BERT, ViT).

Both take ``(b, L, d)`` and an ``offset`` (the position of the first row, for
incremental decoding) and return the input plus the encoding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["LearnedPositionalEmbedding", "SinusoidalPositionalEncoding", "positional_encoding"]


def _check_range(x: Tensor, offset: int, d_model: int, max_len: int) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"expected input of shape (batch, seq_len, d_model={d_model}), got {tuple(x.shape)}"
        )
    if offset < 0 or offset + x.shape[1] > max_len:
        raise ValueError(
            f"positions {offset}..{offset + x.shape[1] - 1} exceed the maximum length "
            f"{max_len} of the positional encoding; build it with a larger max_len"
        )


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos positional encoding; no parameters. ``layout``: see
    :func:`positional_encoding`.

    Shape: ``(b, L, d)`` -> ``(b, L, d)``.
    """

    def __init__(
        self,
        d_model: int,
        max_len: int = 5000,
        *,
        layout: Literal["interleaved", "halves"] = "interleaved",
    ) -> None:
        super().__init__()
        if d_model % 2 != 0:
            raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
        self.d_model = d_model
        self.max_len = max_len
        self.layout = layout
        # Not persistent: it is a function of (max_len, d_model), not a weight.
        self.register_buffer(
            "encoding", positional_encoding(max_len, d_model, layout=layout), persistent=False
        )

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_range(x, offset, self.d_model, self.max_len)
        return x + self.encoding[offset : offset + x.shape[1]].to(x.dtype)  # (b, L, d)


def positional_encoding(
    max_len: int, d_model: int, *, layout: Literal["interleaved", "halves"] = "interleaved"
) -> Tensor:
    """The paper's table: row ``pos``, columns ``2i`` (sin) and ``2i+1`` (cos); with
    ``layout="halves"`` (Marian's) columns ``i`` (sin) and ``d/2 + i`` (cos).

    Shape: ``(max_len, d_model)``.
    """
    if layout not in ("interleaved", "halves"):
        raise ValueError(f"layout must be 'interleaved' or 'halves', got {layout!r}")
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
    # 1 / 10000^(2i/d), computed in float64 so long tables stay exact to float32.
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model)
    )  # (d/2,)
    angles = position * inv_freq  # (L, d/2)
    if layout == "halves":
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position, up to ``max_len``.

    Shape: ``(b, L, d)`` -> ``(b, L, d)``.
    """

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_range(x, offset, self.d_model, self.max_len)
        return x + self.embedding.weight[offset : offset + x.shape[1]]  # (b, L, d)
