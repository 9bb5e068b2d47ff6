"""Optimizer parameter groups shared by the tasks.

Weight decay pulls weights towards zero. That is a prior on the matrices of the
linear layers; on biases, LayerNorm gains and offsets, and the tokens and position
tables a model adds to its input (ViT's class token and position embeddings), it only
fights the values they need, so BERT (Devlin et al. 2019, its released code) and ViT
(timm, DeiT) leave them out. A model names such tables itself, as timm's models do, in
a ``no_weight_decay()`` method returning parameter names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["parameter_groups"]


def parameter_groups(
    model: nn.Module, weight_decay: float, *, no_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on the matrices (parameters with 2 or more dims),
    none on the 1-D ones (biases, norms), nor on the parameters the model's
    ``no_weight_decay()`` names, nor on those named in ``no_decay`` (exact names or
    name suffixes, e.g. ``"cls_token"``)."""
    hook = getattr(model, "no_weight_decay", None)
    skip = (*no_decay, *(hook() if callable(hook) else ()))
    decay, keep = [], []
    for name, parameter in model.named_parameters():
        exempt = parameter.dim() < 2 or any(name == s or name.endswith("." + s) for s in skip)
        (keep if exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]
