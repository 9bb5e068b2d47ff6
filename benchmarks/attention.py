"""Multi-head self-attention: qkv against ``torch.nn.MultiheadAttention``.

Measures ``qkv.attention.MultiHeadAttention(d_model, num_heads)`` called as ``mha(x)``
(fused path: ``torch.nn.functional.scaled_dot_product_attention``) against
``torch.nn.MultiheadAttention(d_model, num_heads, batch_first=True)`` called as
``ref(x, x, x, need_weights=False)`` (its own fast path), on copied weights, in float32,
batch 8, d_model 768, 12 heads, at several sequence lengths, in two modes:

- ``forward``: under ``torch.inference_mode``, where torch takes its fast path
  (``torch._native_multi_head_attention``);
- ``backward``: forward + backward of ``output.sum()`` with ``x.requires_grad``, where
  torch runs ``F.multi_head_attention_forward``.

Both modules are in eval mode (dropout is 0 anyway). Before timing, one call of each
checks that the outputs agree (``atol=1e-4``), then untimed interleaved rounds run for
``--warmup`` seconds. The machines are noisy, so the two implementations are timed
interleaved, round by round (the order alternates from one round to the next; a short
call is repeated within a round to last ``--min-time``), and the table reports the median
time of one call of each and the median and min–max of the per-round ratio qkv/torch
(< 1: qkv is faster). An extra row per mode at L = 512 times torch's default
``need_weights=True``, which also computes and returns the head-averaged weights.

Peak memory: each (implementation, mode, length) runs once in a fresh subprocess (this
script with ``--memory-probe``), which reports the peak resident memory of that one call
above the resident memory just before it, in MiB (on CUDA: ``max_memory_allocated``).
qkv's plain path (``mha.fused = False``, which builds the L×L weights) is probed too.
The peak is read from ``VmHWM`` in ``/proc/self/status``, reset just before the call;
``getrusage(RUSAGE_SELF).ru_maxrss`` would not do, since after ``exec`` it inherits the
peak of the parent process.

Run (from the repository root; the defaults take a few minutes on 2 vCPUs):
    .venv/bin/python benchmarks/attention.py
    .venv/bin/python benchmarks/attention.py --lengths 128 512 --rounds 3 --no-memory

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import log, ratio_spread, synchronize, time_interleaved
from torch import Tensor, nn

from qkv.attention import MultiHeadAttention

BATCH = 8
D_MODEL = 768
NUM_HEADS = 12
ATOL = 1e-4
MODES = ("forward", "backward")
MODE_LABELS = {"forward": "forward", "backward": "forward+backward"}
# Timed implementations and the memory probe's: qkv (fused), qkv's plain path, torch's
# fast path (need_weights=False) and torch's default call (need_weights=True).
IMPLS = ("qkv", "qkv-plain", "torch", "torch-weights")
MEMORY_IMPLS = ("qkv", "qkv-plain", "torch")
EXTRA_LENGTH = 512  # where torch's default need_weights=True gets its extra row
MIN_ROUNDS = 3
WARMUP_LENGTH = 16  # the memory probe's warm-up call: loads kernels, starts thread pools
MIB = 2**20

Step = Callable[[], Tensor]


@dataclass(frozen=True)
class Row:
    """One line of the timing table: qkv against one reference at one (mode, length)."""

    mode: str
    length: int
    reference: str
    rounds: int
    calls: int  # calls per round and implementation
    qkv_ms: float
    ref_ms: float
    ratio: float  # median over rounds of qkv time / reference time
    ratio_min: float
    ratio_max: float


def build(device: torch.device) -> tuple[dict[str, Callable[[Tensor], Tensor]], list[Tensor]]:
    """The implementations by name, on the same weights, and all their parameters."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(D_MODEL, NUM_HEADS).to(device).eval()
    plain = copy.deepcopy(ours)
    plain.fused = False
    ref = nn.MultiheadAttention(D_MODEL, NUM_HEADS, batch_first=True).to(device).eval()
    with torch.no_grad():
        # torch packs the three input projections in one (3d, d) matrix, q then k then v.
        ref.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    impls: dict[str, Callable[[Tensor], Tensor]] = {
        "qkv": lambda x: ours(x).output,
        "qkv-plain": lambda x: plain(x).output,
        # Passing the same tensor three times is what lets torch take its fast path.
        "torch": lambda x: ref(x, x, x, need_weights=False)[0],
        "torch-weights": lambda x: ref(x, x, x)[0],
    }
    params = [*ours.parameters(), *plain.parameters(), *ref.parameters()]
    return impls, params


def make_input(length: int, mode: str, device: torch.device) -> Tensor:
    """``x`` of shape ``(BATCH, length, D_MODEL)``; it requires grad in backward mode."""
    return torch.randn(BATCH, length, D_MODEL, device=device, requires_grad=mode == "backward")


def make_step(fn: Callable[[Tensor], Tensor], x: Tensor, mode: str, params: list[Tensor]) -> Step:
    """One call of ``fn`` in ``mode``; returns the (detached) output."""
    if mode == "forward":

        def forward() -> Tensor:
            with torch.inference_mode():
                return fn(x)

        return forward

    def forward_backward() -> Tensor:
        out = fn(x)
        out.sum().backward()
        # Fresh gradients every call, so no call pays for accumulating into the last one's.
        x.grad = None
        for p in params:
            p.grad = None
        return out.detach()

    return forward_backward


def run_timing(
    lengths: Sequence[int],
    modes: Sequence[str],
    *,
    rounds: int,
    warmup: float,
    min_time: float,
    budget: float,
    device: torch.device,
) -> list[Row]:
    impls, params = build(device)
    rows: list[Row] = []
    for mode in modes:
        for length in lengths:
            references = ["torch"] + (["torch-weights"] if length == EXTRA_LENGTH else [])
            for reference in references:
                x = make_input(length, mode, device)
                qkv_step = make_step(impls["qkv"], x, mode, params)
                ref_step = make_step(impls[reference], x, mode, params)
                torch.testing.assert_close(qkv_step(), ref_step(), atol=ATOL, rtol=0.0)
                calls, qkv_times, ref_times = time_interleaved(
                    qkv_step,
                    ref_step,
                    rounds=rounds,
                    warmup=warmup,
                    min_time=min_time,
                    budget=budget,
                    min_rounds=MIN_ROUNDS,
                    device=device,
                )
                ratio, ratio_min, ratio_max = ratio_spread(qkv_times, ref_times)
                row = Row(
                    mode=mode,
                    length=length,
                    reference=reference,
                    rounds=len(qkv_times),
                    calls=calls,
                    qkv_ms=1e3 * statistics.median(qkv_times),
                    ref_ms=1e3 * statistics.median(ref_times),
                    ratio=ratio,
                    ratio_min=ratio_min,
                    ratio_max=ratio_max,
                )
                rows.append(row)
                log(
                    f"{MODE_LABELS[mode]:>16} L={length:<5} vs {reference:<13} "
                    f"qkv {row.qkv_ms:9.1f} ms  ref {row.ref_ms:9.1f} ms  "
                    f"ratio {row.ratio:.3f} [{row.ratio_min:.3f}, {row.ratio_max:.3f}]"
                )
    return rows


def resident_bytes() -> int:
    """Current resident set size, from ``/proc/self/statm`` (second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_resident() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_resident_bytes() -> int:
    """``VmHWM`` from ``/proc/self/status``: this process's peak resident size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_probe(impl: str, mode: str, length: int, device: torch.device) -> float:
    """Peak extra memory (MiB) of one call; meant to run alone in a fresh process."""
    impls, params = build(device)
    make_step(impls[impl], make_input(WARMUP_LENGTH, mode, device), mode, params)()
    step = make_step(impls[impl], make_input(length, mode, device), mode, params)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / MIB
    baseline = resident_bytes()
    reset_peak_resident()
    step()
    return (peak_resident_bytes() - baseline) / MIB


def run_memory(
    lengths: Sequence[int], modes: Sequence[str], device: torch.device
) -> dict[tuple[str, int, str], float | None]:
    """Each probe in its own subprocess; ``None`` where the probe failed (e.g. out of memory)."""
    results: dict[tuple[str, int, str], float | None] = {}
    for mode in modes:
        for length in lengths:
            for impl in MEMORY_IMPLS:
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--device",
                    str(device),
                    "--memory-probe",
                    impl,
                    mode,
                    str(length),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                value = float(done.stdout.split()[-1]) if done.returncode == 0 else None
                results[mode, length, impl] = value
                shown = "failed" if value is None else f"{value:.0f} MiB"
                log(f"memory {MODE_LABELS[mode]:>16} L={length:<5} {impl:<9} {shown}")
    return results


def timing_table(rows: Sequence[Row]) -> str:
    lines = [
        "| mode | L | reference | rounds × calls | qkv (ms) | reference (ms) "
        "| qkv / ref, median | min–max |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    names = {"torch": "torch, need_weights=False", "torch-weights": "torch, need_weights=True"}
    for r in rows:
        lines.append(
            f"| {MODE_LABELS[r.mode]} | {r.length} | {names[r.reference]} | {r.rounds} × {r.calls} "
            f"| {r.qkv_ms:.1f} | {r.ref_ms:.1f} | {r.ratio:.2f} "
            f"| {r.ratio_min:.2f}–{r.ratio_max:.2f} |"
        )
    return "\n".join(lines)


def memory_table(
    results: dict[tuple[str, int, str], float | None],
    lengths: Sequence[int],
    modes: Sequence[str],
) -> str:
    lines = [
        "| mode | L | qkv fused (MiB) | qkv plain (MiB) | torch (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode in modes:
        for length in lengths:
            cells = []
            for impl in MEMORY_IMPLS:
                value = results[mode, length, impl]
                cells.append("failed" if value is None else f"{value:.0f}")
            lines.append(f"| {MODE_LABELS[mode]} | {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and measure qkv's MultiHeadAttention against torch.nn.MultiheadAttention."
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds per (mode, length), after a warm-up"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of untimed interleaved rounds (at least one) before timing",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.5,
        help="seconds: short calls are repeated so that each round of each takes about this",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help=f"seconds: fewer rounds (not below {MIN_ROUNDS}) where the warm-up shows "
        "that --rounds would take longer; 0 = always --rounds",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument(
        "--memory-probe",
        nargs=3,
        metavar=("IMPL", "MODE", "LENGTH"),
        help="internal: measure one call in this process and print the MiB",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.memory_probe is not None:
        impl, mode, length = args.memory_probe
        if impl not in IMPLS or mode not in MODES:
            raise SystemExit(f"unknown implementation or mode: {impl!r}, {mode!r}")
        print(f"{memory_probe(impl, mode, int(length), device):.1f}")
        return

    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32, "
        f"batch {BATCH}, d_model {D_MODEL}, {NUM_HEADS} heads; "
        f"load average at start {os.getloadavg()[0]:.1f}\n"
    )
    rows = run_timing(
        args.lengths,
        args.modes,
        rounds=args.rounds,
        warmup=args.warmup,
        min_time=args.min_time,
        budget=args.budget,
        device=device,
    )
    print(timing_table(rows))
    print(f"\nLoad average after timing: {os.getloadavg()[0]:.1f}")
    if not args.no_memory:
        results = run_memory(args.lengths, args.modes, device)
        print("\nPeak extra memory of one call (MiB):\n")
        print(memory_table(results, args.lengths, args.modes))


if __name__ == "__main__":
    main()
