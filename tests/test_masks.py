"""Mask construction: one convention, True = may attend."""

import pytest
import torch

from qkv.masks import causal_mask, combine_masks, expand_padding_mask, padding_mask_from_ids


def test_causal_mask_square_and_end_aligned():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True] * 3]
    # Two new queries after three cached positions: they are positions 3 and 4.
    assert causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match="q_len=4, k_len=2"):
        causal_mask(4, 2)


def test_padding_and_combination():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    real = padding_mask_from_ids(ids, pad_id=0)
    assert real.tolist() == [[True, True, False], [True, False, False]]
    lifted = expand_padding_mask(real, 2, 3)
    assert lifted.shape == (2, 1, 1, 3)
    combined = combine_masks(lifted, causal_mask(3))
    assert combined.shape == (2, 1, 3, 3)
    assert combined[0, 0].tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, False],
    ]
    assert combine_masks(None, None) is None
