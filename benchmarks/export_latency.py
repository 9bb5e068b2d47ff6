"""Exported models in ONNX Runtime against qkv in PyTorch, on the CPU.

Three comparisons, each in one process, the two sides timed interleaved round by round
(the order alternating; :func:`_common.time_interleaved`), torch and ONNX Runtime given
the same number of threads (``torch.set_num_threads(N)``; ONNX Runtime
``intra_op_num_threads = N``, ``inter_op_num_threads = 1``):

1. all-MiniLM-L6-v2 (the folder scripts/setup.sh installs, ``qkv.tasks.bert.minilm_path``)
   exported with its pooling (``qkv export PATH --pooling auto``): the ONNX graph
   (body, mean pooling, normalisation) against the same computation in qkv
   (:class:`qkv.export.graphs.SentenceEmbeddingGraph`, eager, ``torch.inference_mode``);
2. BERT-base with random weights (768 wide, 12 layers, ``BertConfig.base()``): the body's
   graph (``last_hidden_state``, ``pooler_output``) against ``BertModel.forward``;
3. a base-size translator with random weights (``TransformerConfig.base``, 512 wide,
   6 + 6 layers, joint vocabulary ``--vocab``): greedy decoding in ONNX Runtime
   (:class:`qkv.export.translator.OnnxTranslator`, a numpy loop over the decoder-step
   graph) against :func:`qkv.decoding.greedy_decode`, both producing exactly
   ``--tokens`` tokens per sentence (eos forbidden before that).

BERT inputs are ``--seq-len`` random ids per row, no padding, at each of ``--batches``.
Reported: median seconds per call of each side, and the median and min–max over rounds
of the per-round speed ratio qkv s / ONNX Runtime s (> 1: ONNX Runtime is faster);
decoding as new tokens per second.

Run (from the repository root; ten minutes or more on 2 shared vCPUs):
    .venv/bin/python benchmarks/export_latency.py --threads 1
    .venv/bin/python benchmarks/export_latency.py --threads 1 --write

The Markdown goes to stdout, progress to stderr; ``--write`` also puts the section
``## Exported models (ONNX Runtime)`` into benchmarks/RESULTS.md (that section only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import log, ratio_spread, time_interleaved, write_results

from qkv.convert.bert import save_pretrained
from qkv.decoding import greedy_decode
from qkv.export import export
from qkv.export.graphs import BertGraph, SentenceEmbeddingGraph
from qkv.models.bert import BertConfig, BertModel
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.tasks.bert import SentenceEncoder, minilm_path

SECTION = "## Exported models (ONNX Runtime)"
RESULTS = Path(__file__).with_name("RESULTS.md")


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    name: str,
    qkv_call: Callable[[], object],
    ort_call: Callable[[], object],
    args: argparse.Namespace,
) -> dict[str, object]:
    calls, qkv_times, ort_times = time_interleaved(
        qkv_call,
        ort_call,
        rounds=args.rounds,
        warmup=args.warmup,
        min_time=0.5,
        budget=args.budget,
    )
    median, low, high = ratio_spread(qkv_times, ort_times)
    row = {
        "name": name,
        "rounds": len(qkv_times),
        "calls": calls,
        "qkv": statistics.median(qkv_times),
        "ort": statistics.median(ort_times),
        "ratio": (median, low, high),
    }
    spread = f"{median:.2f}x [{low:.2f}-{high:.2f}]"
    log(f"{name}: qkv {row['qkv']:.4f} s, ORT {row['ort']:.4f} s, {spread}")
    return row


def bert_rows(
    label: str,
    module: torch.nn.Module,
    onnx_file: Path,
    inputs: Sequence[str],
    args: argparse.Namespace,
    vocab: int,
) -> list[dict[str, object]]:
    ort_session = session(onnx_file, args.threads)
    rows = []
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(1000, vocab, (batch, args.seq_len), generator=g)
        mask = torch.ones_like(ids)
        tensors = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids),
        }
        feed = {k: tensors[k].numpy() for k in inputs}
        torch_args = [tensors[k] for k in inputs]

        def qkv_call(torch_args: list[torch.Tensor] = torch_args) -> object:
            with torch.inference_mode():
                return module(*torch_args)

        def ort_call(feed: dict[str, np.ndarray] = feed) -> object:
            return ort_session.run(None, feed)

        # The two agree before they are timed.
        expected, got = qkv_call()[0], ort_call()[0]
        diff = float(np.abs(expected.numpy() - got).max())
        row = compare(f"{label} batch {batch}", qkv_call, ort_call, args)
        rows.append({**row, "batch": batch, "diff": diff})
    return rows


def translator_rows(args: argparse.Namespace, folder: Path) -> list[dict[str, object]]:
    from qkv.export.onnx import save_onnx
    from qkv.export.torch_export import export_program
    from qkv.export.translator import (
        METADATA_FILE,
        OnnxTranslator,
        translator_graphs,
        translator_metadata,
    )

    torch.manual_seed(0)
    config = TransformerConfig.base(args.vocab, args.vocab, share_embeddings=True, max_len=256)
    model = Transformer(config).eval()
    start = time.perf_counter()
    for graph in translator_graphs(model):
        save_onnx(graph, export_program(graph), folder / f"{graph.name}.onnx")
    (folder / METADATA_FILE).write_text(json.dumps(translator_metadata(model)))
    log(f"translator exported in {time.perf_counter() - start:.0f} s")
    exported = OnnxTranslator(folder, threads=args.threads)
    rows = []
    tokens = args.tokens
    for batch in args.translator_batches:
        g = torch.Generator().manual_seed(batch)
        src = torch.randint(3, args.vocab, (batch, args.src_len), generator=g)
        src_np = src.numpy()

        def qkv_call(src: torch.Tensor = src) -> object:
            return greedy_decode(model, src, max_len=tokens, min_len=tokens).tokens

        def ort_call(src_np: np.ndarray = src_np) -> object:
            return exported.greedy(src_np, max_len=tokens, min_len=tokens)[0]

        same = qkv_call() == ort_call()
        row = compare(f"translator batch {batch}", qkv_call, ort_call, args)
        rows.append({**row, "batch": batch, "same_tokens": same})
    return rows


def markdown(args: argparse.Namespace, bert: list[dict], translator: list[dict], when: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {when}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"Python {platform.python_version()}, CPU, float32, {args.threads} thread(s) on each "
        "side (`torch.set_num_threads`; ONNX Runtime `intra_op_num_threads`, "
        "`inter_op_num_threads = 1`), both in one process, sides alternating per round. "
        f"BERT inputs: {args.seq_len} random ids per row, no padding. The graphs come "
        "from `qkv.export.export` (opset 18, `torch.onnx.export(dynamo=True)`); "
        "ONNX Runtime's default graph optimisations.",
        "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/export_latency.py', *sys.argv[1:]])}`",
        "",
        "| model | batch | rounds × calls | qkv s (median) | ONNX Runtime s (median) "
        "| speed ratio qkv / ORT, median [min–max] | max abs difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bert:
        m, lo, hi = r["ratio"]
        lines.append(
            f"| {r['name'].rsplit(' batch', 1)[0]} | {r['batch']} | {r['rounds']} × {r['calls']} "
            f"| {r['qkv']:.4f} | {r['ort']:.4f} | {m:.2f}× [{lo:.2f}–{hi:.2f}] | {r['diff']:.1e} |"
        )
    if translator:
        lines += [
            "",
            f"Greedy decoding, base-size translator (random weights, joint vocabulary "
            f"{args.vocab}), {args.src_len} source tokens and exactly {args.tokens} new "
            "tokens per sentence; ONNX Runtime: `OnnxTranslator.greedy` (numpy loop over "
            "`decoder_step.onnx`, cross-attention keys/values from `encoder.onnx`), qkv: "
            "`greedy_decode` (key/value cache).",
            "",
            "| batch | rounds × calls | qkv tokens/s | ONNX Runtime tokens/s "
            "| speed ratio, median [min–max] | same tokens |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for r in translator:
            m, lo, hi = r["ratio"]
            new = r["batch"] * args.tokens
            lines.append(
                f"| {r['batch']} | {r['rounds']} × {r['calls']} | {new / r['qkv']:.0f} "
                f"| {new / r['ort']:.0f} | {m:.2f}× [{lo:.2f}–{hi:.2f}] "
                f"| {'yes' if r['same_tokens'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads of each side")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="BERT batches")
    parser.add_argument("--seq-len", type=int, default=128, help="BERT tokens per row")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (fewer if --budget)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per case")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per case, roughly")
    parser.add_argument("--vocab", type=int, default=8000, help="translator vocabulary")
    parser.add_argument("--src-len", type=int, default=24, help="translator source tokens")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sentence")
    parser.add_argument(
        "--translator-batches", type=int, nargs="+", default=[1, 32], help="translator batches"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["minilm", "base", "translator"])
    parser.add_argument("--write", action="store_true", help="write the section of RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bert: list[dict] = []
    translator: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if "minilm" not in args.skip:
            export(minilm_path(), tmp / "minilm", "onnx", pooling="auto")
            encoder = SentenceEncoder.load(minilm_path())
            module = SentenceEmbeddingGraph(encoder.model, encoder.pooling, encoder.normalize)
            bert += bert_rows(
                "all-MiniLM-L6-v2 + mean pooling",
                module.eval(),
                tmp / "minilm" / "model.onnx",
                ["input_ids", "attention_mask"],
                args,
                encoder.model.config.vocab_size,
            )
        if "base" not in args.skip:
            torch.manual_seed(0)
            model = BertModel(BertConfig.base()).eval()
            save_pretrained(model, tmp / "bert-base-src")
            start = time.perf_counter()
            export(tmp / "bert-base-src", tmp / "bert-base", "onnx")
            log(f"BERT-base exported in {time.perf_counter() - start:.0f} s")
            bert += bert_rows(
                "BERT-base (random weights)",
                BertGraph(model, token_types=True).eval(),
                tmp / "bert-base" / "model.onnx",
                ["input_ids", "attention_mask", "token_type_ids"],
                args,
                model.config.vocab_size,
            )
        if "translator" not in args.skip:
            folder = tmp / "translator"
            folder.mkdir()
            translator = translator_rows(args, folder)
    text = markdown(args, bert, translator, when)
    print(text)
    if args.write:
        write_results(RESULTS, text)
        log(f"wrote the section into {RESULTS}")


if __name__ == "__main__":
    main()
