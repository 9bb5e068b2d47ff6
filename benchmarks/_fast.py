"""bf16 and compiled inference against the plain model: what benchmarks/bert.py and
benchmarks/vit.py share for ``--pairs``.

A pair is two variants, written ``A/B`` with each side ``SIDE-DTYPE[-compiled]``: ``SIDE``
is ``qkv`` or ``ref`` (the reference library: ``transformers``, timm), ``DTYPE`` is
``fp32`` or ``bf16``; ``-compiled`` runs it through :func:`qkv.compile.compile_model`
(BERT: one program for every length, as ``qkv bert classify --compile`` does). The
variants are copies of the two float32 models, on the same weights, fed the same inputs.
Each pair is timed interleaved (:func:`_common.time_interleaved`), and the ratio is the
speed of ``A`` over the speed of ``B`` per round (> 1: ``A`` is faster). Beside it: the
seconds of each compiled side's first call (compilation included), and the largest
difference of each side's output from the reference's float32 output, and each side's
rate of matrix arithmetic (:func:`encoder_flops` per call; compare it with the chip's
measured bf16 matrix rate).
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from _common import log, ratio_spread, synchronize, time_interleaved
from torch import Tensor, nn

from qkv.compile import compile_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: The comparisons of issue 18: bf16 against the reference in fp32 and in bf16, and what
#: compiling gains over the same model uncompiled.
DEFAULT_PAIRS = ("qkv-bf16/ref-fp32", "qkv-bf16/ref-bf16", "qkv-fp32/ref-fp32")
COMPILE_PAIRS = (
    "qkv-fp32-compiled/qkv-fp32",
    "qkv-bf16-compiled/qkv-bf16",
    "qkv-bf16-compiled/ref-bf16",
)


def encoder_flops(batch: int, length: int, d_model: int, d_ff: int, num_layers: int) -> float:
    """Floating-point operations of the matrix products of a Transformer encoder's forward
    pass (a multiply-add counts 2): per layer the q, k, v and output projections
    (``4 · 2·T·d²``, ``T = batch · length``), the feed-forward (``2 · 2·T·d·d_ff``), and
    the attention scores and their product with the values (``2 · 2·batch·length²·d``).
    Embeddings, heads, norms and softmax are left out: they are a few percent at most."""
    tokens = batch * length
    per_layer = 8 * tokens * d_model**2 + 4 * tokens * d_model * d_ff
    per_layer += 4 * batch * length**2 * d_model
    return float(num_layers * per_layer)


@dataclass(frozen=True)
class Variant:
    side: str  # "qkv" or "ref"
    dtype: str  # a key of DTYPES
    compiled: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = text.split("-")
        if len(parts) not in (2, 3) or parts[0] not in ("qkv", "ref") or parts[1] not in DTYPES:
            raise ValueError(f"not a variant: {text!r} (SIDE-DTYPE[-compiled], e.g. qkv-bf16)")
        if len(parts) == 3 and parts[2] != "compiled":
            raise ValueError(f"not a variant: {text!r} (the suffix can only be -compiled)")
        return cls(parts[0], parts[1], len(parts) == 3)

    def label(self, reference: str) -> str:
        name = "qkv" if self.side == "qkv" else reference
        return f"{name} {self.dtype}" + (" compiled" if self.compiled else "")


def parse_pair(text: str) -> tuple[Variant, Variant]:
    a, slash, b = text.partition("/")
    if not slash:
        raise ValueError(f"not a pair: {text!r} (A/B, e.g. qkv-bf16/ref-fp32)")
    return Variant.parse(a), Variant.parse(b)


@dataclass(frozen=True)
class PairRow:
    model: str
    shape: str  # the inputs, e.g. "8 × 128"
    a: str
    b: str
    rounds: int
    a_per_s: float  # items per second, median over rounds
    b_per_s: float
    ratio: float  # median over rounds of (A items/s) / (B items/s)
    ratio_min: float
    ratio_max: float
    compile_s: str  # first call of each compiled side, seconds ("" where none)
    a_error: float  # largest |output - the reference's float32 output|
    b_error: float
    a_tflops: float  # matrix arithmetic per second at A's median speed, 1e12
    b_tflops: float


class Variants:
    """The variants of one model pair, built on demand and kept: ``get(variant)``.

    Args:
        models: ``{"qkv": ..., "ref": ...}``, float32, eval mode, on ``device``.
        run: calls a model on the benchmark's inputs in the given dtype and returns the
            output to compare (last hidden state, logits).
        dynamic: :func:`qkv.compile.compile_model`'s ``dynamic`` for compiled variants.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        run: Callable[[nn.Module, torch.dtype], Tensor],
        *,
        device: torch.device,
        dynamic: bool | None,
    ) -> None:
        self.models = models
        self.run = run
        self.device = device
        self.dynamic = dynamic
        self.built: dict[Variant, nn.Module] = {}
        self.compile_seconds: dict[Variant, float] = {}
        self.errors: dict[Variant, float] = {}
        with torch.inference_mode():
            self.expected = run(models["ref"], torch.float32).float()

    def get(self, variant: Variant) -> nn.Module:
        if variant in self.built:
            return self.built[variant]
        dtype = DTYPES[variant.dtype]
        if variant.compiled:
            plain = self.get(Variant(variant.side, variant.dtype))
            model = compile_model(copy.deepcopy(plain), dynamic=self.dynamic)
        elif variant.dtype == "fp32":
            model = self.models[variant.side]
        else:
            model = copy.deepcopy(self.models[variant.side]).to(dtype)
        with torch.inference_mode():
            synchronize(self.device)
            start = time.perf_counter()
            out = self.run(model, dtype).float()
            synchronize(self.device)
        if variant.compiled:
            self.compile_seconds[variant] = time.perf_counter() - start
            log(f"  {variant}: first call {self.compile_seconds[variant]:.1f} s")
        self.errors[variant] = float((out - self.expected).abs().max())
        self.built[variant] = model
        return model


def compare_pairs(
    name: str,
    shape: str,
    items: int,
    variants: Variants,
    pairs: Sequence[str],
    *,
    reference: str,
    rounds: int,
    warmup: float,
    flops: float,
    min_time: float = 0.0,
) -> list[PairRow]:
    """One row per pair, each timed interleaved; ``items``: images or sequences per call;
    ``flops``: :func:`encoder_flops` of one call; ``min_time``: repeat a call within a
    round to last that long (short GPU calls)."""
    rows = []
    for text in pairs:
        a, b = parse_pair(text)
        call_a, call_b = (
            functools.partial(variants.run, variants.get(v), DTYPES[v.dtype]) for v in (a, b)
        )
        with torch.inference_mode():
            _, a_times, b_times = time_interleaved(
                call_a,
                call_b,
                rounds=rounds,
                warmup=warmup,
                min_time=min_time,
                device=variants.device,
            )
        compiled = [v for v in (a, b) if v.compiled]
        row = PairRow(
            name,
            shape,
            a.label(reference),
            b.label(reference),
            rounds,
            items / statistics.median(a_times),
            items / statistics.median(b_times),
            *ratio_spread(b_times, a_times),  # speed ratio: B's time / A's time
            ", ".join(f"{variants.compile_seconds[v]:.0f}" for v in compiled),
            variants.errors[a],
            variants.errors[b],
            flops / statistics.median(a_times) / 1e12,
            flops / statistics.median(b_times) / 1e12,
        )
        log(f"{name} {shape} {text}: ×{row.ratio:.3f} ({row.ratio_min:.3f}–{row.ratio_max:.3f})")
        rows.append(row)
    return rows


def pairs_table(rows: Sequence[PairRow], unit: str) -> str:
    lines = [
        f"| model | inputs | A | B | rounds | A ({unit}/s) | B ({unit}/s) | A / B speed, median "
        "| min–max | compile (s) | max abs diff A, B | TFLOP/s A, B |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.shape} | {r.a} | {r.b} | {r.rounds} | {r.a_per_s:.1f} | "
            f"{r.b_per_s:.1f} | {r.ratio:.3f} | {r.ratio_min:.3f}–{r.ratio_max:.3f} | "
            f"{r.compile_s} | {r.a_error:.2g}, {r.b_error:.2g} | "
            f"{r.a_tflops:.3g}, {r.b_tflops:.3g} |"
        )
    return "\n".join(lines)
