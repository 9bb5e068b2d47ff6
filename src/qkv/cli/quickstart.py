"""``qkv quickstart``: a tour of real models on real data, in minutes on a CPU.

qkv quickstart
qkv quickstart --run-dir runs/my-tour --json

Fine-tunes the installed all-MiniLM-L6-v2 on the BBC News topics and trains a small
ViT on Fashion-MNIST at the same time, one process and one thread each (two cores);
draws the tutorials' worked self-attention example meanwhile; then writes the
attention pictures and offline pages of both trained models, and ends with a summary
table and the commands of the longer jobs. Everything goes into --run-dir: the two
runs (minilm-bbc/, vit-fashion/: ``qkv bert classify``, ``qkv vit classify`` and
``qkv attention`` read them), worked-example.png, attention/, logs/, summary.json and
summary.txt.

JSON keys (--json, one object at the end): run_dir (str), seconds (float: the whole
tour), stages (list, in order, of objects: name (str: minilm-bbc, vit-fashion,
worked-example, attention), result (str: one line for people), seconds (float), files
(list of str), metrics (object: test_accuracy, valid_accuracy, train_seconds and sizes
or steps for the trainings; sentence, label and image for attention; empty otherwise)),
next_steps (list of objects: command (str), gives (str)).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qkv.cli._options import HelpFormatter, add_json, add_overwrite, add_progress, print_json

USAGE = __doc__
# The tour's settings; tests replace them with tiny ones.
SETTINGS: Any = None


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="a tour in minutes: train MiniLM and a ViT, attention pictures, what next",
        description=USAGE,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--run-dir", default="runs/quickstart-tour", help="where every file of the tour goes"
    )
    add_overwrite(parser, resume=None)
    add_progress(parser)
    add_json(parser, "the summary as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.tasks.quickstart import format_summary, run_tour

    # Stage lines on stderr under --json, so that stdout holds the JSON object alone.
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    def tick(text: str) -> None:
        print(text, end="", file=sys.stderr, flush=True)

    ticking = not args.no_progress and sys.stderr.isatty()
    report = run_tour(
        args.run_dir, SETTINGS, overwrite=args.overwrite, say=say, tick=tick if ticking else None
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print()
        print(format_summary(report), end="")
    return 0
