"""Masked-language-model batches: BERT's masking (Devlin et al. 2019, section 3.1, task 1,
and appendix A.1) and packing text into fixed-length sequences.

The masking: choose 15% of the tokens at random, never a special token (``[CLS]``,
``[SEP]``, ``[PAD]`` …); the model must predict the original token at each chosen
position. Of the chosen tokens, 80% are replaced by ``[MASK]``, 10% by a random
token and 10% are left unchanged. Why not always ``[MASK]``: ``[MASK]`` never
appears when fine-tuning, so a model that only saw it would learn that unmasked
tokens need no representation of their own; the random and unchanged ones force
it to keep one for every token. The random token is drawn uniformly from the
non-special vocabulary (Hugging Face's collator draws from all of it, specials too).

Each token is chosen independently with probability 0.15 (a Bernoulli draw, as in
the reference code's sampling and Hugging Face's collator), so a short sequence may
have none chosen; the loss is summed over the chosen tokens of the whole batch.

Labels follow the ignore-index convention of ``F.cross_entropy``: the original id
at a chosen position, ``-100`` everywhere else. ``masked_positions`` marks the same
positions as a boolean tensor, so :class:`~qkv.models.bert.BertForMaskedLM` projects
only those rows onto the vocabulary (``d × V`` per row is most of the head's cost).

Packing (:func:`pack_sequences`): documents are concatenated, with ``[SEP]``
between them, and cut into windows of ``max_length - 2`` tokens, each wrapped in
``[CLS] … [SEP]``: RoBERTa's "full-sentences" input (Liu et al. 2019, section 4.2),
without the next-sentence task. Almost no position is padding, so no compute is
spent on it.

Notation:
    b   batch size
    L   sequence length
    V   vocabulary size
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from qkv.data.padding import pad_ids_with_mask
from qkv.losses import IGNORE_INDEX

__all__ = [
    "MLMBatch",
    "MLMCollator",
    "MaskingVocabulary",
    "mask_tokens",
    "pack_sequences",
    "pad_sequences",
]


class MaskingVocabulary(Protocol):
    """What masking needs of a tokenizer; :class:`~qkv.data.wordpiece.WordPieceTokenizer`
    has it."""

    @property
    def mask_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def special_ids(self) -> Sequence[int]: ...

    @property
    def vocab_size(self) -> int: ...


@dataclass
class MLMBatch:
    """A masked batch.

    Shape: every field ``(b, L)``. ``input_ids`` after masking; ``attention_mask``
    boolean, ``True`` = real token; ``labels`` the original id where
    ``masked_positions`` is ``True``, ``-100`` elsewhere.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    masked_positions: Tensor

    def to(self, device: str | torch.device) -> MLMBatch:
        return MLMBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.masked_positions.to(device),
        )

    @property
    def num_masked(self) -> int:
        return int(self.masked_positions.sum())


def mask_tokens(
    input_ids: Tensor,
    *,
    mask_id: int,
    special_ids: Sequence[int],
    vocab_size: int,
    generator: torch.Generator,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """BERT's masking of a batch of token ids (see the module docstring).

    Args:
        input_ids: token ids, padding included (the pad id must be in ``special_ids``).
        mask_id: id of ``[MASK]``.
        special_ids: ids never chosen and never used as a random replacement.
        vocab_size: ``V``; random replacements are drawn from ``[0, V)`` minus the specials.
        generator: the source of randomness: the same generator state gives the same masks.
        mlm_probability: chance of choosing each eligible token (0.15).
        mask_fraction, random_fraction: of the chosen, the share set to ``[MASK]`` (0.8)
            and to a random token (0.1); the rest (0.1) stay unchanged.

    Returns:
        ``(masked_ids, labels, masked_positions)``, each ``(b, L)``.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError(
            f"mask_fraction ({mask_fraction}) and random_fraction ({random_fraction}) must be "
            "non-negative and sum to at most 1"
        )
    if mask_id not in special_ids:
        raise ValueError(f"mask_id ({mask_id}) must be one of special_ids {list(special_ids)}")
    specials = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype)
    eligible = ~torch.isin(input_ids, specials)  # (b, L)
    # Every draw covers the whole (b, L) grid, so the random stream consumed does not
    # depend on the data: a given generator state always gives the same decisions.
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & eligible
    action = torch.rand(input_ids.shape, generator=generator)  # (b, L)
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    is_special[specials] = True
    candidates = (~is_special).nonzero().squeeze(1)  # (V - number of specials,)
    random_ids = candidates[
        torch.randint(len(candidates), input_ids.shape, generator=generator)
    ]  # (b, L)
    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids, masked)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return masked, labels, chosen


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad lists of ids to the longest: ``(ids, attention_mask)``, each ``(b, L)``."""
    return pad_ids_with_mask(sequences, pad_id)


class MLMCollator:
    """Pads sequences (already holding ``[CLS]``/``[SEP]``) and masks them.

    Args:
        mask_id, pad_id, special_ids, vocab_size: from the tokenizer
            (:meth:`from_tokenizer`).
        mlm_probability, mask_fraction, random_fraction: see :func:`mask_tokens`.
        seed: seeds the collator's own ``torch.Generator``, used when a call passes none.
    """

    def __init__(
        self,
        *,
        mask_id: int,
        pad_id: int,
        special_ids: Sequence[int],
        vocab_size: int,
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        if pad_id not in special_ids:
            raise ValueError(f"pad_id ({pad_id}) must be one of special_ids {list(special_ids)}")
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.special_ids = tuple(special_ids)
        self.vocab_size = vocab_size
        self.mlm_probability = mlm_probability
        self.mask_fraction = mask_fraction
        self.random_fraction = random_fraction
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: MaskingVocabulary,
        *,
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        seed: int = 0,
    ) -> MLMCollator:
        """From a :class:`~qkv.data.wordpiece.WordPieceTokenizer` (or anything with
        ``mask_id``, ``pad_id``, ``special_ids`` and ``vocab_size``)."""
        return cls(
            mask_id=tokenizer.mask_id,
            pad_id=tokenizer.pad_id,
            special_ids=tokenizer.special_ids,
            vocab_size=tokenizer.vocab_size,
            mlm_probability=mlm_probability,
            mask_fraction=mask_fraction,
            random_fraction=random_fraction,
            seed=seed,
        )

    def __call__(
        self, sequences: Sequence[Sequence[int]], generator: torch.Generator | None = None
    ) -> MLMBatch:
        """Shape: ``b`` sequences, the longest ``L`` tokens -> :class:`MLMBatch` of ``(b, L)``."""
        ids, attention_mask = pad_sequences(sequences, self.pad_id)
        masked, labels, chosen = mask_tokens(
            ids,
            mask_id=self.mask_id,
            special_ids=self.special_ids,
            vocab_size=self.vocab_size,
            generator=self.generator if generator is None else generator,
            mlm_probability=self.mlm_probability,
            mask_fraction=self.mask_fraction,
            random_fraction=self.random_fraction,
        )
        return MLMBatch(masked, attention_mask, labels, chosen)


def pack_sequences(
    documents: Iterable[Sequence[int]], max_length: int, *, cls_id: int, sep_id: int
) -> list[list[int]]:
    """Concatenate tokenized documents (``[SEP]`` between them) and cut the stream into
    ``[CLS] window [SEP]`` sequences of ``max_length`` tokens; the last may be shorter.

    >>> pack_sequences([[5, 6, 7], [8, 9]], 5, cls_id=1, sep_id=2)
    [[1, 5, 6, 7, 2], [1, 2, 8, 9, 2]]
    """
    if max_length < 3:
        raise ValueError(f"max_length ({max_length}) must leave room beside [CLS] and [SEP]")
    window = max_length - 2
    stream: list[int] = []
    for document in documents:
        if document:
            if stream:
                stream.append(sep_id)
            stream.extend(document)
    return [[cls_id, *stream[i : i + window], sep_id] for i in range(0, len(stream), window)]
