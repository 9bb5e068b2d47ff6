"""MultiHeadAttention against torch.nn.MultiheadAttention, and its properties.

Tolerance: 1e-5 absolute and relative in float32 throughout.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch_reference import copy_mha

from qkv import KVCache, MultiHeadAttention, causal_mask

TOL = dict(atol=1e-5, rtol=1e-5)
D, H = 32, 4


def _pair(dropout: float = 0.0) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = MultiHeadAttention(D, H, dropout=dropout).eval()
    ref = nn.MultiheadAttention(D, H, dropout=dropout, batch_first=True).eval()
    copy_mha(ours, ref)
    return ours, ref


@pytest.mark.parametrize("fused", [True, False])
def test_self_attention_matches_torch_with_per_head_weights(fused):
    ours, ref = _pair()
    ours.fused = fused
    x = torch.randn(3, 6, D)
    out, weights = ours(x, need_weights=True)
    ref_out, ref_weights = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)
    fused_out, none = ours(x)
    assert none is None
    torch.testing.assert_close(fused_out, ref_out, **TOL)


def test_cross_attention_with_key_padding_mask_matches_torch():
    ours, ref = _pair()
    x, memory = torch.randn(3, 4, D), torch.randn(3, 9, D)
    lengths = torch.tensor([9, 5, 1])
    real = torch.arange(9)[None, :] < lengths[:, None]  # (b, k), True = real token
    out, weights = ours(x, memory, key_padding_mask=real, need_weights=True)
    # torch reads True as "ignore": invert at the boundary.
    ref_out, ref_weights = ref(
        x, memory, memory, key_padding_mask=~real, average_attn_weights=False
    )
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)
    torch.testing.assert_close(ours(x, memory, key_padding_mask=real).output, ref_out, **TOL)


def test_causal_mask_matches_torch():
    ours, ref = _pair()
    x = torch.randn(2, 7, D)
    real = torch.ones(2, 7, dtype=torch.bool)
    real[1, 5:] = False
    for kpm in (None, real):
        out, weights = ours(x, is_causal=True, key_padding_mask=kpm, need_weights=True)
        ref_out, ref_weights = ref(
            x,
            x,
            x,
            attn_mask=~causal_mask(7),
            key_padding_mask=None if kpm is None else ~kpm,
            average_attn_weights=False,
        )
        torch.testing.assert_close(out, ref_out, **TOL)
        torch.testing.assert_close(weights, ref_weights, **TOL)
        fused = ours(x, is_causal=True, key_padding_mask=kpm).output
        torch.testing.assert_close(fused, ref_out, **TOL)
        assert torch.triu(weights[0, 0], diagonal=1).abs().max() == 0


def test_general_mask_per_head():
    ours, ref = _pair()
    x = torch.randn(2, 5, D)
    mask = torch.rand(2, H, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.3
    mask |= torch.eye(5, dtype=torch.bool)  # every query keeps one key
    out = ours(x, mask=mask).output
    ref_out, _ = ref(x, x, x, attn_mask=~mask.reshape(2 * H, 5, 5))
    torch.testing.assert_close(out, ref_out, **TOL)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.integers(0, 6))
def test_causal_changing_token_t_changes_no_earlier_output(seed, t):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 7, 16)
    x2 = x.clone()
    x2[0, t] += torch.randn(16)
    a, b = mha(x, is_causal=True).output, mha(x2, is_causal=True).output
    torch.testing.assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_self_attention_without_positions_is_permutation_equivariant(seed):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    perm = torch.randperm(6)
    torch.testing.assert_close(mha(x[:, perm]).output, mha(x).output[:, perm], **TOL)


def test_padding_invariance_changing_a_padded_key_changes_nothing():
    ours, _ = _pair()
    x = torch.randn(2, 6, D)
    real = torch.ones(2, 6, dtype=torch.bool)
    real[0, 4:] = False
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, D) * 10
    a = ours(x, key_padding_mask=real).output
    b = ours(x2, key_padding_mask=real).output
    torch.testing.assert_close(a[0, :4], b[0, :4], **TOL)
    torch.testing.assert_close(a[1], b[1], **TOL)


def test_incremental_decoding_with_cache_equals_full_pass():
    torch.manual_seed(0)
    self_attn, cross_attn = MultiHeadAttention(D, H).eval(), MultiHeadAttention(D, H).eval()
    x, memory = torch.randn(2, 6, D), torch.randn(2, 9, D)
    real = torch.ones(2, 9, dtype=torch.bool)
    real[1, 6:] = False
    full_self = self_attn(x, is_causal=True).output
    full_cross = cross_attn(x, memory, key_padding_mask=real).output
    self_cache, cross_cache = KVCache(), KVCache(static=True)
    steps_self, steps_cross = [], []
    for t in range(6):
        token = x[:, t : t + 1]
        steps_self.append(self_attn(token, is_causal=True, cache=self_cache).output)
        steps_cross.append(
            cross_attn(token, memory, key_padding_mask=real, cache=cross_cache).output
        )
    assert len(self_cache) == 6 and len(cross_cache) == 9
    torch.testing.assert_close(torch.cat(steps_self, 1), full_self, **TOL)
    torch.testing.assert_close(torch.cat(steps_cross, 1), full_cross, **TOL)
    # Two new tokens at once after a cached prefix use the end-aligned causal mask.
    cache = KVCache()
    first = self_attn(x[:, :4], is_causal=True, cache=cache).output
    rest = self_attn(x[:, 4:], is_causal=True, cache=cache).output
    torch.testing.assert_close(torch.cat([first, rest], 1), full_self, **TOL)


def test_cache_reorder_selects_batch_rows():
    cache = KVCache()
    k = torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 4)
    cache.update(k, k)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.key[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]


def test_dropout_on_weights_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.5)
    x = torch.randn(2, 5, D)
    mha.eval()
    torch.testing.assert_close(mha(x).output, mha(x).output)
    mha.train()
    assert not torch.allclose(mha(x).output, mha(x).output)


def test_gradients_reach_every_parameter_and_gradcheck():
    torch.manual_seed(0)
    mha = MultiHeadAttention(6, 2).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    mha(x, memory).output.sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.autograd.gradcheck(lambda x, m: mha(x, m, is_causal=False).output, (x, memory))
    assert torch.autograd.gradcheck(lambda x: mha(x, is_causal=True).output, (x,))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MultiHeadAttention(512, 7), r"num_heads \(7\) must divide d_model \(512\)"),
        (lambda: MultiHeadAttention(32, 4)(torch.randn(2, 5, 16)), r"d_model=32.*\(2, 5, 16\)"),
        (
            lambda: MultiHeadAttention(32, 4)(torch.randn(2, 5, 32), torch.randn(3, 5, 32)),
            r"memory must have shape \(batch=2",
        ),
        (
            lambda: MultiHeadAttention(32, 4)(
                torch.randn(2, 5, 32), key_padding_mask=torch.ones(2, 4, dtype=torch.bool)
            ),
            r"\(batch, k_len\) = \(2, 5\), got \(2, 4\)",
        ),
        (
            lambda: MultiHeadAttention(32, 4)(
                torch.randn(2, 5, 32), key_padding_mask=torch.ones(2, 5)
            ),
            "key_padding_mask must be torch.bool",
        ),
        (
            lambda: MultiHeadAttention(32, 4)(
                torch.randn(2, 5, 32), mask=torch.ones(3, 5, 5, dtype=torch.bool)
            ),
            r"does not broadcast to .*\(2, 4, 5, 5\)",
        ),
    ],
)
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_stacked_qkv_weights_are_kept_for_inference_and_follow_every_change() -> None:
    """Without gradients the stacked q/k/v weights are built once; a weight changed in
    place (an optimiser step, load_state_dict) or replaced (.to()) is seen at once."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 40, 32)  # 80 tokens >= d: the stacked projection
    with torch.no_grad():
        first = mha(x).output
        stacked = mha._stacked
        assert stacked is not None
        torch.testing.assert_close(mha(x).output, first, rtol=0, atol=0)
        assert mha._stacked is stacked  # kept
        mha.v_proj.weight.mul_(2.0)
        changed = mha(x).output
    assert mha._stacked is not stacked
    torch.testing.assert_close(changed, mha(x).output.detach(), rtol=0, atol=1e-6)  # = fresh
    assert not torch.allclose(changed, first)
    mha.load_state_dict({k: torch.randn_like(v) for k, v in mha.state_dict().items()})
    with torch.inference_mode():
        loaded = mha(x).output
    torch.testing.assert_close(loaded, mha(x).output.detach(), rtol=0, atol=1e-6)
    as_double = mha.double()  # new tensors: rebuilt in float64
    with torch.no_grad():
        kept = as_double(x.double()).output
    assert kept.dtype == torch.float64
    torch.testing.assert_close(kept, as_double(x.double()).output.detach(), rtol=0, atol=1e-12)
