"""Encoder and decoder layers, the stacks and the whole Transformer against torch.nn.

Tolerance: 1e-5 absolute and relative in float32 throughout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_reference import copy_decoder_layer, copy_encoder_layer

from qkv import (
    AddNorm,
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    FeedForward,
    Transformer,
    TransformerConfig,
    causal_mask,
)

TOL = dict(atol=1e-5, rtol=1e-5)
D, H, FF = 32, 4, 64


def _padding(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]  # True = real


def _layer_args(norm_first: bool, activation: str = "relu") -> dict:
    return dict(dropout=0.0, activation=activation, norm_first=norm_first)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    torch.manual_seed(0)
    ours = EncoderLayer(D, H, FF, **_layer_args(norm_first, activation)).eval()
    ref = nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    copy_encoder_layer(ours, ref)
    x = torch.randn(3, 7, D)
    real = _padding([7, 4, 2], 7)
    out = ours(x, key_padding_mask=real)
    ref_out = ref(x, src_key_padding_mask=~real)
    # torch's inference fast path zeroes padded positions; compare real ones.
    torch.testing.assert_close(out.hidden[real], ref_out[real], **TOL)
    assert out.self_attention is None
    assert ours(x, key_padding_mask=real, need_weights=True).self_attention.shape == (3, H, 7, 7)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ours = DecoderLayer(D, H, FF, **_layer_args(norm_first)).eval()
    ref = nn.TransformerDecoderLayer(
        D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    ).eval()
    copy_decoder_layer(ours, ref)
    x, memory = torch.randn(3, 5, D), torch.randn(3, 8, D)
    tgt_real, mem_real = _padding([5, 3, 5], 5), _padding([8, 6, 2], 8)
    out = ours(x, memory, key_padding_mask=tgt_real, memory_key_padding_mask=mem_real)
    ref_out = ref(
        x,
        memory,
        tgt_mask=~causal_mask(5),
        tgt_key_padding_mask=~tgt_real,
        memory_key_padding_mask=~mem_real,
    )
    torch.testing.assert_close(out.hidden, ref_out, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_stacks_match_torch_transformer(norm_first):
    torch.manual_seed(0)
    layers = 3
    ref = nn.Transformer(
        D, H, layers, layers, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    ).eval()
    # torch.nn.Transformer always ends both stacks in a LayerNorm, post-norm too.
    encoder = Encoder(EncoderLayer(D, H, FF, **_layer_args(norm_first)), layers, final_norm=True)
    decoder = Decoder(DecoderLayer(D, H, FF, **_layer_args(norm_first)), layers, final_norm=True)
    for ours_layer, ref_layer in zip(encoder.layers, ref.encoder.layers, strict=True):
        copy_encoder_layer(ours_layer, ref_layer)
    for ours_layer, ref_layer in zip(decoder.layers, ref.decoder.layers, strict=True):
        copy_decoder_layer(ours_layer, ref_layer)
    encoder.norm.load_state_dict(ref.encoder.norm.state_dict())
    decoder.norm.load_state_dict(ref.decoder.norm.state_dict())
    encoder.eval(), decoder.eval()
    src, tgt = torch.randn(2, 9, D), torch.randn(2, 6, D)
    src_real = _padding([9, 5], 9)
    memory = encoder(src, key_padding_mask=src_real).last_hidden_state
    out = decoder(tgt, memory, memory_key_padding_mask=src_real).last_hidden_state
    ref_out = ref(
        src,
        tgt,
        tgt_mask=~causal_mask(6),
        src_key_padding_mask=~src_real,
        memory_key_padding_mask=~src_real,
    )
    torch.testing.assert_close(out, ref_out, **TOL)


def test_whole_transformer_equals_torch_transformer_with_our_embeddings():
    torch.manual_seed(0)
    config = TransformerConfig.tiny(40, 50, dropout=0.0, norm_first=True)
    ours = Transformer(config).eval()
    ref = nn.Transformer(
        config.d_model,
        config.num_heads,
        2,
        2,
        config.d_ff,
        dropout=0.0,
        batch_first=True,
        norm_first=True,
    ).eval()
    for o, r in zip(ours.encoder.layers, ref.encoder.layers, strict=True):
        copy_encoder_layer(o, r)
    for o, r in zip(ours.decoder.layers, ref.decoder.layers, strict=True):
        copy_decoder_layer(o, r)
    ref.encoder.norm.load_state_dict(ours.encoder.norm.state_dict())
    ref.decoder.norm.load_state_dict(ours.decoder.norm.state_dict())
    src = torch.randint(1, 40, (2, 8))
    src[1, 5:] = config.pad_id
    tgt = torch.randint(1, 50, (2, 6))
    logits = ours(src, tgt).logits
    src_x = ours.src_positional(ours.src_embed(src))
    tgt_x = ours.tgt_positional(ours.tgt_embed(tgt))
    pad = src == config.pad_id
    hidden = ref(
        src_x,
        tgt_x,
        tgt_mask=~causal_mask(6),
        src_key_padding_mask=pad,
        memory_key_padding_mask=pad,
    )
    torch.testing.assert_close(logits, ours.output_proj(hidden), **TOL)


def test_feed_forward_and_add_norm():
    torch.manual_seed(0)
    ff = FeedForward(8, 16, activation="gelu", dropout=0.0)
    x = torch.randn(2, 3, 8)
    expected = ff.linear2(torch.nn.functional.gelu(ff.linear1(x)))
    torch.testing.assert_close(ff(x), expected)
    with pytest.raises(ValueError, match="activation must be one of"):
        FeedForward(8, 16, activation="swish")
    post, pre = AddNorm(8, dropout=0.0), AddNorm(8, dropout=0.0, norm_first=True)
    y = torch.randn(2, 3, 8)
    torch.testing.assert_close(post.after(x, y), post.norm(x + y))
    torch.testing.assert_close(pre.before(x), pre.norm(x))
    torch.testing.assert_close(pre.after(x, y), x + y)


def test_encoder_returns_weights_of_chosen_layers_only():
    encoder = Encoder(EncoderLayer(D, H, FF), 3).eval()
    x = torch.randn(2, 5, D)
    out = encoder(x, need_weights=[0, -1])
    assert out.attentions[0].shape == (2, H, 5, 5)
    assert out.attentions[1] is None and out.attentions[2] is not None
    assert encoder(x).attentions is None
    torch.testing.assert_close(
        encoder(x, need_weights=True).last_hidden_state, encoder(x).last_hidden_state, **TOL
    )
    with pytest.raises(ValueError, match="layer index 3 out of range for 3 layers"):
        encoder(x, need_weights=[3])
