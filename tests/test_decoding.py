"""Greedy decoding and beam search: against plain references without a cache, batch
invariance, lengths and eos, and a model trained on a copy task that must copy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from qkv import Transformer, TransformerConfig
from qkv.decoding import (
    DecodingOutput,
    beam_search,
    gnmt_length_penalty,
    greedy_decode,
    sample_decode,
)

PAD, BOS = 0, 1
V = 16
# The random model's eos: with this seed, some of its sentences end with it and
# others run to their maximum length (the tests check that both happen).
RANDOM_EOS = 4
COPY_EOS = 2
NEG_INF = float("-inf")
SCORE_TOL = dict(atol=1e-4, rtol=0.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Every operation of a tiny model is microseconds of work; on a loaded 2-core
    # machine, two OpenMP threads wait ~10 ms per operation for each other (measured:
    # one greedy decode 1 s with 2 threads, 0.15 s with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_model() -> Transformer:
    torch.manual_seed(0)
    # An untied output projection: with the tied one a random model mostly predicts
    # its own input token, and every hypothesis is the same repeated token.
    return Transformer(TransformerConfig.tiny(V, V, tie_output=False)).eval()


def sources(lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=g) for n in lengths]


def pad_batch(rows: list[torch.Tensor], extra: int = 0) -> torch.Tensor:
    """Right-padded ``(b, longest + extra)``."""
    width = max(len(r) for r in rows) + extra
    return torch.stack([F.pad(r, (0, width - len(r)), value=PAD) for r in rows])


# ---------------------------------------------------------------- references


def next_log_probs(
    model: Transformer, src: torch.Tensor, prefixes: list[list[int]], t: int, eos: int, min_len: int
) -> list[list[float]]:
    """No cache: the whole ``bos + prefix`` through the whole model, last position only."""
    tgt = torch.tensor([[BOS, *p] for p in prefixes])  # (n, t + 1)
    with torch.inference_mode():
        logits = model(src.expand(len(prefixes), -1), tgt).logits[:, -1]  # (n, V)
    logp = torch.log_softmax(logits, dim=-1)
    logp[:, PAD] = NEG_INF
    if t < min_len:
        logp[:, eos] = NEG_INF
    return logp.tolist()


def reference_greedy(
    model: Transformer, src: torch.Tensor, *, eos: int, max_len: int, min_len: int = 0
) -> tuple[list[int], float]:
    tokens: list[int] = []
    score = 0.0
    for t in range(max_len):
        logp = next_log_probs(model, src, [tokens], t, eos, min_len)[0]
        best = max(range(V), key=lambda v: logp[v])  # the first maximum on ties
        score += logp[best]
        if best == eos:
            break
        tokens.append(best)
    return tokens, score


def reference_beam(
    model: Transformer,
    src: torch.Tensor,
    *,
    eos: int,
    k: int,
    alpha: float,
    max_len: int,
    min_len: int = 0,
) -> tuple[list[int], float, float]:
    """One sentence, hypotheses as python lists. Returns tokens, score, log-prob."""

    def lp(n: int) -> float:
        return ((5 + n) / 6) ** alpha

    alive: list[tuple[list[int], float]] = [([], 0.0)]
    best: tuple[float, float, list[int]] = (NEG_INF, NEG_INF, [])
    for t in range(max_len):
        n = t + 1
        rows = next_log_probs(model, src, [tokens for tokens, _ in alive], t, eos, min_len)
        candidates = [
            (logp + row[v], i, v)
            for i, ((_, logp), row) in enumerate(zip(alive, rows, strict=True))
            for v in range(V)
        ]
        # sorted() is stable: equal scores stay in (beam, token) order.
        candidates = sorted((c for c in candidates if c[0] > NEG_INF), key=lambda c: -c[0])
        candidates = candidates[: 2 * k]
        for logp, i, v in candidates[:k]:  # an eos must rank within the k beam slots
            if v == eos and logp / lp(n) > best[0]:
                best = (logp / lp(n), logp, alive[i][0])
        alive = [(alive[i][0] + [v], logp) for logp, i, v in candidates if v != eos][:k]
        if n == max_len:
            if alive[0][1] / lp(n) > best[0]:
                best = (alive[0][1] / lp(n), alive[0][1], alive[0][0])
            break
        if best[0] >= alive[0][1] / lp(max_len):
            break
    return best[2], best[0], best[1]


# ---------------------------------------------------------------- random weights


def test_greedy_with_cache_equals_the_no_cache_reference(random_model):
    rows = sources([1, 7, 3, 10, 5, 2], seed=1)
    out = greedy_decode(random_model, pad_batch(rows), bos_id=BOS, eos_id=RANDOM_EOS)
    ended = []
    for i, src in enumerate(rows):
        limit = len(src) + 50  # the default: each sentence's own length + 50
        tokens, score = reference_greedy(random_model, src, eos=RANDOM_EOS, max_len=limit)
        assert out.tokens[i] == tokens
        torch.testing.assert_close(out.scores[i].item(), score, **SCORE_TOL)
        ended.append(len(tokens) < limit)
    assert any(ended) and not all(ended), "want sentences ending at eos and at the limit"
    torch.testing.assert_close(out.log_probs, out.scores, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(("k", "alpha"), [(2, 0.6), (4, 0.6), (4, 0.0), (5, 1.5)])
def test_batched_beam_search_equals_the_unbatched_reference(random_model, k, alpha):
    rows = sources([4, 9, 1, 6, 2], seed=2)
    out = beam_search(
        random_model, pad_batch(rows), bos_id=BOS, eos_id=RANDOM_EOS, beam_size=k,
        length_penalty=alpha, max_len=12,
    )  # fmt: skip
    for i, src in enumerate(rows):
        tokens, score, logp = reference_beam(
            random_model, src, eos=RANDOM_EOS, k=k, alpha=alpha, max_len=12
        )
        assert out.tokens[i] == tokens, f"sentence {i}"
        torch.testing.assert_close(out.scores[i].item(), score, **SCORE_TOL)
        torch.testing.assert_close(out.log_probs[i].item(), logp, **SCORE_TOL)


def test_beam_search_with_default_lengths_equals_the_reference(random_model):
    rows = sources([3, 8, 1, 5], seed=3)
    out = beam_search(random_model, pad_batch(rows), bos_id=BOS, eos_id=RANDOM_EOS, beam_size=3)
    ended = []
    for i, src in enumerate(rows):
        limit = len(src) + 50
        tokens, score, _ = reference_beam(
            random_model, src, eos=RANDOM_EOS, k=3, alpha=0.6, max_len=limit
        )
        assert out.tokens[i] == tokens
        torch.testing.assert_close(out.scores[i].item(), score, **SCORE_TOL)
        ended.append(len(tokens) < limit)
    assert any(ended) and not all(ended), "want sentences ending at eos and at the limit"


def test_beam_size_one_without_length_penalty_is_greedy(random_model):
    # With α > 0 one beam may go on past greedy's eos: a longer hypothesis can score
    # higher after dividing by lp(|Y|). With α = 0 the two are the same search.
    src = pad_batch(sources([2, 9, 5, 1, 7], seed=4))
    greedy = greedy_decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=30)
    beam = beam_search(
        random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, beam_size=1, length_penalty=0.0,
        max_len=30,
    )  # fmt: skip
    assert beam.tokens == greedy.tokens
    torch.testing.assert_close(beam.scores, greedy.scores, atol=1e-5, rtol=0.0)


def test_scores_are_the_log_probabilities_of_the_output(random_model):
    rows = sources([5, 2, 8], seed=5)
    limit = 15
    for decode in (greedy_decode, beam_search):
        out = decode(random_model, pad_batch(rows), bos_id=BOS, eos_id=RANDOM_EOS, max_len=limit)
        for i, src in enumerate(rows):
            tokens = out.tokens[i]
            ended = len(tokens) < limit  # else cut at the limit, without eos
            scored = [*tokens, RANDOM_EOS] if ended else tokens
            tgt = torch.tensor([[BOS, *scored[:-1]]])
            with torch.inference_mode():
                logp = torch.log_softmax(random_model(src[None], tgt).logits[0], dim=-1)
            expected = logp.gather(1, torch.tensor(scored)[:, None]).sum().item()
            torch.testing.assert_close(out.log_probs[i].item(), expected, **SCORE_TOL)
            penalty = 1.0 if decode is greedy_decode else gnmt_length_penalty(len(scored), 0.6)
            torch.testing.assert_close(out.scores[i].item(), expected / penalty, **SCORE_TOL)


Decode = Callable[..., DecodingOutput]


@pytest.mark.parametrize("decode", [greedy_decode, beam_search], ids=["greedy", "beam"])
def test_batch_invariance(random_model, decode: Decode):
    # Neighbours shorter and longer than each sentence, so every sentence is padded
    # in some batch and some neighbour goes on decoding after it is done.
    rows = sources([6, 1, 10, 3, 8], seed=6)
    kwargs = dict(bos_id=BOS, eos_id=RANDOM_EOS)
    alone = [decode(random_model, src[None], **kwargs) for src in rows]
    for order, extra in (([0, 1, 2, 3, 4], 0), ([4, 2, 0, 3, 1], 3)):
        batch = pad_batch([rows[i] for i in order], extra=extra)
        together = decode(random_model, batch, **kwargs)
        for j, i in enumerate(order):
            assert together.tokens[j] == alone[i].tokens[0], f"sentence {i}"
            torch.testing.assert_close(together.scores[j], alone[i].scores[0], **SCORE_TOL)
    assert len({len(a.tokens[0]) for a in alone}) > 1, "want sentences ending at other steps"


def test_explicit_source_mask_is_the_default_one(random_model):
    src = pad_batch(sources([3, 7], seed=7), extra=2)
    default = beam_search(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=10)
    explicit = beam_search(
        random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=10,
        src_key_padding_mask=src != PAD,
    )  # fmt: skip
    assert explicit.tokens == default.tokens


@pytest.mark.parametrize("decode", [greedy_decode, beam_search], ids=["greedy", "beam"])
def test_max_and_min_length(random_model, decode: Decode):
    src = pad_batch(sources([4, 9, 2], seed=8))
    short = decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=3)
    assert all(len(t) <= 3 for t in short.tokens)
    # min_len = max_len: eos is never allowed, so every output has exactly max_len tokens.
    forced = decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=7, min_len=7)
    assert [len(t) for t in forced.tokens] == [7, 7, 7]
    assert all(RANDOM_EOS not in t and PAD not in t for t in forced.tokens)
    # The default (source + 50) is capped where the positional encoding ends.
    capped = Transformer(TransformerConfig.tiny(V, V, tie_output=False, max_len=12)).eval()
    out = decode(capped, src, bos_id=BOS, eos_id=RANDOM_EOS, min_len=100)
    assert [len(t) for t in out.tokens] == [12, 12, 12]


@pytest.mark.parametrize("decode", [greedy_decode, beam_search], ids=["greedy", "beam"])
def test_eos_ends_a_sentence_and_is_not_returned(random_model, decode: Decode):
    src = pad_batch(sources([5, 3], seed=9))
    kwargs = dict(bos_id=BOS, max_len=8)
    if decode is beam_search:
        # One beam without length penalty takes greedy's path, so the eos below is reached.
        kwargs.update(beam_size=1, length_penalty=0.0)
    first = decode(random_model, src, eos_id=RANDOM_EOS, **kwargs).tokens[0]
    # Declare eos a token of sentence 0's output that did not occur before it.
    j = next(j for j in range(1, len(first)) if first[j] not in first[:j])
    out = decode(random_model, src, eos_id=first[j], **kwargs)
    assert out.tokens[0] == first[:j]


def test_a_sentence_can_end_at_once(random_model):
    src = pad_batch(sources([4], seed=10))
    with torch.inference_mode():
        logp = torch.log_softmax(random_model(src, torch.tensor([[BOS]])).logits[0, 0], dim=-1)
        logp[PAD] = NEG_INF
    eos = int(logp.argmax())  # the first token greedy would produce: call it eos
    # Without length penalty no longer hypothesis can beat an eos ranked first.
    for kwargs in (dict(), dict(beam_size=4, length_penalty=0.0)):
        decode = beam_search if kwargs else greedy_decode
        out = decode(random_model, src, bos_id=BOS, eos_id=eos, **kwargs)
        assert out.tokens == [[]]
        torch.testing.assert_close(out.log_probs, logp[eos : eos + 1], **SCORE_TOL)
        out.scores -= 1.0  # ordinary tensors, not inference tensors: in-place works


def test_errors(random_model):
    src = pad_batch(sources([3], seed=11))
    with pytest.raises(ValueError, match="model.eval"):
        greedy_decode(random_model.train(), src, bos_id=BOS, eos_id=2)
    random_model.eval()
    cases = [
        (dict(eos_id=PAD), "must differ from pad_id"),
        (dict(eos_id=V), "outside the target vocabulary"),
        (dict(eos_id=2, max_len=0), "max_len must be at least 1"),
        (dict(eos_id=2, min_len=-1), "min_len must be >= 0"),
        (dict(eos_id=2, beam_size=0), "beam_size must be at least 1"),
        (dict(eos_id=2, length_penalty=-0.5), "must be >= 0"),
        (dict(eos_id=2, src_key_padding_mask=src.float()), "bool tensor"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            beam_search(random_model, src, bos_id=BOS, **kwargs)
    with pytest.raises(ValueError, match="batch"):
        greedy_decode(random_model, src[0], bos_id=BOS, eos_id=2)


# ---------------------------------------------------------------- trained on a copy task


def copy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of 3–7 symbols (ids 3..V-1), padded; and their lengths."""
    lengths = torch.randint(3, 8, (n,), generator=g)
    src = torch.randint(3, V, (n, int(lengths.max())), generator=g)
    src = src.masked_fill(torch.arange(src.shape[1]) >= lengths[:, None], PAD)  # (n, s)
    return src, lengths


@pytest.fixture(scope="module")
def copy_model(one_thread) -> Transformer:
    """A tiny Transformer trained to copy its source: 300 AdamW steps of 128 sentences,
    about 10 s (it then copies 200 of 200 unseen sentences with each of 3 seeds)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(V, V, dropout=0.0))
    steps = 300
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Short warmup, cosine decay: converges in fewer steps than a constant rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        src, lengths = copy_batch(128, g)
        n = src.shape[0]
        tgt_in = F.pad(src, (1, 0), value=BOS)  # (n, s + 1): bos + source
        tgt_out = F.pad(src, (0, 1), value=PAD)  # (n, s + 1): source + eos
        tgt_out[torch.arange(n), lengths] = COPY_EOS
        logits = model(src, tgt_in).logits  # (n, s + 1, V)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@pytest.mark.parametrize("decode", [greedy_decode, beam_search], ids=["greedy", "beam"])
def test_copy_trained_model_copies(copy_model, decode: Decode):
    src, lengths = copy_batch(32, torch.Generator().manual_seed(123))  # unseen sentences
    out = decode(copy_model, src, bos_id=BOS, eos_id=COPY_EOS)
    expected = [row[:n] for row, n in zip(src.tolist(), lengths.tolist(), strict=True)]
    assert out.tokens == expected
    assert (out.log_probs > -1.0).all()  # confident: probability > 1/e for every sentence


def test_copy_trained_model_matches_the_references(copy_model):
    src, lengths = copy_batch(4, torch.Generator().manual_seed(7))
    rows = [row[:n] for row, n in zip(src, lengths.tolist(), strict=True)]
    greedy = greedy_decode(copy_model, src, bos_id=BOS, eos_id=COPY_EOS)
    beam = beam_search(copy_model, src, bos_id=BOS, eos_id=COPY_EOS, beam_size=3)
    for i, row in enumerate(rows):
        tokens, score = reference_greedy(copy_model, row, eos=COPY_EOS, max_len=len(row) + 50)
        assert greedy.tokens[i] == tokens
        torch.testing.assert_close(greedy.scores[i].item(), score, **SCORE_TOL)
        tokens, score, _ = reference_beam(
            copy_model, row, eos=COPY_EOS, k=3, alpha=0.6, max_len=len(row) + 50
        )
        assert beam.tokens[i] == tokens
        torch.testing.assert_close(beam.scores[i].item(), score, **SCORE_TOL)


@pytest.mark.parametrize("decode", [greedy_decode, beam_search], ids=["greedy", "beam"])
def test_decoding_stops_when_every_sentence_is_done(copy_model, decode: Decode, monkeypatch):
    # The maximum length is source + 50, but a confident model ends right after the
    # copy: greedy one step after the longest output (its eos); beam search once
    # no alive hypothesis can beat the finished ones, a few steps later at most.
    src, lengths = copy_batch(8, torch.Generator().manual_seed(5))
    steps = 0
    decode_step = copy_model.decode

    def counting_decode(*args, **kwargs):
        nonlocal steps
        steps += 1
        return decode_step(*args, **kwargs)

    monkeypatch.setattr(copy_model, "decode", counting_decode)
    decode(copy_model, src, bos_id=BOS, eos_id=COPY_EOS)
    longest = int(lengths.max())
    if decode is greedy_decode:
        assert steps == longest + 1
    else:
        assert longest + 1 <= steps <= longest + 10


# ---------------------------------------------------------------- n-best


def reference_n_best(
    model: Transformer, src: torch.Tensor, *, eos: int, k: int, n: int, alpha: float, max_len: int
) -> list[tuple[list[int], float]]:
    """:func:`reference_beam` keeping the ``n`` best finished hypotheses: every eos
    within the k beam slots ends one, all alive beams end at the maximum length, and
    the search stops once no alive hypothesis can beat the n-th best."""

    def lp(length: int) -> float:
        return ((5 + length) / 6) ** alpha

    alive: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[float, list[int]]] = []
    for t in range(max_len):
        length = t + 1
        rows = next_log_probs(model, src, [tokens for tokens, _ in alive], t, eos, 0)
        candidates = [
            (logp + row[v], i, v)
            for i, ((_, logp), row) in enumerate(zip(alive, rows, strict=True))
            for v in range(V)
        ]
        candidates = sorted((c for c in candidates if c[0] > NEG_INF), key=lambda c: -c[0])
        candidates = candidates[: 2 * k]
        finished += [(lp_ / lp(length), alive[i][0]) for lp_, i, v in candidates[:k] if v == eos]
        alive = [(alive[i][0] + [v], logp) for logp, i, v in candidates if v != eos][:k]
        finished = sorted(finished, key=lambda f: -f[0])[:n]
        if length == max_len:
            finished = sorted(
                finished + [(logp / lp(length), tokens) for tokens, logp in alive],
                key=lambda f: -f[0],
            )[:n]
            break
        if len(finished) == n and finished[-1][0] >= alive[0][1] / lp(max_len):
            break
    return [(tokens, score) for score, tokens in finished]


def test_n_best_equals_the_reference_and_starts_with_the_best(random_model):
    rows = sources([4, 9, 1, 6], seed=12)
    src = pad_batch(rows)
    kwargs = dict(bos_id=BOS, eos_id=RANDOM_EOS, beam_size=4, length_penalty=0.6, max_len=12)
    single = beam_search(random_model, src, **kwargs)
    out = beam_search(random_model, src, n_best=3, **kwargs)
    for i, row in enumerate(rows):
        kept = out.n_best[i]
        assert len(kept) == 3
        expected = reference_n_best(
            random_model, row, eos=RANDOM_EOS, k=4, n=3, alpha=0.6, max_len=12
        )
        assert [h.tokens for h in kept] == [tokens for tokens, _ in expected], f"sentence {i}"
        for h, (_, score) in zip(kept, expected, strict=True):
            assert h.score == pytest.approx(score, abs=1e-4)
            scored = len(h.tokens) + (len(h.tokens) < 12)  # eos, unless cut at the limit
            assert h.score == pytest.approx(h.log_prob / gnmt_length_penalty(scored, 0.6), abs=1e-5)
        scores = [h.score for h in kept]
        assert scores == sorted(scores, reverse=True)  # best first
        assert len({tuple(h.tokens) for h in kept}) == 3  # distinct hypotheses
        # The first is the beam's best, the same as without n-best.
        assert kept[0].tokens == out.tokens[i] == single.tokens[i]
        assert kept[0].score == pytest.approx(single.scores[i].item(), abs=1e-6)
    assert [len(k) for k in single.n_best] == [1, 1, 1, 1]


def test_n_best_must_fit_in_the_beam(random_model):
    src = pad_batch(sources([3], seed=13))
    for n in (0, 4):
        with pytest.raises(ValueError, match=rf"n_best must be from 1 to beam_size \(3\), got {n}"):
            beam_search(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, beam_size=3, n_best=n)


# ---------------------------------------------------------------- sampling


def sample(model: Transformer, src: torch.Tensor, seed: int, **kwargs) -> DecodingOutput:
    kwargs.setdefault("max_len", 10)
    generator = torch.Generator().manual_seed(seed)
    return sample_decode(model, src, bos_id=BOS, eos_id=RANDOM_EOS, generator=generator, **kwargs)


def test_sampling_is_reproducible_with_a_seed_and_differs_across_seeds(random_model):
    src = pad_batch(sources([5, 3, 8, 2], seed=14))
    first = sample(random_model, src, seed=1)
    assert sample(random_model, src, seed=1).tokens == first.tokens
    torch.testing.assert_close(sample(random_model, src, seed=1).scores, first.scores)
    assert sample(random_model, src, seed=2).tokens != first.tokens
    greedy = greedy_decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=10)
    assert first.tokens != greedy.tokens  # a random model's distribution is flat: it varies


@pytest.mark.parametrize("cut", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)])
def test_sampling_cut_to_the_top_token_is_greedy(random_model, cut):
    src = pad_batch(sources([5, 3, 8, 2, 6], seed=15))
    greedy = greedy_decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, max_len=10)
    for seed in (1, 2):
        out = sample(random_model, src, seed=seed, **cut)
        assert out.tokens == greedy.tokens
        torch.testing.assert_close(out.scores, greedy.scores, atol=1e-5, rtol=0.0)


def model_log_probs(model: Transformer, src: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Teacher-forced log-probabilities of every step's next token. Shape ``(len + 1, V)``."""
    tgt = torch.tensor([[BOS, *tokens]])
    with torch.inference_mode():
        logp = torch.log_softmax(model(src[None], tgt).logits[0], dim=-1)
        logp[:, PAD] = NEG_INF
    return logp.clone()


@pytest.mark.parametrize(("top_k", "top_p"), [(3, 1.0), (None, 0.5), (4, 0.6)])
def test_sampled_tokens_stay_inside_the_top_k_and_the_nucleus(random_model, top_k, top_p):
    rows = sources([6, 4, 9], seed=16)
    for seed in range(3):
        out = sample(random_model, pad_batch(rows), seed=seed, top_k=top_k, top_p=top_p)
        for i, src in enumerate(rows):
            tokens = out.tokens[i]
            ended = len(tokens) < 10
            scored = [*tokens, RANDOM_EOS] if ended else tokens
            logp = model_log_probs(random_model, src, tokens)[: len(scored)]
            # The score: the model's own log-probabilities of what was drawn.
            expected = logp.gather(1, torch.tensor(scored)[:, None]).sum().item()
            assert out.log_probs[i].item() == pytest.approx(expected, abs=1e-4)
            for step, token in enumerate(scored):
                probs, order = logp[step].exp().sort(descending=True)
                rank = (order == token).nonzero().item()
                if top_k is not None:
                    assert rank < top_k
                kept = probs[: top_k or V]
                kept = kept / kept.sum()
                assert kept[:rank].sum().item() < top_p  # the mass before it is under top_p


def test_sampling_draws_from_the_model_distribution(random_model):
    # 4000 draws of the first token of one sentence: frequencies near the probabilities.
    src = pad_batch(sources([5], seed=17)).expand(4000, -1)
    out = sample(random_model, src, seed=0, max_len=1)
    drawn = torch.tensor([t[0] if t else RANDOM_EOS for t in out.tokens])
    frequency = torch.bincount(drawn, minlength=V).float() / len(drawn)
    probs = model_log_probs(random_model, src[0], [])[0].exp()
    torch.testing.assert_close(frequency, probs, atol=0.03, rtol=0.0)


def test_sampling_respects_max_and_min_length(random_model):
    src = pad_batch(sources([4, 9, 2], seed=18))
    forced = sample(random_model, src, seed=3, max_len=6, min_len=6)
    assert [len(t) for t in forced.tokens] == [6, 6, 6]
    assert all(RANDOM_EOS not in t and PAD not in t for t in forced.tokens)


def test_sampling_errors(random_model):
    src = pad_batch(sources([3], seed=19))
    cases = [
        (dict(temperature=0.0), "temperature must be > 0 and finite, got 0.0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(temperature=float("nan")), "temperature must be > 0"),
        (dict(temperature=float("inf")), "temperature must be > 0 and finite"),
        (dict(top_k=0), "top_k must be at least 1, got 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sample_decode(random_model, src, bos_id=BOS, eos_id=RANDOM_EOS, **kwargs)
    with pytest.raises(ValueError, match="model.eval"):
        sample_decode(random_model.train(), src, bos_id=BOS, eos_id=RANDOM_EOS)
    random_model.eval()


def test_copy_trained_model_samples_its_copy(copy_model):
    # A confident model: sampling (temperature 1, no cut) draws the copy almost surely.
    src, lengths = copy_batch(16, torch.Generator().manual_seed(21))
    out = sample_decode(
        copy_model, src, bos_id=BOS, eos_id=COPY_EOS, generator=torch.Generator().manual_seed(0)
    )
    expected = [row[:n] for row, n in zip(src.tolist(), lengths.tolist(), strict=True)]
    assert sum(o == e for o, e in zip(out.tokens, expected, strict=True)) >= 14
