"""scaled_dot_product_attention, the ``Attn(X, X')`` Attention module, and the worked example.

docs/concepts.md#attention-between-two-sequences and #self-attention-worked-example.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qkv import Attention, attention_scores, attention_weights, scaled_dot_product_attention
from qkv.explain import worked_example, worked_example_attention

WORKED_EXAMPLE_X = torch.tensor([[1, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]], dtype=torch.float32)


def test_worked_example_scores_and_outputs_from_the_library_attention():
    attention = worked_example_attention(scale=1.0)
    x = WORKED_EXAMPLE_X
    scores = attention_scores(attention.q_proj(x), attention.k_proj(x), scale=1.0)
    torch.testing.assert_close(
        scores, torch.tensor([[2.0, 4.0, 4.0], [4.0, 16.0, 12.0], [4.0, 12.0, 10.0]])
    )
    outputs, weights = attention(x)
    expected = torch.tensor(
        [[1.9366, 6.6831, 1.5951], [2.0000, 7.9640, 0.0540], [1.9997, 7.7599, 0.3584]]
    )
    torch.testing.assert_close(outputs, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


def test_worked_example_reproduces_the_documents_rounded_figures():
    example = worked_example()
    torch.testing.assert_close(example.rounded_outputs[0], torch.tensor([2.0, 7.0, 1.5]))
    scaled = worked_example(scaled=True)
    assert scaled.scale == pytest.approx(1 / math.sqrt(3))
    torch.testing.assert_close(scaled.scores, example.scores / math.sqrt(3))


def test_default_scale_is_inverse_sqrt_dk():
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(attention_scores(q, k), q @ k.transpose(-2, -1) / 4.0)


def _qkv(b=2, h=3, q=5, k=7, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(b, h, q, d, generator=g, dtype=dtype),
        torch.randn(b, h, k, d, generator=g, dtype=dtype),
        torch.randn(b, h, k, d, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_and_plain_paths_agree(is_causal, with_mask):
    q, k, v = _qkv(q=7, k=7)
    mask = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    mask = mask if with_mask else None
    fused = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
    plain = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, need_weights=True)
    assert fused.weights is None and plain.weights is not None
    torch.testing.assert_close(fused.output, plain.output, atol=1e-5, rtol=1e-5)


def test_fully_masked_query_gets_zeros_not_nan_on_both_paths():
    q, k, v = _qkv()
    mask = torch.ones(2, 3, 5, 7, dtype=torch.bool)
    mask[0, :, 2] = False  # query 2 of batch 0 may attend nothing
    for need_weights in (False, True):
        q_ = q.clone().requires_grad_()
        out, weights = scaled_dot_product_attention(q_, k, v, mask, need_weights=need_weights)
        assert torch.isfinite(out).all()
        assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
        if weights is not None:
            assert torch.equal(weights[0, :, 2], torch.zeros(3, 7))
        out.sum().backward()
        assert torch.isfinite(q_.grad).all()


@settings(max_examples=40, deadline=None)
@given(
    q_len=st.integers(1, 6),
    k_len=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([None, 1.0, 0.1]),
)
def test_rows_sum_to_one_over_allowed_keys(q_len, k_len, seed, scale):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, L, 4, generator=g) for L in (q_len, k_len, k_len))
    mask = torch.rand(2, q_len, k_len, generator=g) > 0.4
    _, weights = scaled_dot_product_attention(q, k, v, mask, scale=scale, need_weights=True)
    expected = mask.any(-1).float()  # 1 where some key is allowed, else 0
    torch.testing.assert_close(weights.sum(-1), expected)
    assert (weights[~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), position=st.integers(0, 6))
def test_changing_a_masked_key_changes_nothing(seed, position):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 7, 4, generator=g) for _ in range(3))
    mask = torch.ones(1, 1, 1, 7, dtype=torch.bool)
    mask[..., position] = False
    k2, v2 = k.clone(), v.clone()
    k2[..., position, :] += 100.0
    v2[..., position, :] -= 50.0
    for need_weights in (False, True):
        a = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights).output
        b = scaled_dot_product_attention(q, k2, v2, mask, need_weights=need_weights).output
        torch.testing.assert_close(a, b)


def test_gradcheck_float64_both_paths():
    q, k, v = (t.requires_grad_() for t in _qkv(b=1, h=2, q=3, k=4, d=3, dtype=torch.float64))
    mask = torch.tensor([[True, True, False, True]])  # (1, k): same for every query
    for need_weights in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, nw=need_weights: (
                scaled_dot_product_attention(q, k, v, mask, need_weights=nw).output
            ),
            (q, k, v),
        )


def test_two_sequence_cross_attention_one_context_per_decoder_input():
    torch.manual_seed(0)
    attention = Attention(d_in=6, d_k=4, d_v=5, d_in_prime=3)
    encoder_states = torch.randn(2, 7, 6)  # h_1..h_m
    decoder_states = torch.randn(2, 4, 3)  # s_1..s_t
    contexts, weights = attention(encoder_states, decoder_states)
    assert contexts.shape == (2, 4, 5) and weights.shape == (2, 4, 7)
    # c_j = sum_i alpha_ij v_i with alpha_:j = softmax(K^T q_j / sqrt(d_k)), by hand:
    keys = encoder_states @ attention.k_proj.weight.T
    values = encoder_states @ attention.v_proj.weight.T
    query = decoder_states[0, 2] @ attention.q_proj.weight.T
    alpha = torch.softmax(keys[0] @ query / 2.0, dim=0)
    torch.testing.assert_close(weights[0, 2], alpha)
    torch.testing.assert_close(contexts[0, 2], alpha @ values[0])


def test_self_attention_every_output_depends_on_every_input():
    torch.manual_seed(0)
    attention = Attention(d_in=4, d_k=3)
    x = torch.randn(5, 4)
    base = attention(x).output
    for i in range(5):
        x2 = x.clone()
        x2[i] += 1.0
        changed = (attention(x2).output - base).abs().sum(-1)
        assert (changed > 1e-6).all(), f"changing x_{i} left some output unchanged"


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 5, 8), (2, 7, 6), (2, 7, 8)), r"query width \(8\) must equal key width \(6\)"),
        (((2, 5, 8), (2, 7, 8), (2, 6, 8)), "key and value must have the same length"),
        (((8,), (7, 8), (7, 8)), "at least 2 dims"),
    ],
)
def test_shape_errors_name_the_shapes(shapes, message):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(q, k, v)


def test_mask_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="must be torch.bool"):
        scaled_dot_product_attention(q, k, v, torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"\(3, 7\) does not broadcast to .*\(2, 3, 5, 7\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must have width 4"):
        worked_example_attention()(torch.randn(3, 5))


def test_attention_weights_without_mask_is_softmax():
    scores = torch.randn(3, 4)
    torch.testing.assert_close(attention_weights(scores), torch.softmax(scores, -1))


@pytest.mark.parametrize("dropout_p", [-0.1, 1.0, float("nan")])
def test_dropout_out_of_range_names_the_argument(dropout_p):
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        scaled_dot_product_attention(q, q, q, dropout_p=dropout_p)
