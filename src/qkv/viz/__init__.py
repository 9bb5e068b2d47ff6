"""Seeing inside: attention weights captured from qkv's models, as pictures and as a page.

- :mod:`qkv.viz.capture`: one forward pass, the weights of the layers asked for,
  with their tokens (:class:`AttentionMap`); attention rollout.
- :mod:`qkv.viz.plots`: matplotlib figures (heat-map grids, the lines view, ViT
  overlays, the worked example of docs/concepts.md#self-attention-worked-example),
  saved as PNG or SVG.
- :mod:`qkv.viz.page`: a self-contained HTML page to explore them in a browser.
"""

from qkv.viz.capture import (
    KINDS,
    AttentionMap,
    Kind,
    attention_rollout,
    bert_attention,
    capture_bert,
    capture_seq2seq,
    capture_vit,
    patch_labels,
    translator_attention,
)
from qkv.viz.page import attention_page, write_attention_page
from qkv.viz.plots import (
    find_token,
    plot_attention,
    plot_attention_lines,
    plot_vit_attention,
    plot_worked_example,
    save_figure,
)

__all__ = [
    "KINDS",
    "AttentionMap",
    "Kind",
    "attention_page",
    "attention_rollout",
    "bert_attention",
    "capture_bert",
    "capture_seq2seq",
    "capture_vit",
    "find_token",
    "patch_labels",
    "plot_attention",
    "plot_attention_lines",
    "plot_vit_attention",
    "plot_worked_example",
    "save_figure",
    "translator_attention",
    "write_attention_page",
]
