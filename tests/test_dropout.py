"""qkv's dropout: torch's semantics with a cheaper draw (src/qkv/dropout.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qkv.dropout import Dropout, dropout, torch_dropout

N = 1 << 20


def test_keeps_the_expected_share_and_the_mean():
    torch.manual_seed(0)
    for p in (0.1, 0.3, 0.5, 0.9):
        out = dropout(torch.ones(N), p)
        kept = (out != 0).double().mean().item()
        sigma = (p * (1 - p) / N) ** 0.5
        assert abs(kept - (1 - p)) < 6 * sigma, (p, kept)
        # Kept elements carry 1/(1-p): the mean stays 1 (within the sampling spread).
        assert abs(out.double().mean().item() - 1) < 6 * sigma / (1 - p), p
        values = out.unique()
        assert values[0] == 0 and values[1].item() == pytest.approx(1 / (1 - p), rel=1e-4)
        assert len(values) == 2


def test_every_16_bit_slice_of_a_random_word_is_uniform():
    # Four elements share one 64-bit draw; were the sign bit of the word never set
    # (as with int64 random_() without bounds), every fourth element would be kept
    # always for p < 0.5.
    torch.manual_seed(1)
    p = 0.3
    kept = (dropout(torch.ones(N), p) != 0).view(-1, 4).double().mean(0)
    sigma = (p * (1 - p) / (N / 4)) ** 0.5
    assert ((kept - (1 - p)).abs() < 6 * sigma).all(), kept


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.rand(64, 33, dtype=torch.float64).add_(0.5).requires_grad_()
    out = dropout(x, 0.25)
    out.backward(torch.ones_like(out))
    kept = out.detach() != 0
    scale = 65536 / (65536 - round(0.25 * 65536))
    assert torch.equal(x.grad, kept.double() * scale)
    assert torch.allclose(out.detach(), x.detach() * kept * scale, rtol=0, atol=1e-15)


def test_seeded_runs_repeat_and_evaluation_is_identity():
    x = torch.randn(3, 5, 7)
    torch.manual_seed(3)
    first = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), first)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    y = x.clone()
    torch.manual_seed(3)
    assert dropout(y, 0.5, inplace=True) is y and torch.equal(y, first)
    assert torch.equal(dropout(x, 1 - 1e-6), torch.zeros_like(x))  # rounds to 1: all dropped
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_shapes_dtypes_and_strides():
    torch.manual_seed(4)
    x = torch.randn(8, 6, 5).transpose(0, 2)  # not contiguous
    out = dropout(x, 0.5)
    assert out.shape == x.shape
    assert torch.equal(out[out != 0], (x * 2)[out != 0])
    half = dropout(torch.ones(4097, dtype=torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16 and set(half.unique().tolist()) == {0.0, 2.0}


def test_module_is_an_nn_dropout():
    layer = Dropout(0.5)
    assert isinstance(layer, nn.Dropout) and repr(layer) == "Dropout(p=0.5, inplace=False)"
    x = torch.ones(1000)
    assert (layer(x) == 0).any()
    layer.eval()
    assert layer(x) is x


def test_torch_dropout_gives_torchs_masks():
    x = torch.randn(50, 40)
    torch.manual_seed(5)
    expected = F.dropout(x, 0.3, True)
    with torch_dropout():
        torch.manual_seed(5)
        assert torch.equal(Dropout(0.3)(x), expected)
        with torch_dropout(False):
            torch.manual_seed(5)
            assert not torch.equal(dropout(x, 0.3), expected)
    torch.manual_seed(5)
    assert not torch.equal(dropout(x, 0.3), expected)


def test_attention_dropout_on_the_cpu_draws_qkvs_masks():
    from qkv.attention import scaled_dot_product_attention

    q, k, v = torch.randn(3, 2, 2, 9, 8).unbind(0)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    for is_causal in (False, True):
        torch.manual_seed(6)
        out = scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=is_causal).output
        if is_causal:
            causal = torch.ones(9, 9, dtype=torch.bool).tril()
            w = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~causal, -1e9), -1)
        else:
            w = weights
        torch.manual_seed(6)
        torch.testing.assert_close(out, dropout(w, 0.4) @ v)
    with torch_dropout():  # torch's fused kernel, and its masks
        torch.manual_seed(7)
        out = scaled_dot_product_attention(q, k, v, dropout_p=0.4).output
    torch.manual_seed(7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, dropout_p=0.4))
