"""Greedy decoding with the key/value cache against re-running the decoder over the prefix.

Measures :func:`qkv.decoding.greedy_decode` (encode once; each step feeds only the
newest token through the decoder, which reads the earlier keys and values from the
cache) against the no-cache reference that encode once too but at each step runs the
decoder over the whole prefix ``bos, y_1 .. y_t`` and keeps the last position's
logits: ``model.decode(prefix, memory)`` without a cache. The model is a base-size
``Transformer(TransformerConfig.base(V, V))`` (512 wide, 8 heads, 6 + 6 layers,
feed-forward 2048, tied output projection) with random weights, in eval mode, float32.

Every run produces exactly ``--tokens`` new tokens per sentence: eos is forbidden
before that (``min_len = max_len = tokens``), so neither side stops early. Sources are
``--src-len`` random ids. Before timing, a warm-up round checks that both produce the
same tokens (a random model has near-ties, so a rare mismatch is reported, not fatal).

The machines are noisy, so the two are timed interleaved, round by round (the order
alternates), and the table reports new tokens per second (median over rounds) of each
and the median and min–max of the per-round speed ratio cached / no-cache (> 1: the
cache is faster).

Run (from the repository root; a few minutes on 2 vCPUs):
    .venv/bin/python benchmarks/decoding.py
    .venv/bin/python benchmarks/decoding.py --batches 1 --rounds 3 --tokens 32
    .venv/bin/python benchmarks/decoding.py --results benchmarks/RESULTS.md

The Markdown table goes to stdout, progress to stderr. ``--results`` also writes the
section ``## Decoding (benchmarks/decoding.py)`` into that file (replacing an earlier
version of this section only; the rest of the file is kept as it is).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import interleave, log, ratio_spread, time_call, write_results
from torch import Tensor

from qkv import Transformer, TransformerConfig
from qkv.decoding import greedy_decode

PAD, BOS, EOS = 0, 1, 2
SECTION = "## Decoding (benchmarks/decoding.py)"


@dataclass(frozen=True)
class Row:
    """One line of the table: cached against no-cache greedy decoding at one batch size."""

    threads: int
    batch: int
    rounds: int
    cached_tps: float  # new tokens per second, median over rounds
    reference_tps: float
    speedup: float  # median over rounds of cached tokens/s ÷ no-cache tokens/s
    speedup_min: float
    speedup_max: float
    agree: float  # fraction of tokens on which the two agreed in the warm-up


def no_cache_greedy(model: Transformer, src_ids: Tensor, steps: int) -> Tensor:
    """The reference: encode once, then at each step the decoder over the whole prefix.

    eos is never chosen (as ``min_len = steps`` does for :func:`greedy_decode`), pad
    neither. Shape: src_ids ``(b, s)`` -> new tokens ``(b, steps)``.
    """
    with torch.inference_mode():
        src_mask = src_ids != PAD  # (b, s)
        memory = model.encode(src_ids, src_key_padding_mask=src_mask).last_hidden_state
        prefix = torch.full((src_ids.shape[0], 1), BOS, device=src_ids.device)  # (b, 1)
        for _ in range(steps):
            hidden = model.decode(prefix, memory, memory_key_padding_mask=src_mask)
            logits = model.output_proj(hidden.last_hidden_state[:, -1])  # (b, V)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (b, V), as greedy_decode scores
            logp[:, [PAD, EOS]] = float("-inf")
            prefix = torch.cat([prefix, logp.argmax(dim=-1, keepdim=True)], dim=1)  # (b, t + 1)
        return prefix[:, 1:]  # (b, steps)


def cached_greedy(model: Transformer, src_ids: Tensor, steps: int) -> Tensor:
    """:func:`greedy_decode` forced to ``steps`` tokens. Shape: ``(b, s)`` -> ``(b, steps)``."""
    out = greedy_decode(model, src_ids, bos_id=BOS, eos_id=EOS, max_len=steps, min_len=steps)
    return torch.tensor(out.tokens)


def run(
    model: Transformer,
    batch: int,
    *,
    src_len: int,
    tokens: int,
    rounds: int,
    device: torch.device,
) -> Row:
    g = torch.Generator().manual_seed(batch)
    vocab = model.config.src_vocab_size
    src = torch.randint(3, vocab, (batch, src_len), generator=g).to(device)  # (b, s)

    def cached() -> Tensor:
        return cached_greedy(model, src, tokens)

    def reference() -> Tensor:
        return no_cache_greedy(model, src, tokens)

    agree = (cached() == reference().cpu()).float().mean().item()  # warm-up + parity
    cached_times, reference_times = interleave(
        lambda: time_call(cached, device=device),
        lambda: time_call(reference, device=device),
        rounds,
    )
    new_tokens = batch * tokens
    speedup, speedup_min, speedup_max = ratio_spread(reference_times, cached_times)
    row = Row(
        threads=torch.get_num_threads(),
        batch=batch,
        rounds=rounds,
        cached_tps=new_tokens / statistics.median(cached_times),
        reference_tps=new_tokens / statistics.median(reference_times),
        speedup=speedup,
        speedup_min=speedup_min,
        speedup_max=speedup_max,
        agree=agree,
    )
    log(
        f"{row.threads} threads, batch {batch:>3}: cached {row.cached_tps:7.1f} tok/s, no cache "
        f"{row.reference_tps:7.1f} tok/s, speed-up {row.speedup:.2f} "
        f"[{row.speedup_min:.2f}, {row.speedup_max:.2f}], tokens agree {agree:.1%}"
    )
    return row


def table(rows: Sequence[Row], tokens: int) -> str:
    lines = [
        f"| threads | batch | rounds | cached (new tokens/s) | no cache (new tokens/s) "
        f"| speed-up at {tokens} tokens, median | min–max | tokens agree |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.threads} | {r.batch} | {r.rounds} | {r.cached_tps:.0f} | {r.reference_tps:.0f} "
            f"| {r.speedup:.1f}× | {r.speedup_min:.1f}–{r.speedup_max:.1f}× | {r.agree:.1%} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time cached greedy decoding against re-running the decoder over the prefix."
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sentence")
    parser.add_argument("--src-len", type=int, default=32, help="source tokens per sentence")
    parser.add_argument(
        "--vocab",
        type=int,
        default=8000,
        help="joint vocabulary (qkv.data.bpe default: 8000; the paper EN-DE: ~37000)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after a warm-up")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="torch thread counts to run, one after the other (default: torch's choice); "
        "on a loaded machine 1 is steadier, since every small operation of a decoding step "
        "otherwise waits for the second thread",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, help="also write the section into this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    thread_counts = args.threads or [torch.get_num_threads()]
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.base(args.vocab, args.vocab, share_embeddings=True))
    model = model.to(device).eval()
    setup = (
        f"torch {torch.__version__}, {device}, float32; "
        f"base Transformer (512 wide, 6 + 6 layers), vocabulary {args.vocab}, random weights; "
        f"source {args.src_len} tokens, {args.tokens} new tokens per sentence (eos disabled)"
    )
    log(setup + "\n")
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch in args.batches:
            rows.append(
                run(
                    model,
                    batch,
                    src_len=args.src_len,
                    tokens=args.tokens,
                    rounds=args.rounds,
                    device=device,
                )
            )
    result = table(rows, args.tokens)
    print(result)
    if args.results is not None:
        command = "python benchmarks/decoding.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        section = (
            f"{SECTION}\n\n"
            f"`{command.strip()}`, {datetime.date.today().isoformat()}; {setup}.\n\n"
            f"{result}\n"
        )
        write_results(args.results, section)


if __name__ == "__main__":
    main()
