"""Activation checkpointing: keep less of the forward pass for the backward pass.

A layer's backward needs the activations of its forward (attention inputs and
weights, the feed-forward's hidden layer, dropout masks). Checkpointing a layer keeps
only its input and recomputes the rest during the backward pass: memory for
activations falls from every layer's to one layer's at a time plus the layer inputs,
for about one more forward pass of compute.

:func:`checkpoint_layers` applies it from outside the models: each
:class:`~qkv.layers.EncoderLayer` and :class:`~qkv.layers.DecoderLayer` of a model (the
translator's stacks, BERT's and ViT's encoders are all built from them) gets, as an
attribute of the instance, a ``forward`` that runs its class's one under
:func:`torch.utils.checkpoint.checkpoint`. The layers keep their class, parameters,
names and state dict, so checkpoints saved either way load either way, and code that
looks at the layers' type (the decoder's static-cache step) sees plain layers. The
recomputation replays the same random numbers (``preserve_rng_state``), so dropout masks
match and the gradients are those of the plain pass.

Checkpointing applies only where it can pay: while training with gradients on. In
evaluation, under ``torch.no_grad``, and when decoding with a key/value cache the
layers run as before.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from qkv.layers import DecoderLayer, EncoderLayer

__all__ = ["checkpoint_layers", "is_checkpointed"]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The layer's own ``forward``, checkpointed while training with gradients."""
    plain = type(self).forward
    if not self.training or not torch.is_grad_enabled() or kwargs.get("cache") is not None:
        return plain(self, *args, **kwargs)  # evaluation, inference, incremental decoding
    # Non-reentrant: takes keyword arguments, works under torch.compile, and gives the
    # parameters their gradients whether or not the inputs require any.
    return checkpoint(plain, self, *args, use_reentrant=False, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether :func:`checkpoint_layers` checkpoints ``module``."""
    forward = module.__dict__.get("forward")
    return getattr(forward, "__func__", None) is _checkpointed_forward


def checkpoint_layers(model: nn.Module) -> int:
    """Checkpoint every encoder and decoder layer of ``model``, in place; returns how
    many layers are checkpointed. A model without such layers is an error (the option
    would silently do nothing)."""
    count = 0
    for module in model.modules():
        if is_checkpointed(module):
            count += 1
        elif isinstance(module, EncoderLayer | DecoderLayer):
            # A bound method, not a closure: ``copy.deepcopy`` of the model rebinds it to
            # the copy.
            module.forward = types.MethodType(_checkpointed_forward, module)  # type: ignore[method-assign]
            count += 1
    if count == 0:
        raise ValueError(
            f"activation checkpointing: {type(model).__name__} has no qkv encoder or "
            "decoder layers to checkpoint"
        )
    return count
