"""What the benchmark scripts share: interleaved timing, per-round ratios, progress
lines, and writing their sections into ``benchmarks/RESULTS.md``.

The scripts run as ``python benchmarks/X.py``, which puts this folder on ``sys.path``;
they import this module as ``from _common import ...``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS_HEADER = "# Benchmark results\n"


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the Markdown tables)."""
    print(message, file=sys.stderr, flush=True)


# --- timing --------------------------------------------------------------------------------------


def synchronize(device: torch.device | None) -> None:
    """Wait for the queued CUDA kernels; a no-op elsewhere."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], calls: int = 1, device: torch.device | None = None
) -> float:
    """Mean seconds of one of ``calls`` back-to-back calls of ``fn``."""
    # On CUDA a call returns once its kernels are queued: wait for them on both sides.
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def interleave(
    a: Callable[[], float], b: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """``rounds`` rounds of one call of ``a`` and one of ``b``, each returning its own
    time; ``a`` goes first in even rounds. Returns the times of ``a`` and of ``b``."""
    a_times: list[float] = []
    b_times: list[float] = []
    for i in range(rounds):
        # Alternate which goes first, so a drift in machine speed within a round
        # does not always favour the same side.
        if i % 2 == 0:
            a_times.append(a())
            b_times.append(b())
        else:
            b_times.append(b())
            a_times.append(a())
    return a_times, b_times


def time_interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    rounds: int,
    warmup: float,
    min_time: float = 0.0,
    budget: float = 0.0,
    min_rounds: int = 3,
    device: torch.device | None = None,
) -> tuple[int, list[float], list[float]]:
    """Untimed interleaved calls of ``a`` and ``b`` for ``warmup`` seconds (at least one
    of each), then ``rounds`` timed rounds (:func:`interleave`).

    With ``min_time``, a call shorter than that is repeated within a round to last about
    that long. With ``budget`` (seconds), fewer rounds (not below ``min_rounds``) where the
    warm-up shows that ``rounds`` would take longer. Returns the calls per round and side,
    and the mean seconds of one call in each round, of ``a`` and of ``b``.
    """
    # Warm up for a while, not for one call: the first calls of a new shape run
    # slower (up to 3× for a few seconds here) while the allocator settles.
    start = time.perf_counter()
    while True:
        round_start = time.perf_counter()
        a()
        b()
        call_time = (time.perf_counter() - round_start) / 2
        if time.perf_counter() - start >= warmup:
            break
    # Short calls are repeated within a round, so that one descheduling of a thread
    # does not decide the round.
    calls = max(1, math.ceil(min_time / call_time)) if min_time > 0 else 1
    if budget > 0:
        rounds = max(min_rounds, min(rounds, int(budget / (2 * calls * call_time))))
    a_times, b_times = interleave(
        lambda: time_call(a, calls, device), lambda: time_call(b, calls, device), rounds
    )
    return calls, a_times, b_times


def ratio_spread(
    numerators: Sequence[float], denominators: Sequence[float]
) -> tuple[float, float, float]:
    """Median, min and max over rounds of the per-round ratio numerator / denominator."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def cpu_description() -> str:
    """The CPU's name and the instruction sets that decide its speed here, for headings."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return "this CPU"
    features = get()
    names = ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16")
    flags = ", ".join(name for name in names if features.get(name)) or "no AVX2"
    return f"{str(features.get('cpu_name') or 'a CPU').strip()} ({flags})"


# --- RESULTS.md ----------------------------------------------------------------------------------


def _replace_or_append(text: str, block: str, next_heading: str) -> str:
    """``text`` with the part from ``block``'s heading (its first line) up to
    ``next_heading`` (or the end) replaced by ``block``; without that heading,
    ``block`` appended after a blank line."""
    title = block.split("\n", 1)[0]
    start = text.find(title)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n"
    end = text.find(next_heading, start + len(title))
    rest = "" if end < 0 else text[end:]
    return text[:start] + block.rstrip("\n") + "\n" + rest


def write_results(path: Path, block: str, section: str | None = None) -> None:
    """Put the Markdown ``block`` (its first line is its heading) into ``path``, replacing
    the earlier block with that heading, else appending it; the rest is kept.

    Without ``section``, ``block`` is a ``##`` section of the file; with it, a ``###``
    sub-section of the section titled ``section`` (added at the end if missing).
    """
    # Read right before writing: other benchmarks write their own sections here.
    content = path.read_text() if path.exists() else RESULTS_HEADER
    if section is None:
        content = _replace_or_append(content, block, "\n## ")
    else:
        if section not in content:
            content = content.rstrip("\n") + f"\n\n{section}\n"
        start = content.find(section)
        end = content.find("\n## ", start + len(section))
        end = len(content) if end < 0 else end
        inner = _replace_or_append(content[start:end], block, "\n### ")
        content = content[:start] + inner + content[end:]
    path.write_text(content.rstrip("\n") + "\n")
