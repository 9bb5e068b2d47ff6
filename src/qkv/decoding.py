"""Greedy decoding, beam search and sampling for the seq2seq :class:`~qkv.models.Transformer`.

All three encode the source once, then run the decoder one new token per step with a
key/value cache (:meth:`Transformer.decode` with ``cache=``), so a step costs the
same at every position instead of re-reading the whole prefix. Beam search follows
the surviving hypotheses with ``cache.reorder(index)`` (section 6.1 of Vaswani et
al. 2017: beam size 4, length penalty α = 0.6, maximum length source + 50), and
can return its ``n_best`` best finished hypotheses; ``style="hugging_face"`` scores and
stops as ``transformers``' ``generate`` does (for Marian models). Sampling draws each token from
the model's distribution, sharpened or flattened by a temperature and cut to the
``top_k`` most probable tokens and to the nucleus of probability ``top_p`` (Holtzman
et al. 2020).

The cache is by default a static one (:meth:`Transformer.init_static_cache`): buffers
allocated once for the longest output and written in place, the source's
cross-attention keys and values projected once, and a lean step
(:meth:`qkv.layers.Decoder.step`); on a CUDA device each step is replayed as a CUDA
graph. ``static_cache=False`` runs the growing cache of :meth:`Transformer.init_cache`
instead; both give the same tokens up to floating-point rounding.

Notation:
    b   sentences in the batch
    k   beams per sentence (``beam_size``)
    s   source length (padded)
    d   model width
    V   target vocabulary
    t   target tokens decoded so far (the step)

Conventions shared by the three functions:

- Decoding of sentence ``i`` stops at ``eos_id`` or after ``max_len[i]`` new tokens,
  whichever comes first; ``max_len`` counts the eos token, so at most that many
  decoder steps run. The returned token lists hold neither bos nor eos.
- A score is a sum of natural-log probabilities of the tokens produced, eos
  included when it was produced. Padding is never produced.
- Greedy decoding and beam search are batch-invariant: each sentence's result
  depends only on its own source. Its padding is masked, its maximum length comes
  from its own length, and once it is done it is frozen while the rest of the batch
  goes on. (Up to floating-point
  rounding: a batch of a different size runs other matrix-multiply kernels, so two
  candidates closer than ~1e-6 in score may swap.) Sampling is reproducible with
  the same generator state and the same batch, not across other batchings: the
  batch draws its random numbers together.
- The model must be in eval mode (dropout would make decoding random); the
  functions raise rather than switch it silently, and run under
  ``torch.inference_mode``.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.attention import weights_version
from qkv.embedding import check_token_ids
from qkv.layers import DecoderCache, StaticDecoderCache
from qkv.masks import padding_mask_from_ids
from qkv.models.transformer import Transformer
from qkv.quantize import QUANTIZATIONS

__all__ = [
    "MAX_LEN_MARGIN",
    "DecodingOutput",
    "Hypothesis",
    "beam_search",
    "gnmt_length_penalty",
    "greedy_decode",
    "sample_decode",
]

# Default maximum output length: source length + 50 (Vaswani et al. 2017, section 6.1).
MAX_LEN_MARGIN = 50

log = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    """One finished hypothesis: ``tokens`` without bos and eos, their total
    ``log_prob`` and the beam's ``score`` (``log_prob / lp(|Y|)``)."""

    tokens: list[int]
    log_prob: float
    score: float


@dataclass
class DecodingOutput:
    """One hypothesis per sentence.

    ``tokens[i]``: the output ids of sentence ``i``, without bos and eos.
    ``log_probs``: ``(b,)`` their total log-probability (eos included when produced).
    ``scores``: ``(b,)`` what the search maximised: ``log_probs`` for greedy decoding
    and sampling, ``log_probs / lp(|Y|)`` for beam search (see
    :func:`gnmt_length_penalty`).
    ``n_best[i]``: beam search only (else empty): sentence ``i``'s best finished
    hypotheses, best first, at most ``n_best`` of them; the first is ``tokens[i]``.
    """

    tokens: list[list[int]]
    log_probs: Tensor
    scores: Tensor
    n_best: list[list[Hypothesis]] = field(default_factory=list)


def gnmt_length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's length penalty ``lp(Y) = ((5 + |Y|) / 6) ** α`` (Wu et al. 2016, eq. 14).

    ``|Y|`` counts the scored tokens (eos included). Log-probabilities only fall as a
    hypothesis grows; dividing by ``lp`` (≥ 1, growing with length when α > 0) stops
    beam search from preferring short outputs. α = 0 turns it off.
    """
    return ((5 + length) / 6) ** alpha


def greedy_decode(
    model: Transformer,
    src_ids: Tensor,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    max_len: int | None = None,
    min_len: int = 0,
    src_key_padding_mask: Tensor | None = None,
    static_cache: bool = True,
    cuda_graphs: bool | None = None,
    quantize: str | None = None,
) -> DecodingOutput:
    """Pick the most probable next token at every step (ties: the lowest id).

    Args:
        model: an encoder–decoder :class:`Transformer` in eval mode.
        src_ids: source ids, padded with ``model.config.pad_id``.
        bos_id: first decoder input; eos_id: ends a sentence. Default: the model's
            (``model.config.bos_id``, ``eos_id``; Marian starts with its pad id).
        max_len: most new tokens per sentence, eos included; default: each
            sentence's own (unpadded) source length + 50. Capped by the model's
            ``config.max_len`` positions.
        min_len: eos is not allowed before this many output tokens (benchmarks use
            ``min_len = max_len`` to force a fixed number of steps).
        src_key_padding_mask: True = real source token; default ``src_ids != pad_id``.
        static_cache: decode with a key/value cache allocated once and written in place
            (:meth:`Transformer.init_static_cache`), the source's cross-attention keys
            and values projected once; ``False``: the cache that grows by concatenation
            (:meth:`Transformer.init_cache`). Both give the same tokens up to
            floating-point rounding. Models whose decoder cannot take a static cache
            use the other one.
        cuda_graphs: replay each decoder step as a CUDA graph, captured once per batch
            size, source-length bucket and output-length bucket and kept for later
            calls (needs ``static_cache``). ``None``: on for a model on a CUDA device.
            If a capture fails, decoding goes on without graphs (with a warning).
        quantize: ``"int8"``: the decoder's matrices and the output projection as
            int8 copies (:mod:`qkv.quantize`; a CPU only, needs ``static_cache``):
            a quarter of the bytes to read per step, outputs within a tolerance of
            the model's own (a near tie may pick another token). None: the model's
            weights.

    Shape:
        src_ids ``(b, s)``, src_key_padding_mask ``(b, s)``; returns ``b`` token lists
        and ``(b,)`` log-probabilities (= scores).
    """
    src_mask, limits, bos_id, eos_id = _prepare(
        model, src_ids, bos_id, eos_id, max_len, min_len, src_key_padding_mask
    )
    # The first maximum on ties (torch.argmax's documented choice).
    out = _step_by_step(
        model,
        src_ids,
        src_mask,
        limits,
        bos_id=bos_id,
        eos_id=eos_id,
        min_len=min_len,
        choose=lambda logp: logp.argmax(dim=-1),
        static_cache=static_cache,
        cuda_graphs=cuda_graphs,
        quantize=quantize,
    )
    return _ordinary_tensors(out)


def sample_decode(
    model: Transformer,
    src_ids: Tensor,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    max_len: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    src_key_padding_mask: Tensor | None = None,
    static_cache: bool = True,
    cuda_graphs: bool | None = None,
    quantize: str | None = None,
) -> DecodingOutput:
    """Draw each next token at random from the model's distribution, filtered.

    At each step the log-probabilities are divided by ``temperature`` (below 1:
    sharper, above 1: flatter); only the ``top_k`` most probable tokens are kept,
    then only the smallest set of the most probable ones whose probability (after
    the temperature and top-k) reaches ``top_p`` (nucleus sampling; the most
    probable token always stays). Ties in probability keep the lower ids, as
    greedy decoding does: ``top_k=1`` or a tiny ``top_p`` is greedy decoding.

    Args:
        temperature: > 0.
        top_k: ≥ 1, or None for no cut.
        top_p: in (0, 1]; 1 keeps every token.
        generator: the random numbers' source, on ``src_ids``' device; None: torch's
            global generator. The same generator state and the same batch give the
            same output.
        Others: as :func:`greedy_decode`.

    Shape:
        src_ids ``(b, s)``; returns ``b`` token lists and ``(b,)`` log-probabilities
        (= scores) of the sampled tokens under the model's own distribution (no
        temperature, no filtering), comparable with greedy decoding's.
    """
    if not (temperature > 0 and math.isfinite(temperature)):  # NaN fails every test
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    src_mask, limits, bos_id, eos_id = _prepare(
        model, src_ids, bos_id, eos_id, max_len, min_len, src_key_padding_mask
    )
    out = _step_by_step(
        model,
        src_ids,
        src_mask,
        limits,
        bos_id=bos_id,
        eos_id=eos_id,
        min_len=min_len,
        choose=lambda logp: _sample_tokens(logp, temperature, top_k, top_p, generator),
        static_cache=static_cache,
        cuda_graphs=cuda_graphs,
        quantize=quantize,
    )
    return _ordinary_tensors(out)


def _sample_tokens(
    logp: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row drawn from the filtered distribution (see :func:`sample_decode`).
    Shape: logp ``(n, V)`` -> ``(n,)``."""
    # Sorted once, most probable first; stable, so equal ones stay in id order.
    sorted_logp, sorted_ids = logp.sort(dim=-1, descending=True, stable=True)  # (n, V)
    scaled = sorted_logp / temperature  # (n, V)
    rank = torch.arange(scaled.shape[-1], device=scaled.device)  # (V,)
    drop = torch.zeros_like(scaled, dtype=torch.bool)  # (n, V)
    if top_k is not None:
        drop |= rank >= top_k
    if top_p < 1:
        probs = torch.softmax(scaled.masked_fill(drop, float("-inf")), dim=-1)  # (n, V)
        before = probs.cumsum(dim=-1) - probs  # (n, V) mass of the more probable tokens
        drop |= before >= top_p  # the first token has 0 before it: always kept
    probs = torch.softmax(scaled.masked_fill(drop, float("-inf")), dim=-1)  # (n, V)
    choice = torch.multinomial(probs, 1, generator=generator)  # (n, 1) rank drawn
    return sorted_ids.gather(1, choice)[:, 0]  # (n,)


@torch.inference_mode()
def _step_by_step(
    model: Transformer,
    src_ids: Tensor,
    src_mask: Tensor,
    limits: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    min_len: int,
    choose: Callable[[Tensor], Tensor],
    static_cache: bool = True,
    cuda_graphs: bool | None = None,
    quantize: str | None = None,
) -> DecodingOutput:
    """Greedy decoding and sampling: one token per sentence and step, picked by
    ``choose(logp) -> (b,)`` from the ``(b, V)`` log-probabilities."""
    b, device, pad_id = src_ids.shape[0], src_ids.device, model.config.pad_id
    memory = model.encode(src_ids, src_key_padding_mask=src_mask).last_hidden_state  # (b, s, d)
    step = _DecoderSteps(
        model, memory, src_mask, int(limits.max()), static_cache, cuda_graphs, quantize
    )
    inputs = torch.full((b, 1), bos_id, dtype=torch.long, device=device)  # (b, 1)
    log_probs = torch.zeros(b, device=device)  # (b,)
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # (b,) output tokens, no eos
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (b,)
    produced: list[Tensor] = []  # t × (b,)
    for t in range(int(limits.max())):
        logits = step(inputs)  # (b, V)
        logp = _next_log_probs(
            model, logits, t, eos_id=eos_id, min_len=min_len, last=t + 1 >= limits
        )  # (b, V)
        token = choose(logp)  # (b,)
        token_logp = logp.gather(1, token[:, None])[:, 0]  # (b,)
        # Sentences already done emit padding and add nothing to their score.
        token = token.masked_fill(done, pad_id)
        log_probs += token_logp.masked_fill(done, 0.0)
        ended = token == eos_id
        lengths += (~done & ~ended).long()
        produced.append(token)
        done |= ended | (t + 1 >= limits)
        if bool(done.all()):  # one host sync per step: stop as soon as all are done
            break
        inputs = token[:, None]  # (b, 1)
    tokens = torch.stack(produced, dim=1)  # (b, t)
    return DecodingOutput(_to_lists(tokens, lengths), log_probs, log_probs)


def beam_search(
    model: Transformer,
    src_ids: Tensor,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    min_len: int = 0,
    src_key_padding_mask: Tensor | None = None,
    n_best: int = 1,
    style: Literal["gnmt", "hugging_face"] = "gnmt",
    early_stopping: bool | Literal["never"] = False,
    static_cache: bool = True,
    cuda_graphs: bool | None = None,
    quantize: str | None = None,
) -> DecodingOutput:
    """Beam search with GNMT's length penalty, all sentences in one batch of ``b × k`` rows.

    Each step extends every alive hypothesis by every token and keeps the ``2k`` best
    candidates by log-probability (ties: as ``torch.topk`` orders them). An eos
    candidate ranked within the first ``k`` (it would have taken a beam slot) ends a
    hypothesis, scored ``log_prob / lp(|Y|)``; the first ``k`` candidates that do not
    end in eos are the next alive beams. A hypothesis that reaches its sentence's
    maximum length ends there, scored the same way (all its alive beams do). The
    ``n_best`` best finished hypotheses of a sentence are kept; a new one passes a
    kept one only if strictly better.

    A sentence is done when no alive hypothesis can beat its best finished one
    (with ``n_best > 1``: its ``n_best``-th best, so that the list is complete):
    log-probabilities only fall, so an alive hypothesis can at best end with
    ``log_prob / lp(max_len)`` (Wu et al. 2016; tensor2tensor's stopping rule). The
    result is then the same as if the search had gone on to the maximum length,
    which is what makes freezing a done sentence inside a batch exact.

    With α = 0 and ``beam_size=1`` this is greedy decoding. With α > 0 a single beam
    may search past greedy's eos, since a longer hypothesis can score higher after
    the length normalisation.

    ``style="hugging_face"`` follows ``transformers``' ``generate(num_beams=k)``
    instead, for models brought from there (Marian): a finished hypothesis scores
    ``log_prob / |Y| ** α`` (α is ``generate``'s ``length_penalty``, 1.0 there; any
    finite value), ``k`` finished ones are kept per sentence, and a sentence stops by
    ``generate``'s rule for ``early_stopping``: ``True``, as soon as it has ``k``
    finished hypotheses; ``False`` (its default), when it has ``k`` and the best alive
    one, normalised at its current length, does not beat the worst of them (a
    heuristic: a longer hypothesis might still have); ``"never"``, the same with the
    best alive one normalised at the maximum length (when α > 0).

    Args:
        beam_size: hypotheses kept per sentence (``k``).
        length_penalty: GNMT's α ≥ 0.
        n_best: finished hypotheses returned per sentence in ``DecodingOutput.n_best``,
            1 to ``beam_size``. The best one is the same whatever ``n_best`` is.
        style: ``"gnmt"`` (above) or ``"hugging_face"``.
        early_stopping: the stopping rule of ``style="hugging_face"``; unused by
            ``"gnmt"``, whose rule is exact.
        Others: as :func:`greedy_decode`.

    Shape:
        src_ids ``(b, s)``; returns ``b`` token lists, ``(b,)`` log-probabilities,
        ``(b,)`` scores and ``b`` lists of up to ``n_best`` hypotheses (fewer only
        where the search found fewer, e.g. a tiny vocabulary).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be from 1 to beam_size ({beam_size}), got {n_best}")
    if style not in ("gnmt", "hugging_face"):
        raise ValueError(f"style must be 'gnmt' or 'hugging_face', got {style!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if style == "gnmt" and (not length_penalty >= 0 or length_penalty == float("inf")):
        # NaN fails every test
        raise ValueError(f"length_penalty (α) must be >= 0 and finite, got {length_penalty}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty (α) must be finite, got {length_penalty}")
    src_mask, limits, bos_id, eos_id = _prepare(
        model, src_ids, bos_id, eos_id, max_len, min_len, src_key_padding_mask
    )
    out = _beam(
        model,
        src_ids,
        src_mask,
        limits,
        bos_id=bos_id,
        eos_id=eos_id,
        k=beam_size,
        alpha=length_penalty,
        min_len=min_len,
        n_best=n_best,
        style=style,
        early_stopping=early_stopping,
        static_cache=static_cache,
        cuda_graphs=cuda_graphs,
        quantize=quantize,
    )
    return _ordinary_tensors(out)


@torch.inference_mode()
def _beam(
    model: Transformer,
    src_ids: Tensor,
    src_mask: Tensor,
    limits: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    k: int,
    alpha: float,
    min_len: int,
    n_best: int,
    style: str = "gnmt",
    early_stopping: bool | str = False,
    static_cache: bool = True,
    cuda_graphs: bool | None = None,
    quantize: str | None = None,
) -> DecodingOutput:
    b, device, pad_id = src_ids.shape[0], src_ids.device, model.config.pad_id
    hugging_face = style == "hugging_face"

    def length_penalty(length: int | Tensor) -> float | Tensor:
        return length**alpha if hugging_face else gnmt_length_penalty(length, alpha)

    returned = n_best
    # generate keeps k finished hypotheses per sentence: its stopping rule needs them.
    n_best = k if hugging_face else n_best
    neg_inf = float("-inf")
    memory = model.encode(src_ids, src_key_padding_mask=src_mask).last_hidden_state  # (b, s, d)
    # Each sentence's memory k times, once: row i·k + j is beam j of sentence i.
    memory = memory.repeat_interleave(k, dim=0)  # (b·k, s, d)
    memory_mask = src_mask.repeat_interleave(k, dim=0)  # (b·k, s)
    first_row = torch.arange(b, device=device)[:, None] * k  # (b, 1) row of beam 0
    max_steps = int(limits.max())
    step = _DecoderSteps(model, memory, memory_mask, max_steps, static_cache, cuda_graphs, quantize)
    last_lp = length_penalty(limits.float())  # (b,) lp at each one's max length

    # The k start beams are one hypothesis (bos alone). Only beam 0 may expand at the
    # first step, or the beam would fill with k copies of the best continuation.
    alive_logp = torch.full((b, k), neg_inf, device=device)  # (b, k)
    alive_logp[:, 0] = 0.0
    alive_tokens = torch.empty(b * k, 0, dtype=torch.long, device=device)  # (b·k, t)
    inputs = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)  # (b·k, 1)
    # The n_best best finished hypotheses of each sentence, best first (N = n_best).
    best_score = torch.full((b, n_best), neg_inf, device=device)  # (b, N)
    best_logp = torch.full((b, n_best), neg_inf, device=device)  # (b, N)
    best_tokens = torch.full(
        (b, n_best, max_steps), pad_id, dtype=torch.long, device=device
    )  # (b, N, T)
    best_len = torch.zeros(b, n_best, dtype=torch.long, device=device)  # (b, N)
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (b,)
    rank = torch.arange(2 * k, device=device)  # (2k,)

    def keep_if_better(score: Tensor, logp: Tensor, tokens: Tensor) -> None:
        """Merge the finished hypotheses ``tokens`` into their sentences' n_best best.
        A stable sort with the kept ones first: a new hypothesis passes a kept one only
        if strictly better, and equal new ones keep their rank order; -inf never enters.
        Shape: score, logp ``(b, c)``; tokens ``(b, c, length)``, without eos."""
        nonlocal best_score, best_logp, best_tokens, best_len
        c, length = tokens.shape[1], tokens.shape[2]
        padded = F.pad(tokens, (0, max_steps - length), value=pad_id)  # (b, c, T)
        scores = torch.cat([best_score, score], dim=1)  # (b, N + c)
        order = scores.sort(dim=1, descending=True, stable=True).indices[:, :n_best]  # (b, N)
        lengths = torch.cat([best_len, best_len.new_full((b, c), length)], dim=1)  # (b, N + c)
        all_tokens = torch.cat([best_tokens, padded], dim=1)  # (b, N + c, T)
        best_tokens = all_tokens.gather(1, order[:, :, None].expand(-1, -1, max_steps))
        best_len = lengths.gather(1, order)
        best_logp = torch.cat([best_logp, logp], dim=1).gather(1, order)
        best_score = scores.gather(1, order)

    for t in range(max_steps):
        n = t + 1  # scored tokens of a hypothesis that ends at this step
        lp = length_penalty(n)
        logits = step(inputs)  # (b·k, V)
        last = (t + 1 >= limits).repeat_interleave(k)  # (b·k,)
        logp = _next_log_probs(model, logits, t, eos_id=eos_id, min_len=min_len, last=last)
        vocab = logp.shape[-1]
        candidates = alive_logp.view(b * k, 1) + logp  # (b·k, V)
        candidates = candidates.view(b, k * vocab)  # (b, k·V): index j = beam j // V, token j % V
        top_logp, top_index = candidates.topk(2 * k, dim=-1)  # (b, 2k), best first
        top_beam, top_token = top_index // vocab, top_index % vocab  # (b, 2k)
        is_eos = top_token == eos_id  # (b, 2k)

        # Hypotheses ending in eos now. They all have length n, so their order by
        # log-probability is their order by score. (-inf candidates are beams that
        # never were: the first step, or a done sentence.)
        ends = is_eos & (rank < k) & top_logp.isfinite() & ~done[:, None]  # (b, 2k)
        end_score = torch.where(ends, top_logp / lp, neg_inf)  # (b, 2k)
        end_rows = first_row + top_beam  # (b, 2k) the row of each candidate's beam
        keep_if_better(end_score, top_logp, alive_tokens[end_rows])

        # The next alive beams: the first k candidates not ending in eos (a stable
        # sort on the flag keeps their rank order; at most k of the 2k are eos).
        keep = torch.sort(is_eos.byte(), dim=-1, stable=True).indices[:, :k]  # (b, k)
        alive_logp = top_logp.gather(1, keep)  # (b, k), best first
        rows = (first_row + top_beam.gather(1, keep)).view(-1)  # (b·k,) row each beam extends
        new_tokens = top_token.gather(1, keep).view(-1)  # (b·k,)
        alive_tokens = torch.cat([alive_tokens[rows], new_tokens[:, None]], dim=1)  # (b·k, n)
        step.reorder(rows)
        inputs = new_tokens[:, None]  # (b·k, 1)

        # At its maximum length a sentence's alive beams end as they are (beam 0 is
        # its best).
        at_limit = (n >= limits) & ~done  # (b,)
        keep_if_better(
            torch.where(at_limit[:, None], alive_logp / lp, neg_inf),
            alive_logp,
            alive_tokens.view(b, k, n),
        )
        if hugging_face:
            # generate's rule: k finished, and (but with early_stopping=True) the best
            # alive one, at its length now or ("never", α > 0) at the maximum, no better.
            bound = last_lp if early_stopping == "never" and alpha > 0 else lp
            beaten = best_score[:, -1] > neg_inf  # (b,)
            if early_stopping is not True:
                beaten &= best_score[:, -1] >= alive_logp[:, 0] / bound
        else:
            # No alive hypothesis can enter the n_best any more.
            beaten = best_score[:, -1] >= alive_logp[:, 0] / last_lp  # (b,)
        done |= at_limit | beaten
        if bool(done.all()):  # one host sync per step: stop as soon as all are done
            break
        # Frozen: a done sentence's beams produce only -inf candidates from now on.
        alive_logp = alive_logp.masked_fill(done[:, None], neg_inf)
    kept: list[list[Hypothesis]] = [
        [
            Hypothesis(row[:length], logp, score)
            for row, length, logp, score in zip(*columns, strict=True)
            if score > neg_inf
        ][:returned]
        for columns in zip(
            best_tokens.tolist(),
            best_len.tolist(),
            best_logp.tolist(),
            best_score.tolist(),
            strict=True,
        )
    ]
    return DecodingOutput(
        _to_lists(best_tokens[:, 0], best_len[:, 0]), best_logp[:, 0], best_score[:, 0], kept
    )


class _DecoderSteps:
    """The decoder, one new token per row and call, for the search loops: with a static
    cache (replayed as a CUDA graph where asked and possible) or the growing one.

    Shape: memory ``(n, s, d)``, memory_mask ``(n, s)``; ``step(inputs (n, 1))`` ->
    the next token's logits ``(n, V)``.
    """

    def __init__(
        self,
        model: Transformer,
        memory: Tensor,
        memory_mask: Tensor,
        max_steps: int,
        static_cache: bool,
        cuda_graphs: bool | None,
        quantize: str | None = None,
    ) -> None:
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        static = static_cache and model.supports_static_cache
        if quantize is not None and quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize: expected one of {QUANTIZATIONS} or None, got {quantize!r}")
        if quantize is not None and not static:
            raise ValueError(
                f"quantize={quantize!r} needs the static cache (static_cache=True and a "
                "model with plain decoder layers)"
            )
        self.graph = None
        if static and quantize is None and _graphs_wanted(memory.device, cuda_graphs):
            self.graph = _graphed_step(model, memory, memory_mask, max_steps)
        self.cache: DecoderCache | StaticDecoderCache
        if self.graph is not None:
            self.cache = self.graph.cache
        elif static:
            self.cache = model.init_static_cache(memory, memory_mask, max_steps, quantize=quantize)
        else:
            self.cache = model.init_cache()

    def __call__(self, inputs: Tensor) -> Tensor:
        if self.graph is not None:
            return self.graph(inputs)
        hidden = self.model.decode(
            inputs, self.memory, memory_key_padding_mask=self.memory_mask, cache=self.cache
        ).last_hidden_state[:, -1]  # (n, d)
        if isinstance(self.cache, StaticDecoderCache):
            return self.model.logits(hidden, cache=self.cache)
        return self.model.logits(hidden)

    def reorder(self, rows: Tensor) -> None:
        """Beam search: row ``i`` continues row ``rows[i]``, always a beam of the same
        sentence, so the static cache's source keys and values stay as they are."""
        if isinstance(self.cache, StaticDecoderCache):
            self.cache.reorder(rows, cross=False)
        else:
            self.cache.reorder(rows)


class _GraphedStep:
    """One decoder step captured as a CUDA graph on the buffers of a static ``cache``:
    a call copies the new tokens into the graph's input, replays the graph and returns
    its output buffer (overwritten by the next call). Shape: ``(n, 1)`` -> logits
    ``(n, V)``."""

    def __init__(self, model: Transformer, memory: Tensor, cache: StaticDecoderCache) -> None:
        self.cache = cache
        self.ids = torch.full(
            (memory.shape[0], 1), model.config.bos_id, dtype=torch.long, device=memory.device
        )

        def step() -> Tensor:
            hidden = model.decode(self.ids, memory, cache=cache).last_hidden_state[:, -1]
            return model.logits(hidden, cache=cache)  # (n, V)

        def rewind() -> None:
            cache.position.zero_()
            cache.offset = 0

        self.replay, self.logits = _capture(step, rewind, memory.device)

    def __call__(self, inputs: Tensor) -> Tensor:
        if self.cache.offset >= self.cache.max_len:
            raise ValueError(f"the static cache holds {self.cache.max_len} positions, all used")
        self.ids.copy_(inputs)
        self.replay()  # writes the keys and values at the position and advances it
        self.cache.offset += 1
        return self.logits


def _capture(
    step: Callable[[], Tensor], rewind: Callable[[], None], device: torch.device
) -> tuple[Callable[[], None], Tensor]:
    """``step`` captured as a CUDA graph: the graph's replay and the output it writes.
    ``rewind`` puts the cache back at position 0 after each warm-up run and the capture."""
    with torch.cuda.device(device):  # the capture runs on the current device's streams
        # Warm-up outside the capture, on a side stream (as torch.cuda.graphs asks):
        # kernels chosen and workspaces allocated before they are recorded.
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
                rewind()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a data loader's pinning thread while
        # a trainer validates) do not break this capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = step()
        rewind()  # the capture recorded the step without running it
    index = torch.cuda.current_device() if device.index is None else device.index

    def replay() -> None:
        # A graph is launched on the current device's stream: it must be its own device.
        if torch.cuda.current_device() == index:
            graph.replay()
        else:
            with torch.cuda.device(index):
                graph.replay()

    return replay, output


def _graphs_wanted(device: torch.device, cuda_graphs: bool | None) -> bool:
    return device.type == "cuda" and cuda_graphs is not False


# Captured graphs per model, kept between calls (a translator decodes batch after batch):
# {"version": the parameters' addresses and versions, "graphs": {(batch, source bucket,
# length bucket, dtype, device): _GraphedStep}}. A change to any parameter (training,
# load_state_dict, .to()) drops them.
_GRAPHS: weakref.WeakKeyDictionary[Transformer, dict] = weakref.WeakKeyDictionary()
_MAX_GRAPHS = 8  # per model; the oldest goes first
# Sources and outputs are padded up to these multiples, so that batches of similar
# lengths share a graph (padding is masked: the same tokens).
_SOURCE_BUCKET = 32
_LENGTH_BUCKET = 64


def _graphed_step(
    model: Transformer, memory: Tensor, memory_mask: Tensor, max_steps: int
) -> _GraphedStep | None:
    """A captured step for this batch, ready at position 0 with this source; ``None``
    (decode without graphs) when capturing fails."""
    n, s, _ = memory.shape
    source = -(-s // _SOURCE_BUCKET) * _SOURCE_BUCKET
    length = min(-(-max_steps // _LENGTH_BUCKET) * _LENGTH_BUCKET, model.config.max_len)
    memory = F.pad(memory, (0, 0, 0, source - s))  # (n, S, d), zeros where padded
    memory_mask = F.pad(memory_mask, (0, source - s), value=False)  # (n, S)
    version = weights_version(model.parameters())
    state = _GRAPHS.get(model)
    if state is None or state["version"] != version:
        state = {"version": version, "graphs": {}}
        _GRAPHS[model] = state
    graphs: dict = state["graphs"]
    key = (n, source, length, memory.dtype, memory.device)
    step = graphs.get(key)
    if step is None:
        try:
            cache = model.init_static_cache(memory, memory_mask, length)
            step = _GraphedStep(model, memory, cache)
        except RuntimeError as error:
            log.warning(
                "decoding without CUDA graphs: capturing the decoder step failed: %s", error
            )
            return None
        if len(graphs) >= _MAX_GRAPHS:
            graphs.pop(next(iter(graphs)))
        graphs[key] = step
    step.cache.restart(*model.decoder.cross_attention_cache(memory, memory_mask))
    return step


def _prepare(
    model: Transformer,
    src_ids: Tensor,
    bos_id: int | None,
    eos_id: int | None,
    max_len: int | None,
    min_len: int,
    src_key_padding_mask: Tensor | None,
) -> tuple[Tensor, Tensor, int, int]:
    """Check the arguments; return the source mask ``(b, s)``, each sentence's
    maximum number of new tokens ``(b,)``, and the bos and eos ids (the model's when
    not given)."""
    if model.training:
        raise ValueError(
            "decoding needs model.eval(): in training mode dropout makes every step random"
        )
    if src_ids.dim() != 2 or src_ids.shape[0] == 0:
        raise ValueError(
            f"src_ids must be (batch, length) with batch >= 1, got {tuple(src_ids.shape)}"
        )
    config = model.config
    bos_id = config.bos_id if bos_id is None else bos_id
    eos_id = config.eos_id if eos_id is None else eos_id
    check_token_ids(src_ids, config.src_vocab_size, "src_ids")
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not 0 <= value < config.tgt_vocab_size:
            raise ValueError(
                f"{name} ({value}) is outside the target vocabulary [0, {config.tgt_vocab_size})"
            )
    if eos_id == config.pad_id:
        raise ValueError(f"eos_id ({eos_id}) must differ from pad_id ({config.pad_id})")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if src_key_padding_mask is None:
        src_key_padding_mask = padding_mask_from_ids(src_ids, config.pad_id)
    elif src_key_padding_mask.shape != src_ids.shape or src_key_padding_mask.dtype != torch.bool:
        raise ValueError(
            "src_key_padding_mask must be a bool tensor shaped like src_ids "
            f"{tuple(src_ids.shape)}, got {src_key_padding_mask.dtype} "
            f"{tuple(src_key_padding_mask.shape)}"
        )
    if max_len is None:
        # Each sentence's own length, not the padded one: batch invariance.
        limits = src_key_padding_mask.sum(dim=-1) + MAX_LEN_MARGIN  # (b,)
    else:
        limits = torch.full((src_ids.shape[0],), max_len, device=src_ids.device)  # (b,)
    # The decoder input at step t sits at position t; the positional table ends at max_len.
    return src_key_padding_mask, limits.clamp(max=config.max_len), bos_id, eos_id


def _next_log_probs(
    model: Transformer,
    logits: Tensor,
    t: int,
    *,
    eos_id: int,
    min_len: int,
    last: Tensor | None = None,
) -> Tensor:
    """Log-probabilities of the next token, with the tokens that may not come next
    at -inf. ``last``: the rows at their maximum length, where a model with
    ``config.forced_eos`` may only end (eos gets log-probability 0, as Hugging Face's
    forced eos does). Shape: logits ``(n, V)``, last ``(n,)`` -> ``(n, V)``."""
    # In float32 even for a bf16 model: log-softmax and the running score sums need it.
    logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    # Masked after the softmax: the scores stay the model's log-probabilities.
    logp[:, model.config.pad_id] = float("-inf")
    if t < min_len:
        logp[:, eos_id] = float("-inf")
    if model.config.forced_eos and last is not None:
        forced = torch.full_like(logp, float("-inf"))
        forced[:, eos_id] = 0.0
        logp = torch.where(last[:, None], forced, logp)
    return logp


def _ordinary_tensors(out: DecodingOutput) -> DecodingOutput:
    """Clones made outside inference mode: inference tensors refuse in-place updates
    and autograd, which would surprise a caller that goes on computing with scores."""
    return DecodingOutput(out.tokens, out.log_probs.clone(), out.scores.clone(), out.n_best)


def _to_lists(tokens: Tensor, lengths: Tensor) -> list[list[int]]:
    """Row ``i`` cut to ``lengths[i]`` tokens. Shape: tokens ``(b, T)``, lengths ``(b,)``."""
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]
