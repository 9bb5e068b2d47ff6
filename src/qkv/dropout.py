"""Dropout with a cheaper random draw on the CPU.

Dropout zeroes each element with probability ``p`` during training and scales the
rest by ``1 / (1 - p)``, so the expected value of every element is unchanged. What
it costs on a CPU is not the multiply but the draw: ``torch.bernoulli_`` runs its
generator once per element and turns the result into a float. Here one call of the
generator fills 64 bits, cut into four 16-bit integers, and an element is kept when
its integer clears a threshold: the same distribution for ``p`` rounded to a
multiple of 1/65,536 (0.1 becomes 0.100006), and the scale uses that rounded ``p``
so the expectation stays exact.

The random stream differs from ``torch.nn.functional.dropout``'s: with the same
seed, a qkv model and a ``torch``/``transformers`` one drop different elements.
Everything else (the default generator, so ``torch.manual_seed`` still fixes a
run; identity at evaluation; ``p = 1`` gives zeros) is as in torch. On other
devices torch's own kernel is used: a GPU's generator is already cheap. Inside
``with torch_dropout():`` the CPU uses torch's kernel too, and so its masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "draws_own_masks", "dropout", "torch_dropout"]

_LEVELS = 1 << 16  # values of a 16-bit integer
_INT64 = torch.iinfo(torch.int64)
_use_torch = False


@contextmanager
def torch_dropout(enabled: bool = True) -> Iterator[None]:
    """Within the block, draw masks with ``F.dropout`` as torch does: the same masks as a
    torch or ``transformers`` model given the same seed, at torch's cost."""
    global _use_torch
    before, _use_torch = _use_torch, enabled
    try:
        yield
    finally:
        _use_torch = before


def draws_own_masks(x: Tensor) -> bool:
    """Whether :func:`dropout` draws ``x``'s masks itself rather than with torch's kernel."""
    return not _use_torch and x.device.type == "cpu" and x.is_floating_point()


def dropout(x: Tensor, p: float, training: bool = True, inplace: bool = False) -> Tensor:
    """``F.dropout(x, p, training, inplace)`` with 16 random bits an element on the CPU."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    dropped_levels = round(p * _LEVELS)
    # p within 1/131,072 of 0 or 1: torch's exact draw.
    if not draws_own_masks(x) or dropped_levels in (0, _LEVELS):
        return F.dropout(x, p, training, inplace)
    n = x.numel()
    # random_() without bounds leaves the sign bit clear; the full int64 range
    # makes all four 16-bit slices uniform.
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    bits = words.random_(_INT64.min, _INT64.max).view(torch.int16)[:n].view(x.shape)
    keep = bits >= dropped_levels - _LEVELS // 2  # P(keep) = 1 - dropped_levels / 65,536
    scale = _LEVELS / (_LEVELS - dropped_levels)
    if inplace:
        return x.mul_(keep).mul_(scale)
    return x * keep * scale


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`dropout`.

    A subclass, so code that finds dropout layers with ``isinstance(m, nn.Dropout)``
    (to switch them on at inference, say) still finds these.
    """

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.inplace)
