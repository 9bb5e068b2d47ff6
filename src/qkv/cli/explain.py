"""``qkv explain``: the worked self-attention example of the tutorials, step by step
(docs/concepts.md#self-attention-worked-example)."""

from __future__ import annotations

import argparse
from typing import Any

from qkv.explain import render, worked_example


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="print the worked self-attention example step by step",
        description=__doc__,
    )
    parser.add_argument(
        "--scaled",
        action="store_true",
        help="divide the scores by sqrt(d_k) as the Transformer does (the document does not)",
    )
    parser.add_argument(
        "--plot",
        metavar="OUT",
        help="also draw the scores and the attention weights as a picture (.png or .svg)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    example = worked_example(scaled=args.scaled)
    print(render(example))
    if args.plot:
        from qkv.viz.plots import plot_worked_example, save_figure  # matplotlib only when asked

        print(f"\nwrote {save_figure(plot_worked_example(example), args.plot)}")
    return 0
