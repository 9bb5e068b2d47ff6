"""Token embeddings shared by every qkv model."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TokenEmbedding", "check_token_dtype", "check_token_ids"]


def check_token_dtype(ids: Tensor, name: str = "token ids") -> None:
    """Raise ``ValueError`` unless ``ids`` is an integer tensor. Reads only the dtype,
    so it costs nothing and never waits for the device: forward passes always run it."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")


def check_token_ids(ids: Tensor, vocab_size: int, name: str = "token ids") -> None:
    """Raise ``ValueError`` unless ``ids`` is an integer tensor with values in ``[0, vocab_size)``.

    ``nn.Embedding`` fails on an out-of-range id with an opaque index error (or a
    device-side assert on CUDA); this says which id and which vocabulary. Reading the
    values waits for the device and breaks a ``torch.compile`` graph, so models run it
    only when asked (``validate=True``).
    """
    check_token_dtype(ids, name)
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contain {bad}, outside the vocabulary [0, {vocab_size})")


class TokenEmbedding(nn.Module):
    """Token id -> vector, optionally multiplied by ``sqrt(d_model)``.

    The 2017 Transformer scales (section 3.4) so that embeddings, initialised with
    standard deviation ``d_model^-0.5`` and tied to the output projection, reach
    the same magnitude as the positional encoding. BERT and ViT do not scale.

    Shape: ``(b, L)`` integer ids -> ``(b, L, d_model)``.
    """

    def __init__(
        self, vocab_size: int, d_model: int, *, padding_idx: int | None = None, scale: bool = False
    ) -> None:
        super().__init__()
        if vocab_size < 1 or d_model < 1:
            raise ValueError(f"vocab_size ({vocab_size}) and d_model ({d_model}) must be positive")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.multiplier = math.sqrt(d_model) if scale else 1.0
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, ids: Tensor, *, validate: bool = False) -> Tensor:
        """``validate``: also check that every id is in the vocabulary
        (:func:`check_token_ids`); otherwise only the dtype is checked."""
        if validate:
            check_token_ids(ids, self.vocab_size)
        else:
            check_token_dtype(ids)
        x = self.embedding(ids)  # (b, L, d)
        return x * self.multiplier if self.multiplier != 1.0 else x
