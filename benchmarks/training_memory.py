"""Memory of a training step with and without activation checkpointing (issue 18).

A BERT-base training step (sequence classification, every position a real token,
dropout on, fp32 unless ``--bf16``) at each ``--lengths``, ``--batch-size`` sequences,
once plain and once with every encoder layer checkpointed
(:func:`qkv.train.checkpointing.checkpoint_layers`, what ``--checkpoint-activations``
does). Each runs in a fresh subprocess, which reports:

- ``peak``: its peak resident memory (``ru_maxrss``) over the whole process (with
  glibc's mmap threshold fixed, so that freed tensors leave the resident memory);
- ``step``: that peak less the resident memory just before the step (the model built,
  no gradients yet): the step's own memory, activations and gradients;
- the seconds of forward + backward (a second step, the first one warms up).

The gradients of the two are checked equal (to 1e-6) on the first step. Prints a
Markdown section; ``--results benchmarks/RESULTS.md`` writes it into that file.

    .venv/bin/python benchmarks/training_memory.py --lengths 512 2048 --batch-size 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import log, write_results

CHILD = r"""
import json, resource, sys, time
import torch
from qkv.models.bert import BertConfig, BertForSequenceClassification
from qkv.train.checkpointing import checkpoint_layers

length, batch, checkpointed, bf16, threads = (int(a) for a in sys.argv[1:6])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
config = BertConfig.base(vocab_size=30522, max_position_embeddings=max(512, length))
model = BertForSequenceClassification(config, 2).train()
if checkpointed:
    checkpoint_layers(model)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
labels = torch.arange(batch) % 2

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

def step():
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16)):
        loss = model(ids, labels=labels).loss
    loss.backward()
    return loss

before = rss_kib()
start = time.perf_counter()
loss = step()
first = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
torch.save(grads, sys.argv[6])
start = time.perf_counter()
step()
seconds = time.perf_counter() - start
print(json.dumps({"before_kib": before, "peak_kib": peak, "first_s": first,
                  "seconds": seconds, "loss": float(loss)}))
"""


def run(length: int, batch: int, checkpointed: bool, args: argparse.Namespace, out: Path) -> dict:
    command = [
        sys.executable, "-c", CHILD, str(length), str(batch), str(int(checkpointed)),
        str(int(args.bf16)), str(args.threads or 0), str(out),
    ]  # fmt: skip
    # A fixed mmap threshold: every large tensor gets its own mapping, returned to the
    # system when freed, so the resident memory follows the live tensors. (glibc's
    # default raises the threshold after the first large free, and freed tensors then
    # stay in its heap and in the resident figure.)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--results", type=Path, help="write the section into this file")
    args = parser.parse_args()
    import tempfile

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for length in args.lengths:
            figures = {}
            for checkpointed in (False, True):
                out = Path(folder) / f"{length}-{int(checkpointed)}.pt"
                figures[checkpointed] = run(length, args.batch_size, checkpointed, args, out)
                log(f"L {length}, checkpointed {checkpointed}: {figures[checkpointed]}")
            plain = torch.load(Path(folder) / f"{length}-0.pt")
            ckpt = torch.load(Path(folder) / f"{length}-1.pt")
            difference = max((plain[n] - ckpt[n]).abs().max().item() for n in plain)
            rows.append((length, figures, difference))
    precision = "bf16 autocast" if args.bf16 else "fp32"
    lines = [
        "## Training memory: activation checkpointing (benchmarks/training_memory.py)",
        "",
        f"Measured {datetime.date.today()}, torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads, {precision}: one BERT-base "
        f"training step (sequence classification, dropout on), batch {args.batch_size}, "
        "every position a real token, each in a fresh process. *Step memory*: the peak "
        "resident memory less the resident memory before the step (the model built): "
        "activations and gradients. Gradients with and without checkpointing compared on "
        "the same step.",
        "",
        f"`.venv/bin/python benchmarks/training_memory.py --lengths "
        f"{' '.join(map(str, args.lengths))} --batch-size {args.batch_size}"
        f"{' --bf16' if args.bf16 else ''}{f' --threads {args.threads}' if args.threads else ''}`",
        "",
        "| length | step memory, plain | checkpointed | saved | peak RSS plain / checkpointed "
        "| forward + backward, plain / checkpointed | max gradient difference |",
        "| ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for length, f, difference in rows:
        step = {k: (v["peak_kib"] - v["before_kib"]) / 1024 for k, v in f.items()}
        saved = 1 - step[True] / step[False]
        lines.append(
            f"| {length} | {step[False]:,.0f} MiB | {step[True]:,.0f} MiB | {saved:.0%} "
            f"| {f[False]['peak_kib'] / 1024:,.0f} / {f[True]['peak_kib'] / 1024:,.0f} MiB "
            f"| {f[False]['seconds']:.1f} / {f[True]['seconds']:.1f} s | {difference:.1e} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.results:
        write_results(args.results, text)


if __name__ == "__main__":
    main()
