"""The graphs that leave qkv: each model wrapped as a module whose inputs and outputs are
plain tensors with fixed names, plus the example inputs that trace it and the second
set that checks it.

A :class:`Graph` is what both formats need: :mod:`qkv.export.onnx` and
:mod:`qkv.export.torch_export` trace :attr:`Graph.module` with :attr:`Graph.example`,
keep :attr:`Graph.dynamic_shapes` symbolic, and compare the result with the module on
:attr:`Graph.check`, a batch of another size and length (with padding), so that a graph
that fixed a shape by mistake is caught before it is written.

Masks are ``int64`` 0/1 (1 = real token), as tokenizers return them; floating-point
outputs are ``float32``.

Notation: b batch size, L sequence length, d model width, C classes, c channels,
H×W image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from qkv.models.bert import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from qkv.models.vit import ViT

__all__ = [
    "BertGraph",
    "Graph",
    "SentenceEmbeddingGraph",
    "ViTGraph",
    "bert_graph",
    "flat_inputs",
    "largest_difference",
    "max_length",
    "sentence_embedding_graph",
    "vit_graph",
]

Shape = list[int | str]


@dataclass
class Graph:
    """One graph to export.

    ``name``: the file stem (``model``, ``encoder``, ``decoder_step``).
    ``example``: the arguments traced; ``check``: arguments of another batch size and
    length the written graph is compared on. ``dynamic_shapes``: torch.export's, one
    entry per argument. ``input_names``/``output_names``: the flat names, in order
    (a list argument contributes one name per tensor). ``shapes``: every input's and
    output's shape, with the dynamic axes named (``batch``, ``sequence``...), for
    ``export.json`` and the ONNX graph's axis names.
    """

    name: str
    module: nn.Module
    example: tuple[Any, ...]
    check: tuple[Any, ...]
    dynamic_shapes: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    shapes: dict[str, Shape] = field(default_factory=dict)


def flat_inputs(args: tuple[Any, ...]) -> list[Tensor]:
    """The tensors of ``args`` in the order of :attr:`Graph.input_names` (lists unrolled)."""
    flat: list[Tensor] = []
    for arg in args:
        flat.extend(arg if isinstance(arg, list | tuple) else [arg])
    return flat


def _ids(vocab: int, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """Random ids from 1 (0 is usually padding)."""
    return torch.randint(1, max(vocab, 2), (batch, length), generator=generator)


def _mask(batch: int, length: int) -> Tensor:
    """1 = real token; the last row padded after half its length, so masks matter."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, max(1, length // 2) :] = 0
    return mask


def _lengths(limit: int) -> tuple[int, int]:
    """(traced length, checked length): both at least 2 (torch.export fixes dimensions
    of size 0 and 1 it sees), different, and within ``limit``."""
    if limit < 3:
        raise ValueError(f"the model takes at most {limit} positions; exporting needs 3 or more")
    return min(8, limit - 1), min(11, limit)


class BertGraph(nn.Module):
    """A BERT body, classifier or masked-language model with named tensor outputs.

    Inputs: ``input_ids`` ``(b, L)``, ``attention_mask`` ``(b, L)`` int64 0/1, and
    ``token_type_ids`` ``(b, L)`` when built with ``token_types=True``. Outputs: a
    sequence classifier ``logits`` ``(b, C)``; a token classifier ``logits``
    ``(b, L, C)``; a masked-language model ``logits`` ``(b, L, V)`` at every position;
    then ``last_hidden_state`` ``(b, L, d)``; a body with a pooler also
    ``pooler_output`` ``(b, d)``.
    """

    def __init__(self, model: nn.Module, *, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        mask = attention_mask.bool()
        out = self.model(input_ids, mask, token_type_ids)
        if isinstance(self.model, BertModel):
            if out.pooled_output is None:
                return (out.last_hidden_state,)
            return out.last_hidden_state, out.pooled_output
        return out.logits, out.bert.last_hidden_state


class SentenceEmbeddingGraph(nn.Module):
    """A BERT body and the pooling of :mod:`qkv.tasks.bert.embed`: ``input_ids`` and
    ``attention_mask`` ``(b, L)`` -> ``sentence_embedding`` ``(b, d)`` (pooled in
    float32, unit length when ``normalize``) and ``last_hidden_state`` ``(b, L, d)``."""

    def __init__(self, model: BertModel, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        from qkv.tasks.bert.embed import pool

        mask = attention_mask.bool()
        hidden = self.model(input_ids, mask).last_hidden_state  # (b, L, d)
        pooled = pool(hidden.float(), mask, self.pooling)  # (b, d)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled, hidden


class ViTGraph(nn.Module):
    """``pixel_values`` ``(b, c, H, W)`` float32, already normalised -> ``logits``
    ``(b, C)``."""

    def __init__(self, model: ViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor]:
        return (self.model(pixel_values).logits,)


def max_length(model: BertModel) -> int:
    """The longest input the BERT takes: its positions, less those RoBERTa's offset
    reserves (``BertConfig.max_length`` where the configuration has it)."""
    config = model.config
    return int(getattr(config, "max_length", config.max_position_embeddings))


def _bert_inputs(
    model: BertModel, token_types: bool
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Any, ...]]:
    config = model.config
    longest = max_length(model)
    traced, checked = _lengths(longest)
    generator = torch.Generator().manual_seed(0)
    args = []
    for batch, length in ((2, traced), (3, checked)):
        ids = _ids(config.vocab_size, batch, length, generator)
        mask = _mask(batch, length)
        ids = ids.masked_fill(mask == 0, config.pad_id)
        extra = (torch.zeros_like(ids),) if token_types else ()
        if token_types and config.type_vocab_size > 1:
            extra = ((torch.arange(length) >= length // 2).long().expand(batch, -1).clone(),)
        args.append((ids, mask, *extra))
    batch_dim = Dim("batch")
    sequence = Dim("sequence", max=longest)
    dynamic = tuple({0: batch_dim, 1: sequence} for _ in args[0])
    return args[0], args[1], dynamic


def bert_graph(model: nn.Module, *, token_types: bool = True) -> Graph:
    """The graph of a :class:`BertModel`, :class:`BertForSequenceClassification`,
    :class:`BertForTokenClassification` or :class:`BertForMaskedLM` (see
    :class:`BertGraph`)."""
    body = model if isinstance(model, BertModel) else model.bert  # type: ignore[union-attr]
    assert isinstance(body, BertModel)
    example, check, dynamic = _bert_inputs(body, token_types)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    shapes: dict[str, Shape] = {name: ["batch", "sequence"] for name in inputs}
    d = body.config.d_model
    if isinstance(model, BertForSequenceClassification):
        outputs = ["logits", "last_hidden_state"]
        shapes["logits"] = ["batch", model.num_labels]
    elif isinstance(model, BertForTokenClassification):
        outputs = ["logits", "last_hidden_state"]
        shapes["logits"] = ["batch", "sequence", model.num_labels]
    elif isinstance(model, BertForMaskedLM):
        outputs = ["logits", "last_hidden_state"]
        shapes["logits"] = ["batch", "sequence", body.config.vocab_size]
    elif isinstance(model, BertModel):
        outputs = ["last_hidden_state"] + (["pooler_output"] if model.pooler is not None else [])
        shapes["pooler_output"] = ["batch", d]
    else:
        raise ValueError(f"cannot export a {type(model).__name__}: not a BERT body or classifier")
    shapes["last_hidden_state"] = ["batch", "sequence", d]
    shapes = {k: v for k, v in shapes.items() if k in inputs or k in outputs}
    module = BertGraph(model.eval(), token_types=token_types)
    return Graph("model", module, example, check, dynamic, inputs, outputs, shapes)


def sentence_embedding_graph(model: BertModel, pooling: str, normalize: bool) -> Graph:
    """The graph of :class:`SentenceEmbeddingGraph`."""
    example, check, dynamic = _bert_inputs(model, token_types=False)
    d = model.config.d_model
    shapes: dict[str, Shape] = {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
        "sentence_embedding": ["batch", d],
        "last_hidden_state": ["batch", "sequence", d],
    }
    module = SentenceEmbeddingGraph(model.eval(), pooling, normalize)
    inputs, outputs = ["input_ids", "attention_mask"], ["sentence_embedding", "last_hidden_state"]
    return Graph("model", module, example, check, dynamic, inputs, outputs, shapes)


def vit_graph(model: ViT) -> Graph:
    """The graph of :class:`ViTGraph`: a dynamic batch of images of the model's size."""
    c = model.config
    generator = torch.Generator().manual_seed(0)
    size = (c.in_channels, c.image_size, c.image_size)
    example = (torch.randn(2, *size, generator=generator),)
    check = (torch.randn(3, *size, generator=generator),)
    dynamic = ({0: Dim("batch")},)
    shapes: dict[str, Shape] = {
        "pixel_values": ["batch", *size],
        "logits": ["batch", c.num_classes],
    }
    module = ViTGraph(model.eval())
    return Graph("model", module, example, check, dynamic, ["pixel_values"], ["logits"], shapes)


def largest_difference(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The largest absolute difference between two lists of outputs; ``inf`` where one
    is infinite (a masked log-probability) and the other not."""
    worst = 0.0
    for a, e in zip(got, expected, strict=True):
        if a.shape != e.shape:
            raise ValueError(f"an exported output has shape {a.shape}, expected {e.shape}")
        finite = np.isfinite(e)
        if not np.array_equal(finite, np.isfinite(a)):
            return float("inf")
        if finite.any():
            worst = max(worst, float(np.abs(a[finite] - e[finite]).max()))
    return worst
