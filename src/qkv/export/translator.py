"""A translator as two graphs, so that greedy or beam decoding runs outside PyTorch.

- ``encoder``: ``input_ids`` ``(b, s)``, ``attention_mask`` ``(b, s)`` -> ``memory``
  ``(b, s, d)``, and for every decoder layer ``i`` the cross-attention keys and values
  ``cross_key_i``, ``cross_value_i`` ``(b, h, s, dh)``: projected once per sentence,
  not at every step.
- ``decoder_step``: one new token per sentence. ``input_ids`` ``(b, 1)``,
  ``memory_mask`` ``(b, s)``, ``past_key_i``/``past_value_i`` ``(b, h, t, dh)`` (the
  self-attention cache, ``t = 0`` at the first step), ``cross_key_i``/``cross_value_i``
  -> ``log_probs`` ``(b, V)`` (float32 log-softmax of the logits, the pad id at
  ``-inf``: padding is never produced) and ``present_key_i``/``present_value_i``
  ``(b, h, t + 1, dh)``, the next step's past. The new token's position is ``t``, read
  from the past's length.

``translator.json`` beside the graphs (:func:`translator_metadata`) holds what a decoder
needs besides them: the decoder's start id, eos and pad ids, the layer and head counts,
the most positions. :class:`OnnxTranslator` is such a decoder, in numpy with ONNX
Runtime: qkv's greedy decoding step for step.

The model is read only through :meth:`Transformer.encode`, :meth:`Transformer.decode`,
:meth:`Transformer.init_cache` and its logits, with the caches of
:class:`qkv.layers.DecoderCache` filled from the graph's inputs.

Notation: b sentences, s source length, t target tokens so far, d model width, h heads,
dh = d / h, V target vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from qkv.export.graphs import Graph, Shape
from qkv.models.transformer import Transformer

__all__ = [
    "METADATA_FILE",
    "DecoderStepGraph",
    "OnnxTranslator",
    "TranslatorEncoderGraph",
    "translator_graphs",
    "translator_metadata",
]

METADATA_FILE = "translator.json"
#: qkv's default output limit: each sentence's source length + this (qkv.decoding).
MAX_LEN_MARGIN = 50


def _logits(model: Transformer, hidden: Tensor) -> Tensor:
    """Vocabulary logits of decoder states: the model's own ``logits`` (projection plus a
    final bias, for Marian) where it has one, else the output projection."""
    logits = getattr(model, "logits", None)
    return logits(hidden) if callable(logits) else model.output_proj(hidden)


class TranslatorEncoderGraph(nn.Module):
    """See the module docstring: source ids and mask -> memory and cross keys/values."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        mask = attention_mask.bool()  # (b, s)
        memory = self.model.encode(input_ids, src_key_padding_mask=mask).last_hidden_state
        # One decoder step on a placeholder token fills the static cross-attention caches
        # with the memory's projected keys and values; nothing else of that step is
        # returned, so the exporter drops the rest of it from the graph.
        cache = self.model.init_cache()
        start = torch.zeros_like(input_ids[:, :1])  # (b, 1); id 0 is in every vocabulary
        self.model.decode(start, memory, memory_key_padding_mask=mask, cache=cache)
        outputs = [memory]
        for _, cross in cache.layers:
            assert cross.key is not None and cross.value is not None
            outputs += [cross.key, cross.value]  # (b, h, s, dh) each
        return tuple(outputs)


class DecoderStepGraph(nn.Module):
    """See the module docstring: one decoder step with the caches as tensors.

    ``past`` and ``cross``: ``[key_0, value_0, key_1, value_1, ...]``.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        pad = torch.zeros(model.config.tgt_vocab_size, dtype=torch.bool)
        pad[model.config.pad_id] = True
        self.register_buffer("pad", pad, persistent=False)

    def forward(
        self, input_ids: Tensor, memory_mask: Tensor, past: list[Tensor], cross: list[Tensor]
    ) -> tuple[Tensor, ...]:
        cache = self.model.init_cache()
        for i, (own, other) in enumerate(cache.layers):
            own.key, own.value = past[2 * i], past[2 * i + 1]
            other.key, other.value = cross[2 * i], cross[2 * i + 1]
        b, h, t, dh = past[0].shape
        cache.offset = t  # the new token's position
        # With the cross caches filled the memory is not read again; a placeholder of
        # the right width stands in for it.
        memory = cross[0].new_zeros(b, 1, h * dh)
        hidden = self.model.decode(
            input_ids, memory, memory_key_padding_mask=memory_mask.bool(), cache=cache
        ).last_hidden_state  # (b, 1, d)
        logp = torch.log_softmax(_logits(self.model, hidden[:, -1]).float(), dim=-1)  # (b, V)
        outputs = [logp.masked_fill(self.pad, float("-inf"))]
        for own, _ in cache.layers:
            assert own.key is not None and own.value is not None
            outputs += [own.key, own.value]  # (b, h, t + 1, dh)
        return tuple(outputs)


def _sizes(model: Transformer) -> tuple[int, int, int]:
    c = model.config
    return c.num_decoder_layers, c.num_heads, c.d_model // c.num_heads


def _ids_of(model: Transformer) -> tuple[int, int]:
    """(decoder start id, eos id): the model's own where its configuration names them
    (Marian starts with its pad id), else qkv's BPE ids."""
    from qkv.data.bpe import BOS_ID, EOS_ID

    c = model.config
    return int(getattr(c, "bos_id", BOS_ID)), int(getattr(c, "eos_id", EOS_ID))


def translator_metadata(model: Transformer, **extra: Any) -> dict[str, Any]:
    """What ``translator.json`` holds: ids, sizes, and how qkv decodes (``extra``: the
    languages, say)."""
    c = model.config
    layers, heads, head_dim = _sizes(model)
    bos_id, eos_id = _ids_of(model)
    return {
        "decoder_start_id": bos_id,
        "eos_id": eos_id,
        "pad_id": c.pad_id,
        "num_layers": layers,
        "num_heads": heads,
        "head_dim": head_dim,
        "d_model": c.d_model,
        "src_vocab_size": c.src_vocab_size,
        "tgt_vocab_size": c.tgt_vocab_size,
        "max_positions": c.max_len,
        "max_len_margin": MAX_LEN_MARGIN,
        "forced_eos": bool(getattr(c, "forced_eos", False)),
        "source_ends_with_eos": True,
        **extra,
    }


def _cache_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]


def translator_graphs(model: Transformer) -> list[Graph]:
    """The ``encoder`` and ``decoder_step`` graphs of ``model`` (see the module docstring)."""
    model = model.eval()
    c = model.config
    layers, heads, head_dim = _sizes(model)
    if c.max_len < 4:
        raise ValueError(f"the model takes at most {c.max_len} positions; exporting needs 4")
    generator = torch.Generator().manual_seed(0)

    def source(batch: int, length: int) -> tuple[Tensor, Tensor]:
        ids = torch.randint(1, max(c.src_vocab_size, 2), (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length // 2 :] = 0
        return ids.masked_fill(mask == 0, c.pad_id), mask

    batch = Dim("batch")
    source_len = Dim("source", max=c.max_len)
    past_len = Dim("past", min=0, max=c.max_len - 1)
    encoder = TranslatorEncoderGraph(model)
    example_src, check_src = source(2, min(7, c.max_len)), source(3, min(11, c.max_len))
    cross_names = _cache_names("cross", layers)
    cache_shape = ["batch", heads, "past", head_dim]
    encoder_graph = Graph(
        "encoder",
        encoder,
        example_src,
        check_src,
        ({0: batch, 1: source_len}, {0: batch, 1: source_len}),
        ["input_ids", "attention_mask"],
        ["memory", *cross_names],
        {
            "input_ids": ["batch", "source"],
            "attention_mask": ["batch", "source"],
            "memory": ["batch", "source", c.d_model],
            **{name: ["batch", heads, "source", head_dim] for name in cross_names},
        },
    )

    def step_args(src: tuple[Tensor, Tensor], past_len: int) -> tuple[Any, ...]:
        with torch.no_grad():
            cross = list(encoder(*src)[1:])
        b = src[0].shape[0]
        past = [
            torch.randn(b, heads, past_len, head_dim, generator=generator)
            for _ in range(2 * layers)
        ]
        ids = torch.randint(1, max(c.tgt_vocab_size, 2), (b, 1), generator=generator)
        return ids, src[1], past, cross

    past_names = _cache_names("past", layers)
    present_names = _cache_names("present", layers)
    shapes: dict[str, Shape] = {
        "input_ids": ["batch", 1],
        "memory_mask": ["batch", "source"],
        **{name: list(cache_shape) for name in past_names},
        **{name: ["batch", heads, "source", head_dim] for name in cross_names},
        "log_probs": ["batch", c.tgt_vocab_size],
        **{name: ["batch", heads, "past + 1", head_dim] for name in present_names},
    }
    step_graph = Graph(
        "decoder_step",
        DecoderStepGraph(model),
        step_args(example_src, 3),
        step_args(check_src, min(5, c.max_len - 1)),
        (
            {0: batch},
            {0: batch, 1: source_len},
            [{0: batch, 2: past_len}] * (2 * layers),
            [{0: batch, 2: source_len}] * (2 * layers),
        ),
        ["input_ids", "memory_mask", *past_names, *cross_names],
        ["log_probs", *present_names],
        shapes,
    )
    return [encoder_graph, step_graph]


class OnnxTranslator:
    """Greedy decoding and beam search of an exported translator in ONNX Runtime, numpy
    only: the loops a program outside PyTorch runs, step for step what
    :func:`qkv.decoding.greedy_decode` and :func:`qkv.decoding.beam_search` do (ties to
    the lowest id, padding never produced, each sentence's limit its own source length +
    50, finished sentences fed padding while the rest go on).

    ``folder``: what ``qkv export RUN --format onnx`` wrote. ``threads``: ONNX Runtime's
    intra-op threads (default: its own choice).
    """

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        from qkv.fileio import read_json_object

        folder = Path(folder)
        self.meta = read_json_object(folder / METADATA_FILE)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(
            str(folder / "encoder.onnx"), options, providers=providers
        )
        self.step = ort.InferenceSession(
            str(folder / "decoder_step.onnx"), options, providers=providers
        )

    def greedy(
        self, src_ids: np.ndarray, *, max_len: int | None = None, min_len: int = 0
    ) -> tuple[list[list[int]], np.ndarray]:
        """Token lists (without start and eos) and their total log-probabilities.
        ``max_len``, ``min_len``: as :func:`qkv.decoding.greedy_decode`'s.

        Shape: src_ids ``(b, s)`` int64, padded with the pad id -> ``b`` lists, ``(b,)``.
        """
        m = self.meta
        pad, eos, layers = m["pad_id"], m["eos_id"], m["num_layers"]
        src_ids = np.asarray(src_ids, dtype=np.int64)
        mask = (src_ids != pad).astype(np.int64)  # (b, s)
        b = src_ids.shape[0]
        encoded = self.encoder.run(None, {"input_ids": src_ids, "attention_mask": mask})
        cross = dict(zip(_cache_names("cross", layers), encoded[1:], strict=True))
        limits = mask.sum(1) + m["max_len_margin"] if max_len is None else np.full(b, max_len)
        limits = np.minimum(limits, m["max_positions"])  # (b,)
        empty = np.zeros((b, m["num_heads"], 0, m["head_dim"]), dtype=np.float32)
        past = dict.fromkeys(_cache_names("past", layers), empty)
        inputs = np.full((b, 1), m["decoder_start_id"], dtype=np.int64)
        log_probs = np.zeros(b, dtype=np.float32)
        lengths = np.zeros(b, dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        produced = []
        for t in range(int(limits.max())):
            feed = {"input_ids": inputs, "memory_mask": mask, **past, **cross}
            logp, *present = self.step.run(None, feed)  # (b, V), caches (b, h, t + 1, dh)
            if t < min_len:
                logp[:, eos] = -np.inf
            if m["forced_eos"]:
                last = t + 1 >= limits
                logp[last] = -np.inf
                logp[last, eos] = 0.0
            token = logp.argmax(axis=-1)  # (b,) the first maximum on ties
            token_logp = logp[np.arange(b), token]
            token[done] = pad
            log_probs += np.where(done, 0.0, token_logp).astype(np.float32)
            ended = token == eos
            lengths += ~done & ~ended
            produced.append(token)
            done |= ended | (t + 1 >= limits)
            if done.all():
                break
            inputs = token[:, None].astype(np.int64)
            past = dict(zip(_cache_names("past", layers), present, strict=True))
        tokens = np.stack(produced, axis=1)  # (b, steps)
        return [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)], log_probs

    def beam(
        self,
        src_ids: np.ndarray,
        *,
        beam_size: int = 4,
        length_penalty: float | None = None,
        max_len: int | None = None,
        min_len: int = 0,
        early_stopping: bool | str = False,
    ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """Beam search as :func:`qkv.decoding.beam_search` does it, in the style the
        model was exported with (``translator.json``'s ``search``: GNMT's length penalty
        and exact stopping rule for qkv's translators, ``transformers``' ``generate`` for
        Marian ones, with ``early_stopping`` as there). ``length_penalty`` None: 0.6
        (GNMT) or 1.0 (``generate``), as ``qkv translate`` uses.

        Returns the best hypothesis of each sentence: token lists (without start and
        eos), their total log-probabilities and their scores (log-probability / length
        penalty).

        Shape: src_ids ``(b, s)`` int64, padded with the pad id -> ``b`` lists, ``(b,)``,
        ``(b,)``.
        """
        m, k = self.meta, beam_size
        if k < 1:
            raise ValueError(f"beam_size must be at least 1, got {k}")
        hugging_face = m.get("search", "gnmt") == "hugging_face"
        alpha = (1.0 if hugging_face else 0.6) if length_penalty is None else length_penalty
        if not np.isfinite(alpha) or (alpha < 0 and not hugging_face):
            raise ValueError(
                f"length_penalty (α) must be finite (and >= 0 for GNMT's), got {alpha}"
            )

        def penalty(length: Any) -> Any:  # float32, as the PyTorch search computes it
            n = np.float32(length) if np.isscalar(length) else length.astype(np.float32)
            return n ** np.float32(alpha) if hugging_face else ((5 + n) / 6) ** np.float32(alpha)

        pad, eos, layers = m["pad_id"], m["eos_id"], m["num_layers"]
        src_ids = np.asarray(src_ids, dtype=np.int64)
        mask = (src_ids != pad).astype(np.int64)  # (b, s)
        b = src_ids.shape[0]
        encoded = self.encoder.run(None, {"input_ids": src_ids, "attention_mask": mask})
        # Row i·k + j is beam j of sentence i; the source's keys and values are the same
        # for a sentence's beams, so they are never reordered.
        cross = {
            name: np.repeat(value, k, axis=0)
            for name, value in zip(_cache_names("cross", layers), encoded[1:], strict=True)
        }  # each (b·k, h, s, dh)
        mask_k = np.repeat(mask, k, axis=0)  # (b·k, s)
        limits = mask.sum(1) + m["max_len_margin"] if max_len is None else np.full(b, max_len)
        limits = np.minimum(limits, m["max_positions"])  # (b,)
        steps = int(limits.max())
        last_lp = penalty(limits)  # (b,) the penalty at each one's maximum length
        empty = np.zeros((b * k, m["num_heads"], 0, m["head_dim"]), dtype=np.float32)
        past = dict.fromkeys(_cache_names("past", layers), empty)
        first_row = np.arange(b)[:, None] * k  # (b, 1)
        # The k start beams are one hypothesis: only beam 0 may expand at first.
        alive_logp = np.full((b, k), -np.inf, dtype=np.float32)  # (b, k)
        alive_logp[:, 0] = 0.0
        alive_tokens = np.zeros((b * k, 0), dtype=np.int64)  # (b·k, t)
        inputs = np.full((b * k, 1), m["decoder_start_id"], dtype=np.int64)
        kept = k if hugging_face else 1  # generate's stopping rule needs k finished ones
        best = _Finished(b, kept, steps, pad)
        done = np.zeros(b, dtype=bool)
        rank = np.arange(2 * k)
        for t in range(steps):
            n = t + 1  # scored tokens of a hypothesis ending at this step
            lp = penalty(n)
            feed = {"input_ids": inputs, "memory_mask": mask_k, **past, **cross}
            logp, *present = self.step.run(None, feed)  # (b·k, V), caches (b·k, h, n, dh)
            if t < min_len:
                logp[:, eos] = -np.inf
            if m["forced_eos"]:
                last = np.repeat(n >= limits, k)  # (b·k,)
                logp[last] = -np.inf
                logp[last, eos] = 0.0
            vocab = logp.shape[-1]
            candidates = (alive_logp.reshape(b * k, 1) + logp).reshape(b, k * vocab)
            top_index = _top(candidates, 2 * k)  # (b, 2k), best first, ties lowest first
            top_logp = np.take_along_axis(candidates, top_index, axis=1)  # (b, 2k)
            top_beam, top_token = top_index // vocab, top_index % vocab  # (b, 2k)
            is_eos = top_token == eos
            # Hypotheses that end in eos within the first k (they would take a slot).
            ends = is_eos & (rank < k) & np.isfinite(top_logp) & ~done[:, None]
            best.merge(
                np.where(ends, top_logp / lp, -np.inf),
                top_logp,
                alive_tokens[first_row + top_beam],
            )
            # The next alive beams: the first k candidates not ending in eos.
            keep = np.argsort(is_eos, axis=1, kind="stable")[:, :k]  # (b, k)
            alive_logp = np.take_along_axis(top_logp, keep, axis=1)
            rows = (first_row + np.take_along_axis(top_beam, keep, axis=1)).reshape(-1)
            new_tokens = np.take_along_axis(top_token, keep, axis=1).reshape(-1)  # (b·k,)
            alive_tokens = np.concatenate([alive_tokens[rows], new_tokens[:, None]], axis=1)
            past = {
                name: value[rows]
                for name, value in zip(_cache_names("past", layers), present, strict=True)
            }
            inputs = new_tokens[:, None]
            # At its maximum length a sentence's alive beams end as they are.
            at_limit = (n >= limits) & ~done  # (b,)
            best.merge(
                np.where(at_limit[:, None], alive_logp / lp, -np.inf),
                alive_logp,
                alive_tokens.reshape(b, k, n),
            )
            worst = best.score[:, -1]  # (b,) the last kept finished score
            if hugging_face:
                bound = last_lp if early_stopping == "never" and alpha > 0 else lp
                beaten = worst > -np.inf
                if early_stopping is not True:
                    beaten &= worst >= alive_logp[:, 0] / bound
            else:  # no alive hypothesis can do better any more (exact)
                beaten = worst >= alive_logp[:, 0] / last_lp
            done |= at_limit | beaten
            if done.all():
                break
            alive_logp[done] = -np.inf  # a done sentence's beams expand no more
        tokens = [
            row[0, :n].tolist() for row, n in zip(best.tokens, best.length[:, 0], strict=True)
        ]
        return tokens, best.logp[:, 0], best.score[:, 0]


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values of each row, largest first; equal values
    lowest index first. Shape: ``(b, n)`` -> ``(b, count)``."""
    part = np.argpartition(-values, count - 1, axis=1)[:, :count]  # (b, count), unordered
    # Sorted by value, then by index: lexsort's last key is the primary one.
    order = np.lexsort((part, -np.take_along_axis(values, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


class _Finished:
    """The ``n`` best finished hypotheses of each of ``b`` sentences, best first; a new
    one passes a kept one only if strictly better."""

    def __init__(self, b: int, n: int, steps: int, pad: int) -> None:
        self.score = np.full((b, n), -np.inf, dtype=np.float32)
        self.logp = np.full((b, n), -np.inf, dtype=np.float32)
        self.tokens = np.full((b, n, steps), pad, dtype=np.int64)
        self.length = np.zeros((b, n), dtype=np.int64)
        self.pad = pad

    def merge(self, score: np.ndarray, logp: np.ndarray, tokens: np.ndarray) -> None:
        """Shape: score, logp ``(b, c)``; tokens ``(b, c, length)``, without eos."""
        b, c, length = tokens.shape
        n, steps = self.score.shape[1], self.tokens.shape[2]
        padded = np.full((b, c, steps), self.pad, dtype=np.int64)
        padded[:, :, :length] = tokens
        scores = np.concatenate([self.score, score], axis=1)  # (b, n + c)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]  # kept ones first on ties
        lengths = np.concatenate([self.length, np.full((b, c), length)], axis=1)
        every = np.concatenate([self.tokens, padded], axis=1)  # (b, n + c, T)
        self.tokens = np.take_along_axis(every, order[:, :, None], axis=1)
        self.length = np.take_along_axis(lengths, order, axis=1)
        self.logp = np.take_along_axis(np.concatenate([self.logp, logp], axis=1), order, axis=1)
        self.score = np.take_along_axis(scores, order, axis=1)
