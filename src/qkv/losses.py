"""The one loss convention of qkv's models.

Every model that predicts classes (a vocabulary for the translator and the masked
LM, labels for the classifiers, classes for ViT) takes ``labels=`` in ``forward``
and returns, in its output, ``loss``: the *mean* cross-entropy over the targets that
count (as ``transformers`` and ``timm`` users expect), and ``num_targets``: how many
there were. Targets labelled :data:`IGNORE_INDEX` (padding, unmasked positions,
word-piece continuations) count for nothing.

Why the count too: the training engine (:mod:`qkv.train.engine`) averages over every
target of every micro-batch of a step on every process, so it needs each batch's
*sum*, ``loss · num_targets`` (:func:`summed`), not its mean.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "HasLoss", "cross_entropy", "summed"]

IGNORE_INDEX = -100  # label of positions that carry no loss (PyTorch's and Hugging Face's too)


def cross_entropy(
    logits: Tensor, labels: Tensor, *, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``logits`` against ``labels`` and the number of labels
    that are not :data:`IGNORE_INDEX`.

    The log-softmax runs in float32 whatever the logits' dtype: in bf16 it loses the
    small probabilities. A batch with no target gives a loss of 0, not NaN.

    Shape: logits ``(..., C)``, labels ``(...)`` -> loss ``()``, num_targets ``()``.
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # (N, C)
        labels.reshape(-1),  # (N,)
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), count


class HasLoss(Protocol):
    loss: Tensor | None
    num_targets: Tensor | None


def summed(output: HasLoss) -> tuple[Tensor, Tensor]:
    """``(loss · num_targets, num_targets)`` of a model output: the training engine's
    ``loss_fn`` form."""
    if output.loss is None or output.num_targets is None:
        raise ValueError("the model returned no loss: pass labels= to its forward")
    return output.loss * output.num_targets, output.num_targets
