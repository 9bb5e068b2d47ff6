"""Decoding speed of the base translator: the paths of :mod:`qkv.decoding` against each other.

The paths (``--paths``, each optionally with ``:fp32``, ``:bf16`` or ``:int8``, default
``--dtype``; ``int8`` is the fp32 model decoded with ``quantize="int8"``, a CPU only):

- ``fast``: what :func:`qkv.decoding.greedy_decode` does by default: the static key/value
  cache written in place, the source's cross-attention keys and values projected once,
  the lean decoder step with one q/k/v projection; on a CUDA device each step replayed
  as a CUDA graph.
- ``static``: the same without CUDA graphs (``cuda_graphs=False``; on a CPU the same as
  ``fast``).
- ``old``: the path before the static cache (``static_cache=False``): the key/value cache
  that grows by ``torch.cat`` every step, the decoder's modules called as in training.
- ``no-cache``: encode once, then at each step the decoder over the whole prefix
  ``bos, y_1 .. y_t`` (``model.decode(prefix, memory)``), last position projected.

The model is a base-size ``Transformer(TransformerConfig.base(V, V, share_embeddings=True))``
(512 wide, 8 heads, 6 + 6 layers, feed-forward 2048, tied output projection) with random
weights, in eval mode. Every run produces exactly ``--tokens`` new tokens per sentence: eos
is forbidden before that (``min_len = max_len = tokens``). Sources are ``--src-len``
random ids. ``--beam K`` times beam search with ``K`` beams instead of greedy decoding
(new tokens counted per sentence, not per beam).

The machines are noisy, so the paths are timed interleaved, round by round (the order
rotates), after an untimed warm-up call of each that also checks their tokens against the
last path's. The table reports new tokens per second (median over rounds) of each path and
the median and min–max of the per-round speed ratio of each path to the last one listed
(> 1: faster than it).

Run (from the repository root):
    .venv/bin/python benchmarks/decoding.py --threads 1 --batches 1
    .venv/bin/python benchmarks/decoding.py --threads 1 --batches 1 --paths fast:bf16 fast old
    .venv/bin/python benchmarks/decoding.py --paths fast old no-cache --batches 1 16
    .venv/bin/python benchmarks/decoding.py --device cuda --batches 1 64 --paths fast static old
    .venv/bin/python benchmarks/decoding.py --profile fast --batches 1 --threads 1

The Markdown table goes to stdout, progress to stderr. ``--results FILE`` also writes the
table as a sub-section of ``## Decoding (benchmarks/decoding.py)`` in that file (replacing
an earlier sub-section with the same title only). ``--profile PATH`` prints where one call
of that path spends its time (torch.profiler, by operator) to stderr, and nothing else.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import log, ratio_spread, time_call, write_results
from torch import Tensor

from qkv import Transformer, TransformerConfig
from qkv.decoding import beam_search, greedy_decode

PAD, BOS, EOS = 0, 1, 2
SECTION = "## Decoding (benchmarks/decoding.py)"
PATHS = ("fast", "static", "old", "no-cache")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


@dataclass(frozen=True)
class DecodePath:
    """One path of ``--paths``: its kind and the model's dtype."""

    kind: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.dtype}"


@dataclass(frozen=True)
class Row:
    """One line of the table: every path at one batch size."""

    threads: int
    batch: int
    rounds: int
    tps: dict[str, float]  # path label -> new tokens per second, median over rounds
    ratios: dict[str, tuple[float, float, float]]  # label -> median, min, max vs the last path
    agree: dict[str, float]  # label -> fraction of tokens equal to the last path's


def no_cache_greedy(model: Transformer, src_ids: Tensor, steps: int) -> Tensor:
    """The no-cache reference: encode once, then at each step the decoder over the whole
    prefix. eos and pad are never chosen. Shape: src_ids ``(b, s)`` -> ``(b, steps)``."""
    with torch.inference_mode():
        src_mask = src_ids != PAD  # (b, s)
        memory = model.encode(src_ids, src_key_padding_mask=src_mask).last_hidden_state
        prefix = torch.full((src_ids.shape[0], 1), BOS, device=src_ids.device)  # (b, 1)
        for _ in range(steps):
            hidden = model.decode(prefix, memory, memory_key_padding_mask=src_mask)
            logits = model.logits(hidden.last_hidden_state[:, -1])  # (b, V)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (b, V), as greedy_decode scores
            logp[:, [PAD, EOS]] = float("-inf")
            prefix = torch.cat([prefix, logp.argmax(dim=-1, keepdim=True)], dim=1)  # (b, t + 1)
        return prefix[:, 1:]  # (b, steps)


def decoder_for(
    path: DecodePath, models: dict[str, Transformer], src: Tensor, steps: int, beam: int
) -> Callable[[], Tensor]:
    """A call that decodes ``src`` by ``path`` and returns the tokens ``(b, steps)``."""
    model = models[path.dtype]
    if path.kind == "no-cache":
        if path.dtype == "int8":
            raise SystemExit("--paths no-cache:int8: int8 weights need the static cache")
        return lambda: no_cache_greedy(model, src, steps)
    flags = {
        "fast": {},
        "static": {"cuda_graphs": False},
        "old": {"static_cache": False, "cuda_graphs": False},
    }[path.kind]
    if path.dtype == "int8":
        flags = {**flags, "quantize": "int8"}

    def call() -> Tensor:
        common = dict(bos_id=BOS, eos_id=EOS, max_len=steps, min_len=steps, **flags)
        if beam > 1:
            out = beam_search(model, src, beam_size=beam, **common)
        else:
            out = greedy_decode(model, src, **common)
        return torch.tensor(out.tokens)

    return call


def run(
    models: dict[str, Transformer],
    paths: Sequence[DecodePath],
    batch: int,
    *,
    src_len: int,
    tokens: int,
    rounds: int,
    beam: int,
    device: torch.device,
) -> Row:
    g = torch.Generator().manual_seed(batch)
    vocab = models[paths[0].dtype].config.src_vocab_size
    src = torch.randint(3, vocab, (batch, src_len), generator=g).to(device)  # (b, s)
    calls = [decoder_for(p, models, src, tokens, beam) for p in paths]
    outputs = [call().cpu() for call in calls]  # warm-up (captures graphs) and parity
    agree = {
        p.label: (o == outputs[-1]).float().mean().item()
        for p, o in zip(paths, outputs, strict=True)
    }
    times: list[list[float]] = [[] for _ in paths]
    for r in range(rounds):
        # Rotate the order, so that a drift in machine speed favours no path.
        for i in [(r + j) % len(paths) for j in range(len(paths))]:
            times[i].append(time_call(calls[i], device=device))
    new_tokens = batch * tokens
    row = Row(
        threads=torch.get_num_threads(),
        batch=batch,
        rounds=rounds,
        tps={p.label: new_tokens / statistics.median(t) for p, t in zip(paths, times, strict=True)},
        ratios={p.label: ratio_spread(times[-1], t) for p, t in zip(paths, times, strict=True)},
        agree=agree,
    )
    parts = [
        f"{label} {tps:8.1f} tok/s ({row.ratios[label][0]:.2f}×, agree {row.agree[label]:.0%})"
        for label, tps in row.tps.items()
    ]
    log(f"{row.threads} threads, batch {batch:>3}: " + "; ".join(parts))
    return row


def table(rows: Sequence[Row], paths: Sequence[DecodePath]) -> str:
    reference = paths[-1].label
    head = ["threads", "batch", "rounds"]
    head += [f"{p.label} (new tokens/s)" for p in paths]
    head += [f"{p.label} / {reference}, median (min–max)" for p in paths[:-1]]
    head += [f"{p.label}: tokens as {reference}" for p in paths[:-1]]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        cells = [str(r.threads), str(r.batch), str(r.rounds)]
        cells += [f"{r.tps[p.label]:,.0f}" for p in paths]
        for p in paths[:-1]:
            median, low, high = r.ratios[p.label]
            cells.append(f"{median:.2f}× ({low:.2f}–{high:.2f})")
        cells += [f"{r.agree[p.label]:.1%}" for p in paths[:-1]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_path(text: str, default_dtype: str) -> DecodePath:
    kind, _, dtype = text.partition(":")
    dtype = dtype or default_dtype
    if kind not in PATHS or dtype not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"a path is one of {', '.join(PATHS)}, optionally with :fp32, :bf16 or :int8; got "
            f"{text!r}"
        )
    return DecodePath(kind, dtype)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the decoding paths of qkv.decoding on the base translator."
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["fast", "old"],
        help="paths to time, the reference last: fast, static, old, no-cache, each "
        "optionally with :fp32, :bf16 or :int8",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="default dtype")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sentence")
    parser.add_argument("--src-len", type=int, default=32, help="source tokens per sentence")
    parser.add_argument("--beam", type=int, default=1, help="beam size; 1: greedy decoding")
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
        help="torch thread counts to run, one after the other (default: torch's choice)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--results", type=Path, help="also write the table into this file")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="print torch.profiler's table of one call of this path (first batch and "
        "thread count) to stderr instead of timing",
    )
    args = parser.parse_args(argv)
    try:
        args.paths = [parse_path(p, args.dtype) for p in args.paths]
        if args.profile is not None:
            args.profile = parse_path(args.profile, args.dtype)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if args.beam > 1 and any(p.kind == "no-cache" for p in args.paths):
        parser.error("--paths no-cache is greedy decoding only; drop it or --beam")
    return args


def profile(models: dict[str, Transformer], path: DecodePath, args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    src = torch.randint(3, args.vocab, (args.batches[0], args.src_len)).to(device)
    call = decoder_for(path, models, src, args.tokens, args.beam)
    call()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        call()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    log(f"{path.label}, batch {args.batches[0]}, {args.tokens} new tokens:")
    log(prof.key_averages().table(sort_by=sort, row_limit=20))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    thread_counts = args.threads or [torch.get_num_threads()]
    torch.manual_seed(0)
    base = Transformer(TransformerConfig.base(args.vocab, args.vocab, share_embeddings=True))
    base = base.eval()
    wanted = {p.dtype for p in args.paths} | ({args.profile.dtype} if args.profile else set())
    # fp32 from the same weights as bf16: copies, so that each keeps its own.
    models = {name: Transformer(base.config).eval() for name in wanted}
    for name, model in models.items():
        model.load_state_dict(base.state_dict())
        models[name] = model.to(device=device, dtype=DTYPES[name])
    del base
    setup = (
        f"torch {torch.__version__}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; base Transformer (512 wide, 6 + 6 layers), vocabulary {args.vocab}, random "
        f"weights; source {args.src_len} tokens, {args.tokens} new tokens per sentence (eos "
        f"disabled); {'beam ' + str(args.beam) if args.beam > 1 else 'greedy'}"
    )
    log(setup + "\n")
    if args.profile is not None:
        torch.set_num_threads(thread_counts[0])
        profile(models, args.profile, args)
        return
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch in args.batches:
            rows.append(
                run(
                    models,
                    args.paths,
                    batch,
                    src_len=args.src_len,
                    tokens=args.tokens,
                    rounds=args.rounds,
                    beam=args.beam,
                    device=device,
                )
            )
    result = table(rows, args.paths)
    print(result)
    if args.results is not None:
        command = "python benchmarks/decoding.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        title = (
            f"### {' vs '.join(p.label for p in args.paths)}, {device.type}, "
            f"{'beam ' + str(args.beam) if args.beam > 1 else 'greedy'}"
        )
        block = f"{title}\n\n`{command.strip()}`, {now}; {setup}.\n\n{result}\n"
        write_results(args.results, block, section=SECTION)


if __name__ == "__main__":
    main()
