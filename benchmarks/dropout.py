"""qkv's dropout (16 random bits an element) against torch's ``F.dropout`` on this CPU.

Two comparisons, each interleaved in one run (:func:`_common.time_interleaved`); the
ratio is torch's time ÷ qkv's time per round (> 1: qkv faster):

- one call on an activation of the shapes a MiniLM fine-tuning step drops (16 × 128
  tokens of width 384, and of the feed-forward's 1,536), in fp32 and bf16;
- attention with dropout 0.1, forward and backward, at MiniLM's shapes (16 × 12 heads ×
  128 × 32): qkv's ``scaled_dot_product_attention``, which on a CPU takes its plain path
  with qkv's dropout, against the same call inside ``torch_dropout()``, which runs torch's
  fused kernel (its math fallback, with torch's draw);
- whole training steps (forward, backward, AdamW) of the same model, qkv's dropout
  against ``qkv.dropout.torch_dropout()`` (the same model drawing its masks with torch's
  kernel): all-MiniLM-L6-v2 with a 5-way classifier at batch 16 × 128 (the fine-tuning
  recipe), and the ``small`` translation preset's model at 20 × 30 + 30 tokens.

Prints a Markdown sub-section named after the CPU; ``--results benchmarks/RESULTS.md``
writes it into that file's "Dropout" section, beside those of other CPUs.

    .venv/bin/python benchmarks/dropout.py --threads 1 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import cpu_description, log, ratio_spread, time_interleaved, write_results

from qkv.dropout import dropout, torch_dropout

SECTION = "## Dropout (benchmarks/dropout.py)"
P = 0.1


def _with_torch_masks(call: Callable[[], None]) -> Callable[[], None]:
    def with_torch() -> None:
        with torch_dropout():
            call()

    return with_torch


def one_call(shape: tuple[int, ...], dtype: torch.dtype, rounds: int) -> tuple[float, ...]:
    """Milliseconds of one call, torch's and qkv's (best round), and the ratio's spread."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    _, ours, theirs = time_interleaved(
        lambda: dropout(x, P), lambda: F.dropout(x, P, True), rounds=rounds, warmup=1.0,
        min_time=0.2,
    )  # fmt: skip
    return 1e3 * min(theirs), 1e3 * min(ours), *ratio_spread(theirs, ours)


def attention(rounds: int) -> tuple[float, ...]:
    """Milliseconds of attention forward + backward with dropout, torch's and qkv's (best
    round), and the ratio's spread."""
    from qkv.attention import scaled_dot_product_attention

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(16, 12, 128, 32, generator=generator).requires_grad_() for _ in "qkv")

    def call() -> None:
        scaled_dot_product_attention(q, k, v, dropout_p=P).output.sum().backward()

    _, ours, theirs = time_interleaved(
        call, _with_torch_masks(call), rounds=rounds, warmup=1.0, min_time=0.3
    )
    return 1e3 * min(theirs), 1e3 * min(ours), *ratio_spread(theirs, ours)


def _minilm_step() -> tuple[Callable[[], None], int]:
    from qkv.convert.bert import from_pretrained
    from qkv.tasks.bert.common import minilm_path
    from qkv.train.optim import adamw

    torch.manual_seed(0)
    model = from_pretrained(minilm_path(), "classification", num_labels=5).train()
    optimizer = adamw(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 128), generator=generator)
    labels = torch.randint(0, 5, (16,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(ids, labels=labels).loss.backward()
        optimizer.step()

    return step, ids.numel()


def _translation_step() -> tuple[Callable[[], None], int]:
    from qkv import Transformer
    from qkv.tasks.translation import PRESETS
    from qkv.train.optim import adamw

    torch.manual_seed(0)
    config = PRESETS["small"].model
    model = Transformer(config).train()
    optimizer = adamw(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, config.src_vocab_size, (20, 30), generator=generator)
    tgt = torch.randint(4, config.tgt_vocab_size, (20, 31), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(src, tgt[:, :-1], labels=tgt[:, 1:]).loss.backward()
        optimizer.step()

    return step, tgt[:, 1:].numel()


def training_step(
    make: Callable[[], tuple[Callable[[], None], int]], rounds: int
) -> tuple[float, ...]:
    """Target tokens per second, torch's masks and qkv's (best round), and the spread of
    the ratio of torch's time to qkv's."""
    step, tokens = make()
    _, ours, theirs = time_interleaved(step, _with_torch_masks(step), rounds=rounds, warmup=2.0)
    return tokens / min(theirs), tokens / min(ours), *ratio_spread(theirs, ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    where = cpu_description()
    log(f"{where}, {threads} threads")
    lines = [
        f"### {where}, {threads} thread{'s' if threads > 1 else ''}",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, p = {P}, {args.rounds} "
        "interleaved rounds (best round shown; the ratio is torch's time ÷ qkv's, median of "
        "the rounds, range in brackets). Command: `.venv/bin/python benchmarks/dropout.py "
        f"--threads {threads} --rounds {args.rounds}`.",
        "",
        "| comparison | torch's `F.dropout` | qkv's `dropout` | torch time / qkv time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for shape in ((16, 128, 384), (16, 128, 1536)):
        for dtype in (torch.float32, torch.bfloat16):
            name = f"{tuple(shape)} {str(dtype).removeprefix('torch.')}"
            log(f"one call, {name}")
            theirs, ours, median, low, high = one_call(shape, dtype, args.rounds)
            lines.append(
                f"| one call, {name}, ms | {theirs:.2f} | {ours:.2f} | "
                f"{median:.2f}× ({low:.2f}–{high:.2f}) |"
            )
    log("attention, forward and backward")
    theirs, ours, median, low, high = attention(args.rounds)
    lines.append(
        f"| attention with dropout, (16, 12, 128, 32) fp32, forward + backward, ms | "
        f"{theirs:.1f} | {ours:.1f} | {median:.2f}× ({low:.2f}–{high:.2f}) |"
    )
    for label, make in (
        ("MiniLM fine-tuning step, 16 × 128 tokens", _minilm_step),
        ("`small` translation step, 20 × 30 + 30 tokens", _translation_step),
    ):
        log(label)
        theirs, ours, median, low, high = training_step(make, args.rounds)
        lines.append(
            f"| {label} (fp32, AdamW), tokens/s | {theirs:.0f} | {ours:.0f} | "
            f"{median:.2f}× ({low:.2f}–{high:.2f}) |"
        )
    text = "\n".join(lines)
    print(text)
    if args.results:
        write_results(args.results, text, section=SECTION)


if __name__ == "__main__":
    main()
