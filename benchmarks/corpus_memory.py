"""Peak memory of reading, tokenising and storing a large parallel corpus (issue 15).

Writes a synthetic TSV of ``--pairs`` sentence pairs (8 to 12 words a side, drawn from a
vocabulary of 20,000 made-up words, so BPE has real work) into a temporary folder, then, in a
fresh subprocess each, runs what ``qkv translate train --train FILE`` does before training:

- ``qkv``: the own-corpus path (:mod:`qkv.data.parallel` streaming the file; the BPE trained
  on a generator; the ids kept in :class:`~qkv.data.parallel.EncodedPairs`);
- ``lists``: the representation used before, measured on ``--lists-pairs`` pairs only
  (clearly fewer: it is the one that does not scale): every pair read into a list of
  strings, the BPE trained on the list, the ids kept as Python lists of lists.

Each reports its peak resident memory (``ru_maxrss``), the bytes of the id storage, and the
seconds taken. Prints a Markdown section for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/corpus_memory.py --pairs 1000000 --lists-pairs 100000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

mode, path, vocab = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
if mode == "qkv":
    from qkv.data.parallel import ParallelData, ParallelFile
    from qkv.tasks.translation.train import _read_own, _tokenizer

    data = ParallelData(ParallelFile.tsv_file(path))
    tokenizer = _tokenizer(
        path.parent, lambda: (p for s, p in data.train_file_pairs() if s == "train"), vocab,
        resume=False,
    )
    prepared = _read_own(data, tokenizer, 256, 200)
    pairs = len(prepared.train) + len(prepared.valid)
    id_bytes = prepared.train.nbytes + prepared.valid.nbytes
    tokens = int(prepared.train.source_offsets[-1] + prepared.train.target_offsets[-1])
else:
    from qkv.data.bpe import TranslationTokenizer

    lines = path.read_text(encoding="utf-8").splitlines()
    text_pairs = [tuple(line.split("\t")) for line in lines]
    del lines
    tokenizer = TranslationTokenizer.train(text_pairs, vocab_size=vocab)
    sources = tokenizer.source.encode_batch([s for s, _ in text_pairs])
    targets = tokenizer.target.encode_batch([t for _, t in text_pairs])
    encoded = list(zip(sources, targets))
    pairs = len(encoded)
    # The lists, their int objects (small ints are shared: count the list slots) and tuples.
    id_bytes = sum(
        sys.getsizeof(s) + sys.getsizeof(t) + sys.getsizeof((s, t)) for s, t in encoded
    ) + sys.getsizeof(encoded)
    tokens = sum(len(s) + len(t) for s, t in encoded)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "mode": mode, "pairs": pairs, "tokens": tokens, "id_bytes": id_bytes,
    "peak_rss_kib": peak, "import_rss_kib": baseline,
    "seconds": time.perf_counter() - start,
}))
"""


def synthesise(path: Path, pairs: int, seed: int = 0) -> None:
    """``pairs`` lines of ``source<TAB>target``, 8-12 words a side."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéèäöü"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(20_000)]
    # Zipf-like: frequent words are frequent, as in text.
    weights = [1 / (rank + 1) for rank in range(len(words))]
    with path.open("w", encoding="utf-8") as f:
        block = 10_000
        for start in range(0, pairs, block):
            n = min(block, pairs - start)
            drawn = rng.choices(words, weights, k=n * 24)
            lines = []
            position = 0
            for _ in range(n):
                a, b = rng.randint(8, 12), rng.randint(8, 12)
                source = " ".join(drawn[position : position + a]).capitalize() + "."
                target = " ".join(drawn[position + 12 : position + 12 + b]).capitalize() + "."
                position += 24
                lines.append(f"{source}\t{target}\n")
            f.write("".join(lines))


def measure(mode: str, path: Path, vocab: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), str(vocab)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--lists-pairs", type=int, default=100_000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for mode, n in (
            ("qkv", args.lists_pairs),
            ("lists", args.lists_pairs),
            ("qkv", args.pairs),
        ):
            path = Path(folder) / f"corpus-{n}.tsv"
            if not path.exists():
                start = time.perf_counter()
                synthesise(path, n)
                print(
                    f"wrote {n} pairs ({path.stat().st_size / 1e6:.0f} MB) in "
                    f"{time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
            result = measure(mode, path, args.vocab_size)
            result["file_mb"] = path.stat().st_size / 1e6
            print(json.dumps(result), file=sys.stderr)
            rows.append(result)
    print("| path | pairs | file MB | tokens | id storage MB | bytes/token | peak RSS MB | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "qkv (numpy arrays, streamed)" if r["mode"] == "qkv" else "before (lists)"
        print(
            f"| {label} | {r['pairs']:,} | {r['file_mb']:.0f} | {r['tokens']:,} | "
            f"{r['id_bytes'] / 1e6:.1f} | {r['id_bytes'] / r['tokens']:.1f} | "
            f"{r['peak_rss_kib'] / 1024:.0f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
