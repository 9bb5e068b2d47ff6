"""Learning-rate schedules, as multipliers of the peak rate.

- ``inverse_sqrt``: the paper's schedule (Vaswani et al. 2017, section 5.3),
  ``lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``: a linear warm-up to
  the peak at ``step = warmup``, then decay as ``1/sqrt(step)``. Written here as
  ``peak · min(step / warmup, sqrt(warmup / step))``, so the peak is a setting of its
  own; the paper's peak is ``(d_model · warmup)^-0.5``.
- ``cosine``: linear warm-up, then half a cosine down to ``min_factor · peak`` at
  ``total_steps`` (ViT, BERT fine-tuning).
- ``constant``: linear warm-up, then flat.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["Schedule", "lr_factor", "make_scheduler", "paper_peak_lr"]

Schedule = Literal["inverse_sqrt", "cosine", "constant"]


def paper_peak_lr(d_model: int, warmup_steps: int) -> float:
    """The peak of the paper's schedule: ``(d_model · warmup)^-0.5`` (7e-4 for base, 4000)."""
    return (d_model * warmup_steps) ** -0.5


def lr_factor(
    step: int,
    *,
    schedule: Schedule,
    warmup_steps: int,
    total_steps: int,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate for the optimizer step ``step`` (0-based)."""
    step = step + 1  # the first update uses step 1, as in the paper
    warmup = max(warmup_steps, 1)
    if schedule == "inverse_sqrt":
        return min(step / warmup, math.sqrt(warmup / step))
    if step <= warmup_steps:
        return step / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be 'inverse_sqrt', 'cosine' or 'constant', got {schedule!r}")


def make_scheduler(
    optimizer: Optimizer,
    schedule: Schedule,
    *,
    warmup_steps: int,
    total_steps: int,
    min_factor: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every parameter group's ``lr``."""
    lr_factor(0, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps)  # check
    return LambdaLR(
        optimizer,
        partial(
            lr_factor,
            schedule=schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_factor=min_factor,
        ),
    )
