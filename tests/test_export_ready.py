"""Every model family compiles as one graph and exports with dynamic shapes.

``torch.compile(fullgraph=True)`` fails on any graph break, so it proves that no
forward reads a tensor's values on the host (``.item()``, ``bool(t)``, ``int(t)``);
``torch.export`` proves the output dataclasses are pytree nodes and that no branch
on a shape turns into a guard that fails on another batch or length.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch.export import Dim
from torch.utils import _pytree as pytree

from qkv.models.bert import BertConfig, BertForSequenceClassification, BertModel
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.models.vit import ViT, ViTConfig

# Compiled with backend="eager" and exported graphs run the same kernels as eager
# mode, except that compiling takes the three-projection path of self-attention; the
# sums differ only in rounding.
TOL = dict(atol=1e-5, rtol=1e-5)
BATCH = Dim("batch", min=1, max=64)


def _ids(vocab: int, batch: int, length: int, *, pad_from: int | None = None) -> torch.Tensor:
    ids = torch.randint(1, vocab, (batch, length))
    if pad_from is not None:
        ids[-1, pad_from:] = 0  # the last row padded: the masks are really used
    return ids


def _bert_config() -> BertConfig:
    return BertConfig.tiny(
        vocab_size=50, d_model=32, num_heads=2, d_ff=64, max_position_embeddings=32
    )


def _bert_model():
    ids = _ids(50, 2, 8, pad_from=5)
    other = (_ids(50, 5, 11, pad_from=7),)
    return BertModel(_bert_config()), (ids,), ({0: BATCH, 1: Dim("seq", max=32)},), other


def _bert_classifier():
    _, args, shapes, other = _bert_model()
    return BertForSequenceClassification(_bert_config(), 3), args, shapes, other


def _transformer():
    model = Transformer(
        TransformerConfig.tiny(30, 20, d_model=32, num_heads=2, d_ff=64, max_len=32)
    )
    args = (_ids(30, 2, 7, pad_from=4), _ids(20, 2, 5, pad_from=3))
    shapes = ({0: BATCH, 1: Dim("src", max=32)}, {0: BATCH, 1: Dim("tgt", max=32)})
    other = (_ids(30, 3, 9, pad_from=6), _ids(20, 3, 4))
    return model, args, shapes, other


def _vit():
    model = ViT(ViTConfig.digits())
    # A zero head gives zero logits whatever the input; a random one makes the
    # comparison mean something.
    torch.nn.init.normal_(model.head.weight)
    return model, (torch.randn(2, 1, 8, 8),), ({0: BATCH},), (torch.randn(5, 1, 8, 8),)


FAMILIES = {
    "transformer": _transformer,
    "bert": _bert_model,
    "bert_classifier": _bert_classifier,
    "vit": _vit,
}


def _build(name: str):
    torch.manual_seed(0)
    model, args, shapes, other = FAMILIES[name]()
    return model.eval(), args, shapes, other


def _assert_same(actual, expected) -> None:
    """Same output dataclass, same tree (``None`` fields included), close tensors."""
    assert type(actual) is type(expected)
    actual_leaves, actual_spec = pytree.tree_flatten(actual)
    expected_leaves, expected_spec = pytree.tree_flatten(expected)
    assert actual_spec == expected_spec
    assert expected_leaves and all(isinstance(t, torch.Tensor) for t in expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        torch.testing.assert_close(a, e, **TOL)


@pytest.mark.parametrize("name", FAMILIES)
def test_compiles_as_one_graph_and_matches_eager(name):
    model, args, _, other = _build(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=True)
    with torch.no_grad():
        _assert_same(compiled(*args), model(*args))
        _assert_same(compiled(*other), model(*other))  # another batch size and length


@pytest.mark.parametrize("name", FAMILIES)
def test_exports_with_a_dynamic_batch_and_length(name):
    model, args, shapes, other = _build(name)
    program = torch.export.export(model, args, dynamic_shapes=shapes)
    exported = program.module()
    with torch.no_grad():
        _assert_same(exported(*other), model(*other))


def test_output_dataclasses_are_pytree_nodes_with_none_fields():
    model, args, _, _ = _build("bert_classifier")
    with torch.no_grad():
        out = model(*args)
    assert out.loss is None and out.num_targets is None and out.bert.attentions is None
    leaves, spec = pytree.tree_flatten(out)
    # logits, last_hidden_state, pooled_output: the Nones are structure, not leaves
    assert len(leaves) == 3
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert dataclasses.fields(rebuilt) == dataclasses.fields(out)
    assert rebuilt.loss is None and rebuilt.logits is out.logits


def test_an_exported_program_saves_and_loads():
    model, args, shapes, other = _build("bert_classifier")
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, args, dynamic_shapes=shapes), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        _assert_same(loaded(*other), model(*other))


def test_validate_gives_the_one_line_messages():
    bert = BertModel(_bert_config()).eval()
    ids = _ids(50, 2, 8)
    with pytest.raises(ValueError, match=r"token ids contain 50, outside the vocabulary \[0, 50\)"):
        bert(ids.index_fill(1, torch.tensor([3]), 50), validate=True)
    with pytest.raises(ValueError, match=r"token_type_ids contain 2, outside the vocabulary"):
        bert(ids, token_type_ids=torch.full((2, 8), 2), validate=True)
    with pytest.raises(ValueError, match=r"0/1 \(1 = real token\), got values \[0.0, 2.0\]"):
        bert(
            ids,
            attention_mask=torch.full((2, 8), 2.0).index_fill(1, torch.tensor([0]), 0),
            validate=True,
        )
    translator = Transformer(TransformerConfig.tiny(30, 20, max_len=16))
    with pytest.raises(ValueError, match=r"contain -1, outside the vocabulary \[0, 20\)"):
        translator(torch.tensor([[1, 3]]), torch.tensor([[1, -1]]), validate=True)
    # Without validate the values are not read, but dtypes (which cost nothing) still are.
    with pytest.raises(ValueError, match="token ids must be an integer tensor, got torch.float32"):
        translator(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="token_type_ids must be an integer tensor"):
        bert(ids, token_type_ids=torch.zeros(2, 8))
    # Valid inputs give the same result either way.
    with torch.no_grad():
        torch.testing.assert_close(
            bert(ids, validate=True).last_hidden_state, bert(ids).last_hidden_state
        )


@pytest.mark.parametrize("name", ["bert_classifier", "vit"])
def test_the_loss_compiles_in_the_same_graph(name):
    model, args, _, _ = _build(name)
    labels = torch.tensor([0, 2])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = compiled(*args, labels=labels)
        _assert_same(out, model(*args, labels=labels))
    assert out.loss is not None and out.num_targets == 2
