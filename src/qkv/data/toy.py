"""Toy sequence tasks for tests and first experiments: copy and reverse.

A model that cannot learn to copy a short random sequence has a bug; these tasks
train in seconds and show it (as in the Annotated Transformer).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from qkv.data.batching import Seq2SeqBatch, collate_pairs

__all__ = ["FIRST_SYMBOL", "toy_batches", "toy_pairs"]

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3  # symbols are FIRST_SYMBOL .. vocab_size - 1


def toy_pairs(
    n: int,
    *,
    vocab_size: int,
    min_len: int = 3,
    max_len: int = 10,
    task: Literal["copy", "reverse"] = "copy",
    seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
    """``n`` (source, target) pairs of random symbols; target = source or reversed."""
    if vocab_size <= FIRST_SYMBOL:
        raise ValueError(f"vocab_size must exceed {FIRST_SYMBOL}, got {vocab_size}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [
            rng.randrange(FIRST_SYMBOL, vocab_size) for _ in range(rng.randint(min_len, max_len))
        ]
        pairs.append((src, src[::-1] if task == "reverse" else list(src)))
    return pairs


def toy_batches(
    *,
    vocab_size: int,
    batch_size: int,
    batches_per_epoch: int,
    task: Literal["copy", "reverse"] = "copy",
    max_len: int = 10,
    seed: int = 0,
) -> Callable[[int], list[Seq2SeqBatch]]:
    """``epoch -> batches``, fresh random pairs per epoch, reproducible from the seed."""

    def batches(epoch: int) -> list[Seq2SeqBatch]:
        pairs = toy_pairs(
            batch_size * batches_per_epoch,
            vocab_size=vocab_size,
            max_len=max_len,
            task=task,
            seed=seed * 7919 + epoch,
        )
        return [
            collate_pairs(pairs[i : i + batch_size], pad_id=PAD, bos_id=BOS, eos_id=EOS)
            for i in range(0, len(pairs), batch_size)
        ]

    return batches
