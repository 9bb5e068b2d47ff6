"""The worked self-attention example of the tutorials, step by step
(docs/concepts.md#self-attention-worked-example; "the document" below is that tutorial).

Three 4-dimensional inputs, 4×3 matrices ``w_key``, ``w_query``, ``w_value``; keys,
queries and values; the unscaled score matrix ``querys @ keys.T``; its softmax;
the weighted values and the outputs. Every number comes from qkv's own
:class:`~qkv.attention.Attention` and the functions of its plain path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.attention import Attention, attention_scores, attention_weights

__all__ = ["WorkedExample", "worked_example", "worked_example_attention"]

# The document's inputs and weights (row vectors: keys = x @ w_key).
X = [[1, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]]
W_KEY = [[0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]]
W_QUERY = [[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 1]]
W_VALUE = [[0, 2, 0], [0, 3, 0], [1, 0, 3], [1, 1, 0]]
# The softmax as the document writes it down by hand and then uses: the exact
# values rounded so that each row still sums to 1 (0.0634 and 0.0003 become 0.0).
DOCUMENT_SOFTMAX = [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1]]


def worked_example_attention(scale: float | None = 1.0) -> Attention:
    """An :class:`Attention` holding the document's weights.

    ``nn.Linear`` computes ``x @ weight.T``, so each weight is the document's
    matrix transposed. ``scale=1.0`` is the document's unscaled dot product.
    """
    attention = Attention(d_in=4, d_k=3, d_v=3, bias=False, scale=scale)
    with torch.no_grad():
        for layer, matrix in (
            (attention.k_proj, W_KEY),
            (attention.q_proj, W_QUERY),
            (attention.v_proj, W_VALUE),
        ):
            layer.weight.copy_(torch.tensor(matrix, dtype=torch.float32).T)
    return attention


@dataclass
class WorkedExample:
    """Every intermediate of the example. Shapes: x ``(3, 4)``, weights ``(4, 3)``,
    keys/querys/values ``(3, 3)``, scores/softmax ``(3, 3)``, weighted_values
    ``(3 outputs, 3 inputs, 3)``, outputs ``(3, 3)``."""

    scale: float
    x: Tensor
    w_key: Tensor
    w_query: Tensor
    w_value: Tensor
    keys: Tensor
    querys: Tensor
    values: Tensor
    scores: Tensor
    softmax: Tensor
    weighted_values: Tensor
    outputs: Tensor
    rounded_softmax: Tensor
    rounded_outputs: Tensor


@torch.no_grad()
def worked_example(scaled: bool = False) -> WorkedExample:
    """Compute the worked example with qkv's attention (unscaled unless ``scaled``)."""
    scale = 1.0 / math.sqrt(3) if scaled else 1.0
    attention = worked_example_attention(scale)
    x = torch.tensor(X, dtype=torch.float32)
    keys, querys, values = attention.k_proj(x), attention.q_proj(x), attention.v_proj(x)
    scores = attention_scores(querys, keys, scale)  # (3 queries, 3 keys)
    softmax = attention_weights(scores)
    weighted_values = softmax[:, :, None] * values[None, :, :]  # (output, input, 3)
    outputs, weights = attention(x)
    # The module and the step-by-step path are the same computation.
    torch.testing.assert_close(weights, softmax)
    torch.testing.assert_close(outputs, weighted_values.sum(dim=1))
    rounded_softmax = torch.tensor(DOCUMENT_SOFTMAX)
    return WorkedExample(
        scale=scale,
        x=x,
        w_key=attention.k_proj.weight.T,
        w_query=attention.q_proj.weight.T,
        w_value=attention.v_proj.weight.T,
        keys=keys,
        querys=querys,
        values=values,
        scores=scores,
        softmax=softmax,
        weighted_values=weighted_values,
        outputs=outputs,
        rounded_softmax=rounded_softmax,
        rounded_outputs=rounded_softmax @ values,
    )


def _fmt(t: Tensor, decimals: int = 4) -> str:
    rows = t.tolist() if t.dim() > 1 else [t.tolist()]
    width = max(len(f"{v:.{decimals}f}") for row in rows for v in row)
    return "\n".join(
        "    [" + ", ".join(f"{v:{width}.{decimals}f}" for v in row) + "]" for row in rows
    )


def render(example: WorkedExample) -> str:
    """The example as text a person can follow."""
    e = example
    scaled = e.scale != 1.0
    lines = [
        "Self-attention, step by step (the tutorials' worked example)",
        "",
        "1. Inputs: three 4-dimensional vectors, one per row of x",
        _fmt(e.x, 0),
        "",
        "2. Parameters: each input gets a key, a query and a value of width 3,",
        "   so the three weight matrices are 4 x 3",
        "   w_key",
        _fmt(e.w_key, 0),
        "   w_query",
        _fmt(e.w_query, 0),
        "   w_value",
        _fmt(e.w_value, 0),
        "",
        "3. Keys, queries, values: keys = x @ w_key, querys = x @ w_query, values = x @ w_value",
        "   keys",
        _fmt(e.keys, 0),
        "   querys",
        _fmt(e.querys, 0),
        "   values",
        _fmt(e.values, 0),
        "",
    ]
    if scaled:
        lines += [
            f"4. Scores: querys @ keys.T, times 1/sqrt(d_k) = 1/sqrt(3) = {e.scale:.4f}",
            "   (the Transformer's scale: keeps the scores at unit variance so the softmax",
            "   does not saturate; the document leaves it out)",
        ]
    else:
        lines += [
            "4. Scores: querys @ keys.T (unscaled as in the document; --scaled divides by sqrt(3))",
            "   row i holds input i's query against every key; input 1's row is",
            f"   [1, 0, 2] . keys = {[round(v) for v in e.scores[0].tolist()]}",
        ]
    lines += [
        _fmt(e.scores, 4 if scaled else 0),
        "",
        "5. Softmax of each row (exact)",
        _fmt(e.softmax),
        "",
        "6. Weighted values for output 1: softmax[0, i] * values[i]",
        _fmt(e.weighted_values[0]),
        "",
        "7. Output 1 is their sum",
        _fmt(e.weighted_values[0].sum(dim=0)),
        "",
        "8. Steps 4-7 for every input at once: outputs = softmax @ values",
        _fmt(e.outputs),
        "",
    ]
    if not scaled:
        lines += [
            "About the document's figures: it writes the softmax down rounded by hand",
            "(each row still sums to 1; 0.0634 and 0.0003 become 0.0)",
            _fmt(e.rounded_softmax, 1),
            "and carries on with those weights, which gives",
            _fmt(e.rounded_outputs, 1),
            "Output 1 is then 0.5 * [2, 8, 0] + 0.5 * [2, 6, 3] = [2.0, 7.0, 1.5]; with the",
            f"exact weights {[round(v, 4) for v in e.softmax[0].tolist()]} it is",
            f"{[round(v, 4) for v in e.outputs[0].tolist()]}.",
        ]
    return "\n".join(lines)
