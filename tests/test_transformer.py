"""The seq2seq Transformer: configuration, errors, cached decoding, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from qkv import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    Transformer,
    TransformerConfig,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def test_base_defaults_are_the_papers():
    c = TransformerConfig.base(100, 100)
    assert (c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers) == (512, 8, 6, 6)
    assert (c.d_ff, c.dropout, c.norm_first) == (2048, 0.1, False)


def test_parameter_count_of_a_small_model():
    config = TransformerConfig.tiny(40, 50, share_embeddings=False, tie_output=True)
    model = Transformer(config)
    d, ff, V_src, V_tgt = 64, 128, 40, 50
    mha = 4 * (d * d + d)
    ffn = d * ff + ff + ff * d + d
    norm = 2 * d
    encoder_layer = mha + ffn + 2 * norm
    decoder_layer = 2 * mha + ffn + 3 * norm
    expected = 2 * encoder_layer + 2 * decoder_layer + (V_src + V_tgt) * d  # post-norm: no final
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.output_proj.weight is model.tgt_embed.weight
    shared = Transformer(TransformerConfig.tiny(40, 40, share_embeddings=True))
    assert shared.src_embed is shared.tgt_embed


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_incremental_decoding_equals_full_decoding(positional, norm_first):
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig.tiny(30, 30, positional=positional, norm_first=norm_first)
    )
    model.eval()
    src = torch.randint(1, 30, (3, 9))
    src[2, 6:] = 0
    tgt = torch.randint(1, 30, (3, 7))
    full = model(src, tgt).logits
    encoded = model.encode(src)
    memory_mask = src != 0
    cache = model.init_cache()
    steps = []
    for t in range(tgt.shape[1]):
        out = model.decode(
            tgt[:, t : t + 1],
            encoded.last_hidden_state,
            memory_key_padding_mask=memory_mask,
            cache=cache,
        )
        steps.append(model.output_proj(out.last_hidden_state))
    assert cache.offset == 7
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(20, 25, positional="learned", tie_output=False))
    src, tgt = torch.randint(1, 20, (2, 6)), torch.randint(1, 25, (2, 5))
    model(src, tgt).logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_in_the_source_does_not_change_the_result():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(30, 30)).eval()
    src = torch.randint(1, 30, (1, 5))
    tgt = torch.randint(1, 30, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(model(src, tgt).logits, model(padded, tgt).logits, **TOL)


def test_returns_weights_of_every_kind_when_asked():
    model = Transformer(TransformerConfig.tiny(30, 30)).eval()
    out = model(torch.randint(1, 30, (2, 6)), torch.randint(1, 30, (2, 4)), need_weights=True)
    assert out.encoder.attentions[1].shape == (2, 4, 6, 6)
    assert out.decoder.self_attentions[0].shape == (2, 4, 4, 4)
    assert out.decoder.cross_attentions[0].shape == (2, 4, 4, 6)


def test_sinusoid_values_at_a_few_positions():
    pe = SinusoidalPositionalEncoding(8, max_len=100)
    table = pe.encoding
    for pos in (0, 1, 7, 99):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    x = torch.zeros(2, 3, 8)
    torch.testing.assert_close(pe(x, offset=5), table[5:8].expand(2, 3, 8))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: TransformerConfig(10, 10, d_model=30, num_heads=4),
            r"num_heads \(4\) must divide d_model \(30\)",
        ),
        (
            lambda: TransformerConfig(10, 12, share_embeddings=True),
            "share_embeddings needs one vocabulary.*10.*12",
        ),
        (lambda: TransformerConfig(10, 10, dropout=1.5), r"dropout must be in \[0, 1\), got 1.5"),
        (
            lambda: SinusoidalPositionalEncoding(8, max_len=4)(torch.zeros(1, 5, 8)),
            "positions 0..4 exceed the maximum length 4",
        ),
        (
            lambda: LearnedPositionalEmbedding(8, max_len=4)(torch.zeros(1, 2, 8), offset=3),
            "positions 3..4 exceed the maximum length 4",
        ),
        (lambda: SinusoidalPositionalEncoding(8)(torch.zeros(1, 2, 6)), r"d_model=8.*\(1, 2, 6\)"),
    ],
)
def test_configuration_and_length_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_token_id_and_shape_errors():
    model = Transformer(TransformerConfig.tiny(30, 20, max_len=16))
    with pytest.raises(ValueError, match=r"contain 30, outside the vocabulary \[0, 30\)"):
        model(torch.tensor([[1, 30]]), torch.tensor([[1, 2]]), validate=True)
    with pytest.raises(ValueError, match=r"contain -1, outside the vocabulary \[0, 20\)"):
        model(torch.tensor([[1, 3]]), torch.tensor([[1, -1]]), validate=True)
    with pytest.raises(ValueError, match="must be an integer tensor"):
        model(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"same batch, got \(2, 3\) and \(1, 2\)"):
        model(torch.ones(2, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="maximum length 16"):
        model(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
