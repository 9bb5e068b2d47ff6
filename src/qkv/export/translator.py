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
    """Greedy decoding of an exported translator in ONNX Runtime, numpy only: the loop a
    program outside PyTorch runs, step for step what :func:`qkv.decoding.greedy_decode`
    does (ties to the lowest id, padding never produced, each sentence's limit its own
    source length + 50, finished sentences fed padding while the rest go on).

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
