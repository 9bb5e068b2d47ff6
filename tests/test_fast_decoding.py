"""The static key/value cache and the lean decoder step (and, on a GPU, CUDA graphs)
give the tokens of the growing cache and of decoding without a cache."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from qkv import Transformer, TransformerConfig
from qkv.decoding import beam_search, greedy_decode, sample_decode
from qkv.layers import StaticDecoderCache
from qkv.quantize import int8_linear, int8_unavailable, pack_int8_weight

V = 16
PAD, BOS, EOS = 0, 1, 2
HIDDEN_TOL = dict(atol=2e-5, rtol=1e-5)
SCORE_TOL = dict(atol=1e-4, rtol=0.0)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def marian_style(seed: int = 0) -> Transformer:
    """The layout of a converted Marian model: decoder starts with the pad id, swish,
    sines-then-cosines positions, a final logits bias, forced eos."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        V, V, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64,
        dropout=0.0, activation="silu", sinusoid_layout="halves", max_len=64,
        pad_id=V - 1, bos_id=V - 1, eos_id=0, final_logits_bias=True, forced_eos=True,
    )  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
    return model.eval()


MODELS = {
    "post-norm": lambda: Transformer(TransformerConfig.tiny(V, V, tie_output=False)),
    "pre-norm": lambda: Transformer(TransformerConfig.tiny(V, V, norm_first=True)),
    "learned": lambda: Transformer(TransformerConfig.tiny(V, V, positional="learned")),
    "marian": marian_style,
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> Transformer:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def sources(model: Transformer, lengths: list[int], seed: int) -> torch.Tensor:
    """Right-padded random sources of these lengths, ids away from pad, bos and eos."""
    g = torch.Generator().manual_seed(seed)
    pad = model.config.pad_id
    special = {pad, model.config.bos_id, model.config.eos_id}
    ids = [i for i in range(V) if i not in special]
    rows = [torch.tensor(ids)[torch.randint(len(ids), (n,), generator=g)] for n in lengths]
    width = max(lengths)
    return torch.stack([F.pad(r, (0, width - len(r)), value=pad) for r in rows])


def test_static_step_equals_the_growing_cache_step_by_step(model):
    src = sources(model, [5, 7, 3], seed=1)
    mask = src != model.config.pad_id
    with torch.inference_mode():
        memory = model.encode(src, src_key_padding_mask=mask).last_hidden_state
        dynamic, static = model.init_cache(), model.init_static_cache(memory, mask, 9)
        ids = torch.full((3, 1), model.config.bos_id)
        for t in range(9):
            a = model.decode(ids, memory, memory_key_padding_mask=mask, cache=dynamic)
            b = model.decode(ids, memory, memory_key_padding_mask=mask, cache=static)
            torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, **HIDDEN_TOL)
            ids = model.logits(a.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
            if t == 3:  # rows follow others, as in beam search (with other sources too)
                rows = torch.tensor([2, 0, 0])
                dynamic.reorder(rows)
                static.reorder(rows)
                given = mask.clone()
                mask = mask[rows]  # the growing cache takes the source mask at every step
    assert static.offset == 9 and static.position.tolist() == [9]
    assert torch.equal(given, src != model.config.pad_id)  # the caller's mask untouched


def test_static_cache_equals_decoding_without_a_cache(model):
    # Greedy with the static cache against the whole prefix through model(src, tgt)
    # at every step, no cache at all.
    src = sources(model, [6, 4], seed=2)
    steps = 8
    out = greedy_decode(model, src, max_len=steps, min_len=steps)
    c = model.config
    prefix = torch.full((2, 1), c.bos_id)
    with torch.inference_mode():
        for t in range(steps):
            logits = model(src, prefix).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            logp[:, c.pad_id] = -math.inf
            logp[:, c.eos_id] = -math.inf
            if c.forced_eos and t == steps - 1:
                logp[:] = -math.inf
                logp[:, c.eos_id] = 0.0
            prefix = torch.cat([prefix, logp.argmax(-1, keepdim=True)], dim=1)
    expected = prefix[:, 1:]
    for i in range(2):
        tokens = [x for x in expected[i].tolist() if x != c.eos_id]
        assert out.tokens[i] == tokens


@pytest.mark.parametrize(
    "decode",
    [
        lambda m, s, **kw: greedy_decode(m, s, **kw),
        lambda m, s, **kw: beam_search(m, s, beam_size=3, n_best=2, **kw),
        lambda m, s, **kw: sample_decode(
            m, s, top_k=5, generator=torch.Generator().manual_seed(3), **kw
        ),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_static_and_growing_caches_give_the_same_output(model, decode):
    src = sources(model, [4, 9, 6, 2], seed=3)
    fast = decode(model, src, static_cache=True, max_len=12)
    plain = decode(model, src, static_cache=False, max_len=12)
    assert fast.tokens == plain.tokens
    torch.testing.assert_close(fast.scores, plain.scores, **SCORE_TOL)
    assert [[h.tokens for h in n] for n in fast.n_best] == [
        [h.tokens for h in n] for n in plain.n_best
    ]


def test_beam_search_with_the_static_cache_is_batch_invariant(model):
    src = sources(model, [3, 8, 5], seed=4)
    batched = beam_search(model, src, beam_size=4, max_len=10)
    for i in range(3):
        row = src[i : i + 1, : int((src[i] != model.config.pad_id).sum())]
        single = beam_search(model, row, beam_size=4, max_len=10)
        assert single.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(single.scores[0], batched.scores[i], **SCORE_TOL)


def test_decoding_goes_through_model_decode_with_the_static_cache(monkeypatch):
    model = MODELS["post-norm"]().eval()
    seen: list[type] = []
    decode = model.decode

    def spy(*args, **kwargs):
        seen.append(type(kwargs["cache"]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", spy)
    greedy_decode(model, sources(model, [3], seed=5), max_len=4, min_len=4)
    assert seen == [StaticDecoderCache] * 4


def test_a_wrapped_decoder_layer_falls_back_to_the_growing_cache():
    model = MODELS["post-norm"]().eval()
    src = sources(model, [5, 3], seed=6)
    expected = greedy_decode(model, src, max_len=6)

    class Wrapper(torch.nn.Module):  # as activation checkpointing wraps a layer
        def __init__(self, layer: torch.nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, *args, **kwargs):
            return self.layer(*args, **kwargs)

    model.decoder.layers[0] = Wrapper(model.decoder.layers[0])
    assert not model.supports_static_cache
    assert greedy_decode(model, src, max_len=6).tokens == expected.tokens
    memory = torch.zeros(2, 5, model.config.d_model)
    with pytest.raises(ValueError, match="cannot use a static cache"):
        model.init_static_cache(memory, None, 4)


def test_static_cache_errors():
    model = MODELS["post-norm"]().eval()
    memory = torch.zeros(2, 5, model.config.d_model)
    with pytest.raises(ValueError, match=r"max_len \(2000\) exceeds the model's 1024 positions"):
        model.init_static_cache(memory, None, 2000)
    cache = model.init_static_cache(memory, None, 2)
    ids = torch.full((2, 1), BOS)
    with pytest.raises(ValueError, match=r"tgt_ids must be \(batch, 1\), got \(2, 2\)"):
        model.decode(torch.full((2, 2), BOS), memory, cache=cache)
    with pytest.raises(ValueError, match="no need_weights"):
        model.decode(ids, memory, cache=cache, need_weights=True)
    with torch.inference_mode():
        model.decode(ids, memory, cache=cache)
        model.decode(ids, memory, cache=cache)
        with pytest.raises(ValueError, match="holds 2 positions, all used"):
            model.decode(ids, memory, cache=cache)
    model.train()
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        model.decode(ids, memory, cache=model.init_static_cache(memory, None, 2))


@pytest.fixture(scope="module")
def copy_model() -> Transformer:
    """A model with confident predictions, as a trained translator: 150 steps on a copy
    task (a few seconds)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(V, V, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        lengths = torch.randint(3, 8, (64,), generator=g)
        src = torch.randint(3, V, (64, 7), generator=g)
        src = src.masked_fill(torch.arange(7) >= lengths[:, None], PAD)
        tgt_in = F.pad(src, (1, 0), value=BOS)
        tgt_out = F.pad(src, (0, 1), value=PAD)
        tgt_out[torch.arange(64), lengths] = EOS
        logits = model(src, tgt_in).logits
        loss = F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def sample(model, src, **kwargs):
    return sample_decode(model, src, generator=torch.Generator().manual_seed(0), **kwargs)


def test_trained_copy_model_gives_the_same_tokens_with_both_caches(copy_model):
    # Both caches must give identical outputs, eos included.
    src = torch.randint(3, V, (16, 6), generator=torch.Generator().manual_seed(1))
    for decode in (greedy_decode, beam_search, sample):
        fast = decode(copy_model, src, static_cache=True)
        plain = decode(copy_model, src, static_cache=False)
        assert fast.tokens == plain.tokens
        torch.testing.assert_close(fast.scores, plain.scores, **SCORE_TOL)
    copied = greedy_decode(copy_model, src).tokens
    assert sum(c == s for c, s in zip(copied, src.tolist(), strict=True)) >= 12


# ---------------------------------------------------------------- int8 weights

int8 = pytest.mark.skipif(
    int8_unavailable(torch.device("cpu")) is not None, reason="torch has no int8 CPU kernels"
)


@int8
def test_int8_linear_is_the_product_within_the_quantization_step():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(5, 32, generator=g)
    packed = pack_int8_weight(weight, bias)
    exact = F.linear(x, weight, bias)
    got = int8_linear(x, packed)
    # Weights within half a step of 1/127 of their row's largest, inputs 7 bits: the
    # products stay within about 2% of the output's scale, and not exact.
    error = (got - exact).abs().max() / exact.abs().max()
    assert 0 < error < 0.02
    assert int8_linear(x.bfloat16(), packed).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bias is packed"):
        int8_linear(x, packed, bias)


@int8
def test_int8_step_gives_the_logits_of_the_model_within_tolerance(model):
    src = sources(model, [4, 7, 2], seed=11)
    with torch.inference_mode():
        memory = model.encode(src, src_key_padding_mask=src != model.config.pad_id)
        memory = memory.last_hidden_state
        mask = src != model.config.pad_id
        plain = model.init_static_cache(memory, mask, 6)
        quantized = model.init_static_cache(memory, mask, 6, quantize="int8")
        assert quantized.form == "int8" and plain.form == "plain"
        ids = torch.full((3, 1), model.config.bos_id)
        for _ in range(6):
            a = model.decode(ids, memory, cache=plain).last_hidden_state[:, -1]
            b = model.decode(ids, memory, cache=quantized).last_hidden_state[:, -1]
            exact, got = model.logits(a), model.logits(b, cache=quantized)
            assert (got - exact).abs().max() <= 0.05 * exact.abs().max()
            assert not torch.equal(got, exact)  # the int8 path did run
            ids = exact.argmax(-1, keepdim=True)


@int8
def test_int8_decoding_of_a_trained_model_gives_its_tokens(copy_model):
    src = torch.randint(3, V, (16, 6), generator=torch.Generator().manual_seed(1))
    for decode in (greedy_decode, beam_search, sample):
        exact = decode(copy_model, src)
        got = decode(copy_model, src, quantize="int8")
        # A 150-step copy model still has a few near ties, and which way int8 takes
        # one depends on the CPU's kernels (one sentence of the 16 flipped on an AVX2
        # CPU with one thread): nearly every sentence, not every one, must agree.
        same = [i for i in range(len(src)) if got.tokens[i] == exact.tokens[i]]
        assert len(same) >= 14, (decode.__name__, len(same))
        # A sentence's log-probability, summed over its tokens: within 10%.
        torch.testing.assert_close(got.scores[same], exact.scores[same], atol=0.02, rtol=0.1)


@int8
def test_int8_weights_follow_the_model_when_it_changes():
    model = MODELS["pre-norm"]().eval()
    src = sources(model, [5, 3], seed=12)
    before = greedy_decode(model, src, quantize="int8", max_len=6).scores
    with torch.no_grad():
        model.decoder.layers[0].feed_forward.linear2.weight.mul_(3.0)
    after = greedy_decode(model, src, quantize="int8", max_len=6).scores
    exact = greedy_decode(model, src, max_len=6).scores
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, exact, atol=0.1, rtol=0.0)


def test_int8_errors():
    model = MODELS["post-norm"]().eval()
    src = sources(model, [3], seed=13)
    for static_cache in (True, False):  # the name first, whatever else is asked
        with pytest.raises(ValueError, match=r"quantize: expected one of \('int8',\) or None"):
            greedy_decode(model, src, quantize="int4", static_cache=static_cache)
    with pytest.raises(ValueError, match="needs the static cache"):
        greedy_decode(model, src, static_cache=False, quantize="int8")
    assert int8_unavailable(torch.device("cuda")) == "int8 weights run on a CPU only, not cuda"


# ---------------------------------------------------------------- CUDA graphs


def test_the_graph_path_with_a_stand_in_for_the_capture(monkeypatch):
    # What runs around a CUDA graph (buckets, padded sources, restarts, graphs kept per
    # model and dropped when a weight changes), on the CPU: the stand-in "replays" by
    # running the step again into the captured output buffer.
    from qkv import decoding

    captured: list[tuple[int, ...]] = []

    def capture(step, rewind, device):
        out = step()
        rewind()
        captured.append(tuple(out.shape))
        return (lambda: out.copy_(step())), out

    monkeypatch.setattr(decoding, "_capture", capture)
    monkeypatch.setattr(decoding, "_graphs_wanted", lambda device, flag: flag is not False)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(V, V, tie_output=False)).eval()
    src = sources(model, [4, 9, 6, 2], seed=10)
    for decode in (greedy_decode, beam_search):
        graphed = decode(model, src, max_len=12)
        eager = decode(model, src, max_len=12, cuda_graphs=False)
        assert graphed.tokens == eager.tokens
        torch.testing.assert_close(graphed.scores, eager.scores, **SCORE_TOL)
    assert captured == [(4, V), (16, V)]  # greedy's 4 rows, beam search's 4 × 4
    # Other lengths in the same buckets (source ≤ 32, output ≤ 64): the kept graph.
    other = sources(model, [3, 5, 7, 1], seed=11)
    assert greedy_decode(model, other, max_len=20).tokens == (
        greedy_decode(model, other, max_len=20, cuda_graphs=False).tokens
    )
    assert len(captured) == 2
    with torch.no_grad():
        model.decoder.layers[0].feed_forward.linear1.weight.mul_(1.5)
    assert greedy_decode(model, src, max_len=12).tokens == (
        greedy_decode(model, src, max_len=12, cuda_graphs=False).tokens
    )
    assert len(captured) == 3  # captured again for the new weights


# ---------------------------------------------------------------- CUDA graphs (GPU only)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graphs_give_the_tokens_of_the_eager_step(dtype):
    from qkv import decoding

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(V, V, tie_output=False)).eval()
    model = model.to(device="cuda", dtype=dtype)
    src = sources(model, [4, 9, 6, 2], seed=7).cuda()
    for decode in (greedy_decode, beam_search):
        eager = decode(model, src, cuda_graphs=False, max_len=20)
        graphed = decode(model, src, cuda_graphs=True, max_len=20)
        again = decode(model, src, cuda_graphs=True, max_len=20)  # the kept graph
        plain = decode(model, src, static_cache=False, max_len=20)
        assert graphed.tokens == again.tokens
        if dtype == torch.float32:
            assert graphed.tokens == eager.tokens == plain.tokens
        else:
            # The graph attends over padded buffers (masked): other kernels' rounding,
            # which bf16 may turn into another token now and then on a random model.
            same = [
                a == b
                for x, y in zip(graphed.tokens, eager.tokens, strict=True)
                for a, b in zip(x, y, strict=False)
            ]
            assert sum(same) >= 0.9 * len(same)
    graphs = decoding._GRAPHS[model]["graphs"]
    assert len(graphs) == 2  # one per batch size: b and b·k rows, same buckets
    with torch.no_grad():
        model.decoder.layers[0].feed_forward.linear1.weight.mul_(1.5)
    changed = greedy_decode(model, src, cuda_graphs=True, max_len=20)
    if dtype == torch.float32:
        assert changed.tokens == greedy_decode(model, src, cuda_graphs=False, max_len=20).tokens
    assert len(decoding._GRAPHS[model]["graphs"]) == 1  # recaptured for the new weights


@cuda
def test_cuda_graphs_are_the_default_on_cuda_and_batch_invariant():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(V, V, tie_output=False)).eval().cuda()
    src = sources(model, [3, 8, 5], seed=8).cuda()
    batched = beam_search(model, src, beam_size=4, max_len=10)
    for i in range(3):
        row = src[i : i + 1, : int((src[i] != PAD).sum())]
        assert beam_search(model, row, beam_size=4, max_len=10).tokens[0] == batched.tokens[i]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_bf16_static_cache_gives_the_tokens_of_the_growing_cache(activation):
    # On a CPU with bf16 oneDNN kernels the static step packs its weights for them
    # (qkv.layers.packs_bf16_weights); elsewhere it runs F.linear in bf16.
    torch.manual_seed(0)
    config = TransformerConfig.tiny(V, V, activation=activation, tie_output=False)
    model = Transformer(config).eval()
    with torch.no_grad():
        # Sharper next-token distributions, as a trained model has: a random model's
        # near ties go either way with bf16's rounding in one path or the other.
        model.output_proj.weight.mul_(8.0)
    model = model.to(torch.bfloat16)
    src = sources(model, [4, 9, 6, 2], seed=9)
    with torch.inference_mode():
        start = torch.full((len(src), 1), BOS)
        largest_logit = model(src, start).logits.float().abs().max().item()
    for decode in (greedy_decode, beam_search):
        fast = decode(model, src, max_len=12)
        plain = decode(model, src, static_cache=False, max_len=12)
        assert fast.tokens == plain.tokens
        # Each step's log-probability carries bf16's rounding (8 significant bits) of
        # logits this large, on the token's logit and on the normaliser, and the two
        # paths round at different places (more so without oneDNN's packed kernels):
        # summed over up to 12 steps.
        bound = 12 * 2 * 2**-8 * largest_logit
        torch.testing.assert_close(fast.scores, plain.scores, atol=bound, rtol=0.0)
