"""The one shape of what qkv's models return.

A model that predicts (the translator, BERT's heads, ViT) returns a
:class:`ModelOutput`: ``logits``; with ``labels=``, the mean ``loss`` and the
``num_targets`` it averages over (:mod:`qkv.losses`); and, in a field named for the
part of the model it comes from, the backbone's own output (hidden states, and the
attention weights of the layers asked for with ``need_weights``): ``encoder`` and
``decoder`` for the translator, ``bert`` for BERT's heads, ``encoder`` for ViT.

Every output dataclass is decorated with :func:`export_output`, which registers it as
a pytree node, so that ``torch.export`` and ``torch.compile`` can return it (fields
that are ``None`` included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch.export
from torch import Tensor

__all__ = ["ModelOutput", "export_output"]

T = TypeVar("T", bound=type)


def export_output(cls: T) -> T:
    """Register the dataclass ``cls`` as a pytree node (put it above ``@dataclass``).

    ``torch.export`` flattens what a model returns into tensors and rebuilds it from a
    tree spec; a class that is not registered cannot be returned from an exported
    program. The serialized name is the import path, so saved programs load again.
    Subclasses are not registered by their parent's registration: decorate each.
    """
    name = f"{cls.__module__}.{cls.__qualname__}"
    torch.export.register_dataclass(cls, serialized_type_name=name)
    return cls


@export_output
@dataclass(kw_only=True)
class ModelOutput:
    """``logits`` ``(..., C)``; ``loss`` ``()`` and ``num_targets`` ``()`` when labels
    were given, else ``None``."""

    logits: Tensor
    loss: Tensor | None = None
    num_targets: Tensor | None = None
