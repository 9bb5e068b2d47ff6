"""Right-padding lists of token ids into one ``(b, width)`` tensor.

Notation:
    b   rows (sequences)
    L   width: the longest row, or the width asked for
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pad_ids", "pad_ids_with_mask"]


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, *, width: int | None = None) -> Tensor:
    """Right-pad ``rows`` of ids with ``pad_id`` to ``width`` (default: the longest row).

    Shape: ``b`` rows -> ``(b, L)``, dtype ``torch.long``.

    >>> pad_ids([[5, 6, 7], [8]], 0).tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    if not rows:
        raise ValueError("no sequences to pad")
    longest = max(len(row) for row in rows)
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row of {longest} ids does not fit in width {width}")
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def pad_ids_with_mask(
    rows: Sequence[Sequence[int]], pad_id: int, *, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`pad_ids` and the boolean mask of the real positions (``True`` = a row's own
    id), from the rows' lengths rather than ``ids != pad_id``: a row may hold ``pad_id``.

    Shape: ``b`` rows -> ``(ids, mask)``, each ``(b, L)``.
    """
    ids = pad_ids(rows, pad_id, width=width)
    lengths = torch.tensor([len(row) for row in rows])
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # (b, L)
    return ids, mask
