"""bf16 against fp32 on this machine's CPU, and what ``precision="auto"`` picks.

Two comparisons, each interleaved in one run (:func:`_common.time_interleaved`):

- a matrix product, ``(rows, d) @ (d, d_ff)``, as the feed-forward of the translation
  presets has it, in fp32 and in bf16 (GFLOP/s);
- a training step (forward, backward, no optimizer) of the ``small`` translation
  preset's model on a batch of random token ids, in fp32 and under bf16 autocast, as
  ``train.precision`` ``fp32`` and ``bf16`` run it (target tokens per second).

Prints a Markdown sub-section named after the CPU and its bf16-relevant features;
``--results benchmarks/RESULTS.md`` writes it into that file's "Training precision"
section, beside those of other CPUs.

    .venv/bin/python benchmarks/precision.py --threads 2 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from _common import cpu_description, log, ratio_spread, time_interleaved, write_results

from qkv.precision import bf16_is_slow, resolve_precision
from qkv.tasks.translation import PRESETS

SECTION = "## Training precision (benchmarks/precision.py)"
CPU = torch.device("cpu")


def matmul(rows: int, d: int, d_ff: int, rounds: int) -> tuple[float, float, tuple]:
    """GFLOP/s in fp32 and bf16, and the median, min and max of the per-round ratio of
    bf16's time to fp32's."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, d, generator=generator)
    b = torch.randn(d, d_ff, generator=generator)
    a16, b16 = a.bfloat16(), b.bfloat16()
    _, fp32, bf16 = time_interleaved(
        lambda: a @ b, lambda: a16 @ b16, rounds=rounds, warmup=1.0, min_time=0.2
    )
    flop = 2 * rows * d * d_ff
    return flop / min(fp32) / 1e9, flop / min(bf16) / 1e9, ratio_spread(bf16, fp32)


def training_step(batch: int, length: int, rounds: int) -> tuple[float, float, tuple]:
    """Target tokens per second in fp32 and under bf16 autocast, and the spread of the
    per-round ratio of bf16's time to fp32's."""
    from qkv import Transformer

    torch.manual_seed(0)
    config = PRESETS["small"].model
    model = Transformer(config).train()
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, config.src_vocab_size, (batch, length), generator=generator)
    tgt = torch.randint(4, config.tgt_vocab_size, (batch, length + 1), generator=generator)

    def step(bf16: bool) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(src, tgt[:, :-1], labels=tgt[:, 1:]).loss
        loss.backward()

    _, fp32, bf16 = time_interleaved(
        lambda: step(False), lambda: step(True), rounds=rounds, warmup=1.0
    )
    tokens = batch * length
    return tokens / min(fp32), tokens / min(bf16), ratio_spread(bf16, fp32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="sentences per training batch")
    parser.add_argument("--length", type=int, default=30, help="tokens per sentence")
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = cpu_description()
    log(f"{where}, {torch.get_num_threads()} threads")
    lines = [
        f"### {where}",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.rounds} interleaved rounds (best round shown; the ratio is the "
        "median of the rounds, the range in brackets). Command: `.venv/bin/python "
        f"benchmarks/precision.py --threads {torch.get_num_threads()}`.",
        "",
        "| comparison | fp32 | bf16 | bf16 time / fp32 time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for rows, d, d_ff in ((3000, 256, 1024), (3000, 1024, 256)):
        log(f"matmul ({rows}, {d}) @ ({d}, {d_ff})")
        fp32, bf16, (median, low, high) = matmul(rows, d, d_ff, args.rounds)
        lines.append(
            f"| matrix product ({rows}, {d}) @ ({d}, {d_ff}), GFLOP/s | {fp32:.1f} | "
            f"{bf16:.1f} | {median:.2f}× ({low:.2f}–{high:.2f}) |"
        )
    log(f"training step of the small preset's model, {args.batch} × {args.length} tokens")
    fp32, bf16, (median, low, high) = training_step(args.batch, args.length, args.rounds)
    lines.append(
        f"| training step of `small`'s model, {args.batch} × {args.length} target tokens, "
        f"tokens/s | {fp32:.0f} | {bf16:.0f} | {median:.2f}× ({low:.2f}–{high:.2f}) |"
    )
    slow = bf16_is_slow(CPU)
    lines += [
        "",
        f'`precision="auto"` picks **{resolve_precision("auto", CPU)}** here'
        + (f": {slow}." if slow else ": the CPU has bf16 matrix instructions."),
    ]
    text = "\n".join(lines)
    print(text)
    if args.results:
        write_results(args.results, text, section=SECTION)


if __name__ == "__main__":
    main()
