"""``qkv export``: a model as ONNX graphs or ``torch.export`` programs, for ONNX Runtime
or any program outside qkv.

qkv export runs/bert-mini --format onnx -o exported/bert-mini
qkv export path/to/all-MiniLM-L6-v2 --pooling auto -o exported/minilm
qkv export runs/vit-fashion --format torch -o exported/vit
qkv export runs/translator -o exported/translator

PATH: a qkv run or checkpoint (BERT, ViT, translator) or a Hugging Face folder qkv
reads. OUT is a new folder: the graphs (model.onnx; a translator's encoder.onnx and
decoder_step.onnx; .pt2 with --format torch), export.json (each graph's inputs and
outputs with their shapes), a translator's translator.json (start, eos and pad ids,
layers, heads), and the source's tokenizer and preprocessing files. Batch size and
sequence length stay dynamic. Every graph is run on inputs of another batch size and
length, with padding, and compared with qkv before OUT is written (a difference above
1e-4 is an error); the folder appears whole or not at all. An existing OUT is kept
unless --overwrite (and only an earlier export is ever replaced).

BERT graphs take input_ids, attention_mask (int64, 1 = real token) and token_type_ids
and give last_hidden_state (and logits for a classifier). --pooling gives a
sentence-embedding graph instead: input_ids, attention_mask -> sentence_embedding,
pooled as the model's sentence-transformers files say (auto) or as chosen. ViT:
pixel_values (normalised as export.json says) -> logits. docs/export.md shows the
graphs and a decoding loop in ONNX Runtime.

JSON keys (--json, one object): "output" (the folder), "format", "family", "files"
(the graph files), "max_abs_diff" (graph name -> largest difference from qkv on the
check inputs; null when ONNX Runtime is not installed to run it).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from qkv.cli._options import HelpFormatter, add_json, positive_int, print_json


def add_parser(subparsers: Any) -> None:
    from qkv.export.api import FORMATS, POOLING_CHOICES

    parser = subparsers.add_parser(
        "export",
        help="export a model as ONNX graphs or torch.export programs",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="a qkv run or checkpoint, or a model folder")
    parser.add_argument(
        "--format", choices=FORMATS, default="onnx", help="onnx (.onnx) or torch (.pt2)"
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="the folder to write (new)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds an earlier export",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLING_CHOICES,
        help="BERT: a sentence-embedding graph, pooled as the model's sentence-transformers "
        "files say (auto) or with mean, cls or max",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="with --pooling: unit-length embeddings or not (default: as the model's files say)",
    )
    parser.add_argument(
        "--opset", type=positive_int, help="ONNX operator set, 17 or more (default: 18)"
    )
    add_json(parser, what="one JSON object describing the export")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.export import export

    def progress(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    result = export(
        args.path,
        args.output,
        args.format,
        pooling=args.pooling,
        normalize=args.normalize,
        opset=args.opset,
        overwrite=args.overwrite,
        progress=progress,
    )
    diffs = {k: None if math.isnan(v) else v for k, v in result.max_abs_diff.items()}
    if args.json:
        print_json(
            {
                "output": str(result.output),
                "format": result.format,
                "family": result.family,
                "files": result.files,
                "max_abs_diff": diffs,
            }
        )
    else:
        print(f"wrote {result.output}: {result.family}, {', '.join(result.files)}")
    return 0
