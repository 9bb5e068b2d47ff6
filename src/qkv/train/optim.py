"""The optimizer every task trains with (:func:`adamw`) and its parameter groups.

Which AdamW: torch has three implementations of the same update. The fused one updates
every parameter in one kernel per group (CUDA, and the CPU since torch 2.4); foreach
updates lists of tensors at once; the default loops over the parameters in Python, one
small kernel per tensor and per operation, which on a model of a few hundred tensors
costs as much as a sizeable part of the forward pass. :func:`adamw` takes the fastest
the device has; the three give the same parameters up to float rounding
(tests/test_fast_training.py).

Optimizer parameter groups shared by the tasks.

Weight decay pulls weights towards zero. That is a prior on the matrices of the
linear layers; on biases, LayerNorm gains and offsets, and the tokens and position
tables a model adds to its input (ViT's class token and position embeddings), it only
fights the values they need, so BERT (Devlin et al. 2019, its released code) and ViT
(timm, DeiT) leave them out. A model names such tables itself, as timm's models do, in
a ``no_weight_decay()`` method returning parameter names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["AdamWKind", "adamw", "adamw_kind", "load_optimizer_state", "parameter_groups"]

AdamWKind = Literal["fused", "foreach", "loop"]


def adamw(
    params: Iterable[Any],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    kind: AdamWKind | None = None,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` (its defaults) in implementation ``kind``; default the
    fastest the parameters' device has: ``"fused"`` where torch has a fused kernel for
    it (CUDA, CPU), else ``"foreach"``. ``"loop"`` is torch's per-parameter default."""
    groups = list(params)
    if kind is None:
        try:
            return adamw(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         kind="fused")  # fmt: skip
        except RuntimeError:  # no fused kernel for this device or dtype
            kind = "foreach"
    flags = {"fused": kind == "fused", "foreach": kind == "foreach"}
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **flags
    )


def adamw_kind(optimizer: torch.optim.Optimizer) -> AdamWKind:
    """Which implementation ``optimizer`` (from :func:`adamw`) runs."""
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "loop"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping ``optimizer``'s implementation.

    A state dict carries the implementation flags of the optimizer that saved it, and
    loading it would bring them back: a run checkpointed with the per-parameter loop
    would resume in it. The flags stay as they were; a fused optimizer keeps its step
    counts on the parameters' device, as its kernel reads them there."""
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)
        if not group.get("fused"):
            continue
        for parameter in group["params"]:
            values = optimizer.state.get(parameter)
            if values and isinstance(values.get("step"), torch.Tensor):
                values["step"] = values["step"].to(device=parameter.device, dtype=torch.float32)


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
