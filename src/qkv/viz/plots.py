"""Pictures of attention with matplotlib: heat maps, the lines view, ViT overlays.

- :func:`plot_attention`: a grid of heat maps, layers × heads (or the mean over
  heads), queries down the side, keys along the bottom (target and source tokens
  for cross-attention).
- :func:`plot_attention_lines`: the tutorials' picture, one token's attention as lines
  to every token, thicker for more weight ("*it* attends to *dog* more than to
  *food*"; docs/concepts.md#self-attention).
- :func:`plot_worked_example`: the score and softmax matrices of the worked example
  (docs/concepts.md#self-attention-worked-example).
- :func:`plot_vit_attention`: the class token's attention over the patches laid
  over the image, per head and averaged, and the attention rollout (as people
  looking at a rabbit look at its face: docs/concepts.md#attention-maps).
- :func:`save_figure`: PNG or SVG, chosen by the file's suffix.

Figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``: no global
figure state, no GUI backend, safe in a library and in tests.

Notation: n layers shown, h heads, q queries (rows), k keys (columns), g patches per
side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from qkv.explain import WorkedExample
from qkv.viz.capture import AttentionMap, attention_rollout

__all__ = [
    "find_token",
    "plot_attention",
    "plot_attention_lines",
    "plot_vit_attention",
    "plot_worked_example",
    "save_figure",
]

CMAP = "Blues"  # white = no weight: padding-free maps read like ink on paper
OVERLAY_CMAP = "inferno"
SUFFIXES = (".png", ".svg")
MAX_LABELLED = 60  # more tokens than this per axis and the labels are left off


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``figure`` as PNG or SVG (by the suffix of ``path``)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"picture must end in one of {SUFFIXES}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _normalise_token(token: str) -> str:
    # SentencePiece/BPE word starts ("▁dog", "Ġdog") and WordPiece continuations
    # ("##s") are how the tokenizers write pieces, not part of what a person types.
    return token.lstrip("▁Ġ").removeprefix("##").lower()


def find_token(tokens: Sequence[str], token: int | str) -> int:
    """Index of ``token`` in ``tokens``. A string is looked up as the token itself,
    then as the word without the tokenizer's marks (``"it"`` finds ``"▁it"``), and
    only then read as an index (``"3"``, ``"-1"``); the first match wins."""
    if isinstance(token, str):
        if token in tokens:
            return list(tokens).index(token)
        wanted = _normalise_token(token)
        for i, candidate in enumerate(tokens):
            if _normalise_token(candidate) == wanted:
                return i
        if not token.lstrip("-").isdigit():
            raise ValueError(f"token {token!r} not among {list(tokens)}")
    index = int(token)
    if not -len(tokens) <= index < len(tokens):
        raise ValueError(f"token index {index} out of range for {len(tokens)} tokens")
    return index % len(tokens)


def _select_heads(amap: AttentionMap, heads: Sequence[int] | None) -> list[int]:
    if heads is None:
        return list(range(amap.num_heads))
    bad = [h for h in heads if not -amap.num_heads <= h < amap.num_heads]
    if bad:
        raise ValueError(f"heads {bad} out of range for {amap.num_heads} heads")
    return [h % amap.num_heads for h in heads]


def _select_layers(amap: AttentionMap, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(amap.layers)
    bad = [i for i in layers if not -amap.num_layers <= i < amap.num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for {amap.num_layers} layers")
    chosen = [i % amap.num_layers for i in layers]
    missing = [i for i in chosen if i not in amap.layers]
    if missing:
        raise ValueError(f"layers {missing} were not captured; captured {list(amap.layers)}")
    return chosen


def _panels(
    amap: AttentionMap, layers: Sequence[int] | None, heads: Sequence[int] | None, mean: bool
) -> tuple[list[int], list[str], Tensor]:
    """(layers, column titles, weights ``(n, columns, q, k)``) for a grid."""
    rows = _select_layers(amap, layers)
    stacked = torch.stack([amap.layer(i) for i in rows])  # (n, h, q, k)
    chosen = _select_heads(amap, heads)
    if mean:
        name = "mean of heads" if heads is None else f"mean of heads {chosen}"
        return rows, [name], stacked[:, chosen].mean(dim=1, keepdim=True)  # (n, 1, q, k)
    return rows, [f"head {h}" for h in chosen], stacked[:, chosen]


def _heatmap(
    ax: Axes,
    weights: np.ndarray,
    queries: Sequence[str],
    keys: Sequence[str],
    *,
    vmax: float,
    x_labels: bool,
    y_labels: bool,
    annotate: str | None = None,
) -> None:
    ax.imshow(weights, cmap=CMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    q, k = weights.shape
    small = max(q, k) > 24
    fontsize = 6 if small else 8
    ax.set_xticks(range(k) if x_labels and k <= MAX_LABELLED else [])
    ax.set_yticks(range(q) if y_labels and q <= MAX_LABELLED else [])
    if x_labels and k <= MAX_LABELLED:
        # Upright when they fit side by side, else turned to run down the axis.
        upright = k <= 8 and max(len(t) for t in keys) <= 8
        ax.set_xticklabels(keys, rotation=0 if upright else 90, fontsize=fontsize)
    if y_labels and q <= MAX_LABELLED:
        ax.set_yticklabels(queries, fontsize=fontsize)
    ax.tick_params(length=0)
    if annotate is not None:
        for r in range(q):
            for c in range(k):
                value = weights[r, c]
                colour = "white" if value > 0.6 * vmax else "black"
                ax.text(c, r, format(value, annotate), ha="center", va="center", color=colour)


AXIS_NAMES = {
    "encoder": ("query", "key"),
    "decoder": ("target (produced)", "target (input)"),
    "cross": ("target", "source"),
}


def plot_attention(
    amap: AttentionMap,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mean: bool = False,
    title: str | None = None,
) -> Figure:
    """Heat maps of ``amap``: one row per layer, one column per head (or a single
    column, the mean over ``heads``, with ``mean=True``). One colour scale for the
    whole figure, from 0 to the largest weight shown, so panels compare.

    Shape: draws ``(n, h, q, k)`` as n × h panels of q rows and k columns.
    """
    rows, columns, weights = _panels(amap, layers, heads, mean)
    n, m, q, k = weights.shape
    side = min(max(1.8, 0.2 * max(q, k)), 6.0)  # inches per panel: room for the labels
    figure = Figure(figsize=(side * m + 1.5, side * n + 1.0), layout="constrained")
    axes = figure.subplots(n, m, squeeze=False)
    values = weights.numpy()
    vmax = float(values.max()) or 1.0
    for i, layer in enumerate(rows):
        for j in range(m):
            ax = axes[i, j]
            _heatmap(
                ax,
                values[i, j],
                amap.queries,
                amap.keys,
                vmax=vmax,
                x_labels=i == n - 1,
                y_labels=j == 0,
            )
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    mappable = axes[0, 0].images[0]
    figure.colorbar(mappable, ax=axes, shrink=0.6, label="attention weight")
    query_name, key_name = AXIS_NAMES[amap.kind]
    figure.suptitle(
        title or f"{amap.kind} attention (rows: {query_name}, columns: {key_name})",
        fontsize=10,
    )
    return figure


def _draw_lines(
    ax: Axes, weights: np.ndarray, queries: Sequence[str], keys: Sequence[str], index: int | None
) -> None:
    """Queries on the left, keys on the right, a line for each (query, key): its
    width is proportional to the weight (docs/concepts.md#self-attention), its opacity grows
    with it."""
    q, k = weights.shape
    top = max(q, k) - 1
    for i, text in enumerate(queries):
        ax.text(0, top - i, text, ha="right", va="center", fontsize=9,
                fontweight="bold" if i == index else "normal")  # fmt: skip
    for j, text in enumerate(keys):
        ax.text(1, top - j, text, ha="left", va="center", fontsize=9)
    wanted = range(q) if index is None else [index]
    vmax = float(weights[list(wanted)].max()) or 1.0
    for i in wanted:
        for j in range(k):
            w = float(weights[i, j])
            if w < 0.01 * vmax:
                continue  # invisible anyway; keeps SVGs small
            ax.plot([0.08, 0.92], [top - i, top - j], color="tab:blue", solid_capstyle="butt",
                    linewidth=0.3 + 8.0 * w, alpha=0.25 + 0.75 * w / vmax)  # fmt: skip
    ax.set_xlim(-0.7, 1.7)
    ax.set_ylim(-1, top + 1)
    ax.axis("off")


def plot_attention_lines(
    amap: AttentionMap,
    *,
    layer: int,
    token: int | str | None,
    heads: Sequence[int] | None = None,
    mean: bool = False,
) -> Figure:
    """The lines view of one layer (docs/concepts.md#self-attention): from query
    ``token`` (an index or the token's text; ``None`` = every query) a line to each key,
    as thick as its weight.
    One panel per head of ``heads`` (default all), or one for their mean."""
    _, columns, weights = _panels(amap, [layer], heads, mean)
    values = weights[0].numpy()  # (columns, q, k)
    index = None if token is None else find_token(amap.queries, token)
    height = 0.28 * max(len(amap.queries), len(amap.keys)) + 1.0
    figure = Figure(figsize=(2.6 * len(columns), height), layout="constrained")
    axes = figure.subplots(1, len(columns), squeeze=False)[0]
    for ax, name, panel in zip(axes, columns, values, strict=True):
        _draw_lines(ax, panel, amap.queries, amap.keys, index)
        ax.set_title(name, fontsize=9)
    who = "every token" if index is None else repr(amap.queries[index])
    figure.suptitle(f"{amap.kind} attention of {who}, layer {layer % amap.num_layers}", fontsize=10)
    return figure


def plot_worked_example(example: WorkedExample) -> Figure:
    """The worked example (docs/concepts.md#self-attention-worked-example) as a picture:
    the scores ``querys @ keys.T``, their softmax (the attention weights, numbers written
    in), and the weights as lines."""
    scores = example.scores.numpy()  # (3, 3)
    softmax = example.softmax.numpy()  # (3, 3)
    scaled = example.scale != 1.0
    names = [f"input {i + 1}" for i in range(scores.shape[0])]
    figure = Figure(figsize=(10.5, 3.4), layout="constrained")
    ax_scores, ax_softmax, ax_lines = figure.subplots(1, 3)
    _heatmap(ax_scores, scores, names, names, vmax=float(scores.max()), x_labels=True,
             y_labels=True, annotate=".2f" if scaled else ".0f")  # fmt: skip
    ax_scores.set_title("scores = querys @ keys.T" + (" / √3" if scaled else ""), fontsize=9)
    _heatmap(ax_softmax, softmax, names, names, vmax=1.0, x_labels=True, y_labels=True,
             annotate=".4f")  # fmt: skip
    ax_softmax.set_title("softmax of each row (attention weights)", fontsize=9)
    for ax in (ax_scores, ax_softmax):
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    _draw_lines(ax_lines, softmax, names, names, None)
    ax_lines.set_title("the same weights as lines", fontsize=9)
    figure.suptitle("Self-attention, the worked example", fontsize=10)
    return figure


def _image_array(image: Tensor) -> tuple[np.ndarray, str | None]:
    """An image ``(c, H, W)`` or ``(H, W)`` as something imshow draws, stretched to
    [0, 1] (normalised pixels are not in any fixed range)."""
    pixels = image.detach().float().cpu()
    if pixels.dim() == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-12)
    if pixels.dim() == 2:
        return pixels.numpy(), "gray"
    return pixels.permute(1, 2, 0).numpy(), None  # (H, W, c)


def _overlay(ax: Axes, image: np.ndarray, cmap: str | None, heat: np.ndarray, title: str) -> None:
    height, width = image.shape[:2]
    ax.imshow(image, cmap=cmap, extent=(0, width, height, 0))
    # Stretched per panel: the class token's weights over patches sum to less than
    # one, and how much less differs from head to head.
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / (span if span > 0 else 1.0)
    ax.imshow(heat, cmap=OVERLAY_CMAP, alpha=0.55, extent=(0, width, height, 0),
              interpolation="bilinear")  # fmt: skip
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_vit_attention(
    image: Tensor,
    amap: AttentionMap,
    *,
    layer: int = -1,
    heads: Sequence[int] | None = None,
    rollout: bool = True,
    title: str | None = None,
) -> Figure:
    """The class token's attention over the patches of one layer, laid over the
    image: the mean over heads, then each head; then the rollout through every
    layer, when every layer was captured and ``rollout`` is set.

    Shape: image ``(c, H, W)`` or ``(H, W)``; ``amap`` of a ViT (``grid_size`` set).
    """
    if amap.grid_size is None:
        raise ValueError("not a ViT attention map (no grid_size); capture it with capture_vit")
    g = amap.grid_size
    pixels, cmap = _image_array(image)
    weights = amap.layer(layer)[:, 0, 1:]  # (h, g·g): the class token's row, patches only
    chosen = _select_heads(amap, heads)
    panels = [("image", None), (f"mean of {len(chosen)} heads", weights[chosen].mean(dim=0))]
    panels += [(f"head {h}", weights[h]) for h in chosen]
    if rollout and amap.layers == tuple(range(amap.num_layers)):
        rolled = attention_rollout(amap.weights)[0, 1:]  # (g·g,)
        panels.append((f"rollout, {amap.num_layers} layers", rolled))
    columns = min(len(panels), 6)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, heat) in zip(axes, panels, strict=False):
        if heat is None:
            ax.imshow(pixels, cmap=cmap)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
        else:
            _overlay(ax, pixels, cmap, heat.reshape(g, g).numpy(), name)
    for ax in axes[len(panels) :]:
        ax.axis("off")
    figure.suptitle(
        title or f"class token's attention over {g}×{g} patches, layer {layer % amap.num_layers}",
        fontsize=10,
    )
    return figure
