"""Batches to losses in the engine's form: ``(model, batch) -> (summed loss, targets)``.

Every model computes its own loss from ``labels=`` (:mod:`qkv.losses`); what is left
here is which field of a batch goes to which argument.
"""

from __future__ import annotations

from torch import Tensor, nn

from qkv.data.batching import Seq2SeqBatch
from qkv.losses import summed

__all__ = ["seq2seq_loss"]


def seq2seq_loss(
    model: nn.Module, batch: Seq2SeqBatch, *, label_smoothing: float = 0.1
) -> tuple[Tensor, Tensor]:
    """The translator's loss on a batch: ``tgt_out`` are the labels of ``tgt_in``;
    padding contributes nothing (see :meth:`qkv.models.Transformer.forward`)."""
    output = model(batch.src, batch.tgt_in, labels=batch.tgt_out, label_smoothing=label_smoothing)
    return summed(output)
