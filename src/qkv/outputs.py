"""The one shape of what qkv's models return.

A model that predicts (the translator, BERT's heads, ViT) returns a
:class:`ModelOutput`: ``logits``; with ``labels=``, the mean ``loss`` and the
``num_targets`` it averages over (:mod:`qkv.losses`); and, in a field named for the
part of the model it comes from, the backbone's own output (hidden states, and the
attention weights of the layers asked for with ``need_weights``): ``encoder`` and
``decoder`` for the translator, ``bert`` for BERT's heads, ``encoder`` for ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ModelOutput"]


@dataclass(kw_only=True)
class ModelOutput:
    """``logits`` ``(..., C)``; ``loss`` ``()`` and ``num_targets`` ``()`` when labels
    were given, else ``None``."""

    logits: Tensor
    loss: Tensor | None = None
    num_targets: Tensor | None = None
