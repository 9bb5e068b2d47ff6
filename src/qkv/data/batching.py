"""Batches for sequence-to-sequence training: grouped by length, padded, masked.

Sentences of similar length go together so little of each batch is padding; a
batch holds at most ``max_tokens`` tokens (padding included), so long sentences
come in small batches and short ones in large. The order is a function of the
seed and the epoch only, so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.data.padding import pad_ids

__all__ = ["Seq2SeqBatch", "collate_pairs", "token_batches"]


def token_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    max_sentences: int | None = None,
) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` padded tokens.

    ``lengths[i]`` is the length of example ``i`` (for pairs: the longer side).
    With ``shuffle``, examples are ordered by length with random tie-breaks, and
    the batches themselves are shuffled, both from ``(seed, epoch)``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(
            f"{len(too_long)} examples are longer than max_tokens={max_tokens} "
            f"(e.g. index {too_long[0]} with {lengths[too_long[0]]} tokens)"
        )
    rng = random.Random(seed * 1_000_003 + epoch)
    noise = [rng.random() for _ in lengths] if shuffle else [0.0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], noise[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        full = max_sentences is not None and len(current) >= max_sentences
        if current and (longest_if_added * (len(current) + 1) > max_tokens or full):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@dataclass
class Seq2SeqBatch:
    """Padded ids for teacher forcing.

    ``tgt_in`` = ``[bos] + target``, ``tgt_out`` = ``target + [eos]``: the decoder
    reads ``tgt_in`` and predicts ``tgt_out`` one position ahead.

    Shape: src ``(b, k)``, tgt_in and tgt_out ``(b, q)``.
    """

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    pad_id: int = 0  # the id the three are padded with

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        return Seq2SeqBatch(
            self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.pad_id
        )

    @property
    def num_target_tokens(self) -> int:
        """Target tokens the loss counts: ``tgt_out`` without its padding."""
        return int((self.tgt_out != self.pad_id).sum())


def collate_pairs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int, bos_id: int, eos_id: int
) -> Seq2SeqBatch:
    """Pad (source ids, target ids) pairs into a :class:`Seq2SeqBatch`. The source
    gets an ``eos``; the target is shifted as described there."""
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    src = pad_ids([[*s, eos_id] for s, _ in pairs], pad_id)
    tgt_in = pad_ids([[bos_id, *t] for _, t in pairs], pad_id)
    tgt_out = pad_ids([[*t, eos_id] for _, t in pairs], pad_id)
    return Seq2SeqBatch(src, tgt_in, tgt_out, pad_id)
