"""All the GPU comparisons of issue 18 in one run: qkv against its references on one GPU.

Every comparison runs qkv and its reference in the same process, on the same weights
and inputs (checked first: qkv's output within 10% relative norm of the reference's,
else the row group fails), interleaved round by round (the order alternating,
:func:`_common.interleave`), after untimed warm-up calls;
a round times ``calls`` back-to-back calls with ``torch.cuda.synchronize`` on both
sides (:func:`_common.time_call`). The table gives each side's median, and the median
and min–max over rounds of the speed ratio reference time / qkv time (> 1: qkv faster).
Everything runs in bf16 unless a row says otherwise. Row groups (``--only``):

- ``matmul``: the chip's bf16 matrix rate, measured with one ``n × n × n`` matmul
  (``2 n³`` FLOPs a call); always measured, since the other rows give their
  "% of the bf16 matrix rate" against it.
- ``attention``: ``qkv.attention.MultiHeadAttention`` against
  ``torch.nn.MultiheadAttention`` (copied weights), forward + backward of
  ``output.sum()``, causal (qkv ``is_causal=True``; torch ``attn_mask`` + ``is_causal``,
  ``need_weights=False``), batch 8, d 1024, 16 heads, L 1,024 and 4,096.
- ``bert``: BERT-base inference (random weights, ``benchmarks/bert.py``'s ``build``)
  against ``transformers.BertModel`` with ``attn_implementation="sdpa"``, batch 64 × 128,
  all real tokens and half the batch half padded; eager, then compiled on both sides
  (qkv through ``qkv.compile.compile_model`` when that exists, else ``torch.compile``;
  the reference through ``torch.compile``), with the seconds of the first call (the
  compilation) of each.
- ``vit``: ViT-B/16 inference, batch 128, against timm's ``vit_base_patch16_224``
  (``pretrained=False``, weights copied into qkv), eager and compiled. Without timm the
  reference is skipped, with a note.
- ``training``: a Transformer-base training step (forward, label-smoothed loss,
  backward, AdamW step) under bf16 autocast, batch 128 × 48 source and 48 target
  tokens, against ``torch.nn.Transformer`` between the same embeddings and loss
  (``benchmarks/translation.py``'s ``TorchSeq2Seq``): once matched (attention dropout =
  dropout, the same AdamW), once as qkv trains (its presets' attention dropout 0 and its
  trainer's optimizer).
- ``decoding``: :func:`qkv.decoding.greedy_decode` and :func:`qkv.decoding.beam_search`
  (beam 4) of a base translator (random weights), 64 new tokens per sentence (eos
  forbidden before: ``min_len = max_len``), batch 1 and 64, in fp32 and bf16; new tokens
  per second (beam search: the output tokens, not the beams'). The two functions'
  arguments beyond those they had before issue 18 (found with ``inspect.signature``)
  are flags: qkv's default (an opt-in flag, default ``False``, turned on) is compared
  with the old path (every flag ``False``: today ``static_cache=False,
  cuda_graphs=False``) and, on CUDA, with each automatic flag (default ``None``, today
  ``cuda_graphs``) alone turned off; each comparison row says the flags of its
  reference and how many tokens the two paths agreed on. A row that fails is one
  line; the other rows run.
- Quick mode (``--quick``) runs every row at tiny sizes ("tiny" in the names), one
  round of one call: it checks that the script runs, not speed.

FLOPs counted (multiply-adds × 2; d width, f feed-forward width, n layers):

- MHA forward: ``8·b·L·d² + 2·b·L²·d`` (projections, then QKᵀ and AV, half of them under
  the causal mask); forward + backward: 3 × forward.
- BERT-base per sequence of L tokens (all positions, padding included, as the kernels
  compute it): ``n·(2·L·(4d² + 2·d·f) + 4·L²·d) + 2·d²`` (layers, attention, pooler),
  i.e. 2·(linear parameters)·tokens + attention.
- ViT per image of T = 1 + N tokens (N patches of p × p pixels, c channels):
  ``n·(2·T·(4d² + 2·d·f) + 4·T²·d) + 2·N·c·p²·d + 2·d·classes``.
- Transformer training step per sentence (S source, T target tokens): 3 × forward,
  forward = ``n_enc·(2·S·(4d² + 2·d·f) + 4·S²·d) + n_dec·(2·T·(6d² + 2·d·f) + 4·S·d²
  + 2·T²·d + 4·T·S·d) + 2·T·d·V``.

Run (from the repository root; the default run takes a few minutes on one H200):
    .venv/bin/python benchmarks/gpu.py --write
    .venv/bin/python benchmarks/gpu.py --only bert vit
    .venv/bin/python benchmarks/gpu.py --device cpu --quick     # smoke test: tiny sizes

The Markdown section goes to stdout, progress to stderr. ``--write`` replaces the
section ``## GPU (benchmarks/gpu.py)`` of ``benchmarks/RESULTS.md`` (or of the file
given), keeping the rest. A row group that fails prints one line and the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import inspect
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from _common import interleave, log, ratio_spread, synchronize, time_call, write_results
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## GPU (benchmarks/gpu.py)"
GROUPS = ("matmul", "attention", "bert", "vit", "training", "decoding")
BF16 = torch.bfloat16
# An output further than this from its reference (Frobenius norm of the difference over
# the reference's) means the weights were not copied right and the timing would compare
# two different models; bf16 rounding through 12 layers stays well below it.
MISMATCH = 0.1


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the issue's sizes, or tiny ones for the smoke test."""

    size: str  # "base", or "tiny" in the row names of the smoke test
    matmul: int
    mha: tuple[int, int, int]  # batch, d_model, heads
    mha_lengths: tuple[int, ...]
    bert: dict[str, int] | None  # transformers.BertConfig arguments; None: BERT-base
    bert_batch: int
    bert_length: int
    vit: dict[str, int] | None  # ViTConfig arguments; None: ViT-B/16 (timm's model)
    vit_batch: int
    transformer: dict[str, int]  # TransformerConfig arguments on top of the base model
    vocab: int
    train_batch: int
    train_length: int  # source and target tokens
    decode_batches: tuple[int, ...]
    decode_tokens: int
    src_length: int
    beam: int
    rounds: int
    calls: int  # calls per round and side (inference, attention)
    train_calls: int
    decode_calls: int
    warmup: int  # untimed calls of each side


FULL = Sizes(
    size="base",
    matmul=8192,
    mha=(8, 1024, 16),
    mha_lengths=(1024, 4096),
    bert=None,
    bert_batch=64,
    bert_length=128,
    vit=None,
    vit_batch=128,
    transformer={},
    vocab=8000,
    train_batch=128,
    train_length=48,
    decode_batches=(1, 64),
    decode_tokens=64,
    src_length=32,
    beam=4,
    rounds=5,
    calls=20,
    train_calls=10,
    decode_calls=1,
    warmup=3,
)
QUICK = Sizes(
    size="tiny",
    matmul=256,
    mha=(2, 64, 4),
    mha_lengths=(32, 64),
    bert=dict(
        vocab_size=1200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
    bert_batch=4,
    bert_length=16,
    vit=dict(
        image_size=32,
        patch_size=8,
        num_classes=10,
        d_model=32,
        num_layers=2,
        num_heads=4,
        d_ff=64,
    ),
    vit_batch=4,
    transformer=dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64),
    vocab=100,
    train_batch=4,
    train_length=8,
    decode_batches=(1, 4),
    decode_tokens=4,
    src_length=6,
    beam=2,
    rounds=1,
    calls=1,
    train_calls=1,
    decode_calls=1,
    warmup=1,
)


@dataclass
class Row:
    """One line of the table. ``qkv`` and ``ref`` are formatted cells."""

    group: str
    name: str
    qkv: str
    ref: str = "—"
    ratio: tuple[float, float, float] | None = None  # speed ratio: median, min, max
    rounds: str = ""
    rate: str = "—"  # % of the bf16 matrix rate, qkv / reference
    notes: str = ""


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    rounds: int
    rate: float | None = None  # measured bf16 FLOP/s
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines under the table

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = "" if row.ratio is None else f"  speed ratio {row.ratio[0]:.3f}"
        log(f"{row.group:>9} | {row.name}: qkv {row.qkv}, ref {row.ref}{ratio}  {row.notes}")


# --- timing --------------------------------------------------------------------------------------


def timed_pair(
    ctx: Context, a: Callable[[], object], b: Callable[[], object], calls: int
) -> tuple[list[float], list[float]]:
    """Warm-up calls of ``a`` and ``b``, then interleaved rounds; seconds per call."""
    for _ in range(ctx.sizes.warmup):
        a()
        b()
    synchronize(ctx.device)
    return interleave(
        lambda: time_call(a, calls, ctx.device),
        lambda: time_call(b, calls, ctx.device),
        ctx.rounds,
    )


def timed_alone(
    ctx: Context, a: Callable[[], object], calls: int, warmup: int | None = None
) -> list[float]:
    """``warmup`` (default ``ctx.sizes.warmup``) untimed calls of ``a``, then
    ``ctx.rounds`` rounds; seconds per call."""
    for _ in range(ctx.sizes.warmup if warmup is None else warmup):
        a()
    synchronize(ctx.device)
    return [time_call(a, calls, ctx.device) for _ in range(ctx.rounds)]


def first_call_seconds(ctx: Context, fn: Callable[[], object]) -> float:
    """Seconds of one call, synchronised: for a compiled model, its compilation."""
    synchronize(ctx.device)
    start = time.perf_counter()
    fn()
    synchronize(ctx.device)
    return time.perf_counter() - start


def percent(ctx: Context, flops: float, seconds: float) -> str:
    return "—" if ctx.rate is None else f"{100 * flops / seconds / ctx.rate:.0f}%"


def rate_cell(ctx: Context, flops: float, qkv_s: float, ref_s: float | None) -> str:
    ref = "—" if ref_s is None else percent(ctx, flops, ref_s)
    return f"{percent(ctx, flops, qkv_s)} / {ref}"


def rounds_cell(ctx: Context, calls: int) -> str:
    return f"{ctx.rounds} × {calls}"


def check_close(got: Tensor, expected: Tensor, what: str) -> str:
    """A note with the relative and largest difference of qkv's output from the
    reference's; raises where the two are different models."""
    got, expected = got.float(), expected.float()
    relative = ((got - expected).norm() / expected.norm().clamp_min(1e-12)).item()
    largest = (got - expected).abs().max().item()
    if not relative <= MISMATCH:  # also catches NaN
        raise ValueError(
            f"{what}: qkv's output differs from the reference's by {relative:.3g} "
            f"(relative norm; at most {MISMATCH} expected): weights not copied right?"
        )
    return f"relative diff {relative:.1e}, max abs diff {largest:.2g}"


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def count(n: float) -> str:
    """``16,200`` for numbers ≥ 100, else three significant digits."""
    return f"{n:,.0f}" if n >= 100 else f"{n:.3g}"


def release(ctx: Context) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def tests_on_path() -> None:
    """The weight-copying helpers of the parity tests live in ``tests/``."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))


# --- matmul --------------------------------------------------------------------------------------


def group_matmul(ctx: Context) -> None:
    n = ctx.sizes.matmul
    g = torch.Generator(device=ctx.device).manual_seed(0)
    a = torch.randn(n, n, device=ctx.device, dtype=BF16, generator=g)
    b = torch.randn(n, n, device=ctx.device, dtype=BF16, generator=g)
    # The first row of the run: enough warm-up calls (a fraction of a second) for the
    # GPU's clocks to rise from idle.
    times = timed_alone(ctx, lambda: a @ b, ctx.sizes.calls, warmup=5 * ctx.sizes.calls)
    rates = [2 * n**3 / t for t in times]
    ctx.rate = statistics.median(rates)
    ctx.add(
        Row(
            "matmul",
            f"bf16 matmul {n}×{n}×{n}: the bf16 matrix rate",
            f"{ctx.rate / 1e12:.1f} TFLOP/s ({min(rates) / 1e12:.1f}–{max(rates) / 1e12:.1f})",
            rounds=rounds_cell(ctx, ctx.sizes.calls),
            rate="100%",
        )
    )


# --- attention -----------------------------------------------------------------------------------


def mha_flops(batch: int, length: int, d: int) -> float:
    """Forward + backward, causal (module docstring)."""
    return 3 * (8 * batch * length * d * d + 2 * batch * length * length * d)


def group_attention(ctx: Context) -> None:
    tests_on_path()
    from attention import make_step
    from torch_reference import copy_mha

    from qkv.attention import MultiHeadAttention

    batch, d, heads = ctx.sizes.mha
    torch.manual_seed(0)
    ours = MultiHeadAttention(d, heads)
    ref = nn.MultiheadAttention(d, heads, batch_first=True)
    copy_mha(ours, ref)
    ours = ours.to(ctx.device, BF16).eval()
    ref = ref.to(ctx.device, BF16).eval()
    params = [*ours.parameters(), *ref.parameters()]
    for length in ctx.sizes.mha_lengths:
        x = torch.randn(batch, length, d, device=ctx.device, dtype=BF16, requires_grad=True)
        # torch reads True as "may not attend"; with is_causal and no padding mask it
        # drops the mask and runs SDPA's causal kernel, as qkv does.
        mask = torch.ones(length, length, dtype=torch.bool, device=ctx.device).triu(1)

        def qkv_fn(x: Tensor) -> Tensor:
            return ours(x, is_causal=True).output

        def ref_fn(x: Tensor, mask: Tensor = mask) -> Tensor:
            return ref(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]

        qkv_step = make_step(qkv_fn, x, "backward", params)
        ref_step = make_step(ref_fn, x, "backward", params)
        note = check_close(qkv_step(), ref_step(), f"attention L={length}")
        qkv_times, ref_times = timed_pair(ctx, qkv_step, ref_step, ctx.sizes.calls)
        qkv_s, ref_s = statistics.median(qkv_times), statistics.median(ref_times)
        flops = mha_flops(batch, length, d)
        ctx.add(
            Row(
                "attention",
                f"MHA forward+backward, causal, batch {batch}, d {d}, {heads} heads, "
                f"L {length:,} vs nn.MultiheadAttention",
                f"{1e3 * qkv_s:.2f} ms",
                f"{1e3 * ref_s:.2f} ms",
                ratio_spread(ref_times, qkv_times),
                rounds_cell(ctx, ctx.sizes.calls),
                rate_cell(ctx, flops, qkv_s, ref_s),
                note,
            )
        )
        del x, mask
        release(ctx)


# --- compiled models -----------------------------------------------------------------------------


def compile_qkv(model: nn.Module) -> tuple[Callable[..., Any], str]:
    """qkv's compile entry point where it exists, else ``torch.compile``; and its name."""
    try:
        from qkv.compile import compile_model  # type: ignore[import-not-found]
    except ModuleNotFoundError as error:
        if error.name != "qkv.compile":  # the module is there and broken: say so
            raise
        return torch.compile(model), "torch.compile"
    compiled = compile_model(model)
    # It compiles in place (Module.compile), or leaves the model as it is, with a
    # warning, where torch reports no compiler for the device.
    if getattr(compiled, "_compiled_call_impl", True) is None:
        return compiled, "qkv.compile.compile_model, which left it uncompiled (see its warning)"
    return compiled, "qkv.compile.compile_model"


def inference(model: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return model(*args, **kwargs)

    return call


# --- BERT ----------------------------------------------------------------------------------------


def bert_flops(config: Any, length: int) -> float:
    """Per sequence (module docstring); ``config`` is transformers' BertConfig."""
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return n * (2 * length * (4 * d * d + 2 * d * f) + 4 * length * length * d) + 2 * d * d


def build_bert(sizes: Sizes) -> tuple[nn.Module, nn.Module]:
    """qkv's and transformers' BertModel on the same weights, in eval mode, fp32, CPU."""
    import transformers
    from bert import build

    from qkv.convert.bert import config_from_hf, load_hf_state_dict
    from qkv.models.bert import BertModel

    if sizes.bert is None:
        return build("base")
    torch.manual_seed(0)
    config = transformers.BertConfig(**sizes.bert, attn_implementation="sdpa")
    ref = transformers.BertModel(config)
    ours = BertModel(config_from_hf(ref.config.to_dict()))
    load_hf_state_dict(ours, ref.state_dict())
    return ours.eval(), ref.eval()


def group_bert(ctx: Context) -> None:
    from bert import make_inputs

    s = ctx.sizes
    ours, ref = build_bert(s)
    config = ref.config
    ours = ours.to(ctx.device, BF16)
    ref = ref.to(ctx.device, BF16)
    inputs = {
        padded: {
            k: v.to(ctx.device)
            for k, v in make_inputs(s.bert_batch, s.bert_length, config.vocab_size, padded).items()
        }
        for padded in (False, True)
    }
    flops = s.bert_batch * bert_flops(config, s.bert_length)
    shape = f"batch {s.bert_batch} × {s.bert_length}"

    def measure(qkv_model: Any, ref_model: Any, mode: str, padded: bool, note: str) -> None:
        x = inputs[padded]
        qkv_call, ref_call = inference(qkv_model, **x), inference(ref_model, **x)
        check = check_close(
            qkv_call().last_hidden_state,  # type: ignore[attr-defined]
            ref_call().last_hidden_state,  # type: ignore[attr-defined]
            f"BERT {mode}",
        )
        qkv_times, ref_times = timed_pair(ctx, qkv_call, ref_call, s.calls)
        qkv_s, ref_s = statistics.median(qkv_times), statistics.median(ref_times)
        ctx.add(
            Row(
                "bert",
                f"BERT-{s.size} inference, {mode}, {shape}"
                + (", half the batch half padded" if padded else "")
                + " vs transformers (sdpa)",
                f"{count(s.bert_batch / qkv_s)} seq/s",
                f"{count(s.bert_batch / ref_s)} seq/s",
                ratio_spread(ref_times, qkv_times),
                rounds_cell(ctx, s.calls),
                rate_cell(ctx, flops, qkv_s, ref_s),
                "; ".join(n for n in (note, check) if n),
            )
        )

    for padded in (False, True):
        measure(ours, ref, "eager", padded, "")
    qkv_compiled, entry = compile_qkv(ours)
    ref_compiled = torch.compile(ref)
    for padded in (False, True):
        x = inputs[padded]
        # The first call compiles (padded: compiles again where the mask makes a new graph).
        qkv_first = first_call_seconds(ctx, inference(qkv_compiled, **x))
        ref_first = first_call_seconds(ctx, inference(ref_compiled, **x))
        note = f"qkv: {entry}; first call (compile) qkv {qkv_first:.1f} s, ref {ref_first:.1f} s"
        measure(qkv_compiled, ref_compiled, "compiled", padded, note)
    del qkv_compiled, ref_compiled
    torch._dynamo.reset()


# --- ViT -----------------------------------------------------------------------------------------


def vit_flops(config: Any) -> float:
    """Per image (module docstring); ``config`` is qkv's ViTConfig."""
    d, f, n = config.d_model, config.d_ff, config.num_layers
    patches = (config.image_size // config.patch_size) ** 2
    t = 1 + patches
    layers = n * (2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d)
    embed = 2 * patches * config.in_channels * config.patch_size**2 * d
    return layers + embed + 2 * d * config.num_classes


def group_vit(ctx: Context) -> None:
    from vit import copy_from_timm, import_timm, timm_vit

    from qkv.models.vit import ViT, ViTConfig

    s = ctx.sizes
    config = ViTConfig.b16() if s.vit is None else ViTConfig(**s.vit)
    torch.manual_seed(0)
    ref: nn.Module | None = None
    note = ""
    if importlib.util.find_spec("timm") is None:
        note = "timm not installed: reference skipped"
        ours = ViT(config)
    else:
        timm = import_timm()
        if s.vit is None:
            ref = timm.create_model("vit_base_patch16_224", pretrained=False)
        else:
            ref = timm_vit(config)
        nn.init.normal_(ref.head.weight, std=0.02)  # timm's head starts at zero
        ours = ViT(config)
        copy_from_timm(ours, ref)
        ref = ref.eval().to(ctx.device, BF16)
    ours = ours.eval().to(ctx.device, BF16)
    g = torch.Generator().manual_seed(1)
    shape = (s.vit_batch, config.in_channels, config.image_size, config.image_size)
    images = torch.randn(shape, generator=g).to(ctx.device, BF16)
    flops = s.vit_batch * vit_flops(config)
    model_name = "ViT-B/16" if s.vit is None else f"ViT-{s.size}"
    name = f"{model_name} inference, batch {s.vit_batch}"
    ref_name = "vit_base_patch16_224" if s.vit is None else "VisionTransformer"

    def measure(qkv_model: Any, ref_model: Any, mode: str, extra: str) -> None:
        qkv_call = inference(lambda: qkv_model(images).logits)
        if ref_model is None:
            qkv_times = timed_alone(ctx, qkv_call, s.calls)
            qkv_s = statistics.median(qkv_times)
            ctx.add(
                Row(
                    "vit",
                    f"{name}, {mode}",
                    f"{count(s.vit_batch / qkv_s)} img/s",
                    rounds=rounds_cell(ctx, s.calls),
                    rate=rate_cell(ctx, flops, qkv_s, None),
                    notes="; ".join(n for n in (extra, note) if n),
                )
            )
            return
        ref_call = inference(ref_model, images)
        check = check_close(qkv_call(), ref_call(), f"ViT {mode}")  # type: ignore[arg-type]
        qkv_times, ref_times = timed_pair(ctx, qkv_call, ref_call, s.calls)
        qkv_s, ref_s = statistics.median(qkv_times), statistics.median(ref_times)
        ctx.add(
            Row(
                "vit",
                f"{name}, {mode} vs timm {ref_name}",
                f"{count(s.vit_batch / qkv_s)} img/s",
                f"{count(s.vit_batch / ref_s)} img/s",
                ratio_spread(ref_times, qkv_times),
                rounds_cell(ctx, s.calls),
                rate_cell(ctx, flops, qkv_s, ref_s),
                "; ".join(n for n in (extra, check) if n),
            )
        )

    measure(ours, ref, "eager", "")
    qkv_compiled, entry = compile_qkv(ours)
    ref_compiled = None if ref is None else torch.compile(ref)
    qkv_first = first_call_seconds(ctx, inference(qkv_compiled, images))
    compiled_note = f"qkv: {entry}; first call (compile) qkv {qkv_first:.1f} s"
    if ref_compiled is not None:
        ref_first = first_call_seconds(ctx, inference(ref_compiled, images))
        compiled_note += f", ref {ref_first:.1f} s"
    measure(qkv_compiled, ref_compiled, "compiled", compiled_note)
    del qkv_compiled, ref_compiled
    torch._dynamo.reset()


# --- training ------------------------------------------------------------------------------------


def transformer_flops(config: Any, src: int, tgt: int) -> float:
    """One training step of one sentence pair, 3 × forward (module docstring)."""
    d, f = config.d_model, config.d_ff
    enc = config.num_encoder_layers * (2 * src * (4 * d * d + 2 * d * f) + 4 * src * src * d)
    dec = config.num_decoder_layers * (
        2 * tgt * (6 * d * d + 2 * d * f) + 4 * src * d * d + 2 * tgt * tgt * d + 4 * tgt * src * d
    )
    return 3 * (enc + dec + 2 * tgt * d * config.tgt_vocab_size)


# torch.optim.AdamW's defaults, given to qkv's optimizer too so that only the
# implementation differs.
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def qkv_optimizer(model: nn.Module, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """The AdamW qkv's trainer builds (``qkv.train.optim.adamw``, the fastest kind the
    device has) where it exists; else ``torch.optim.AdamW`` built here, fused on CUDA."""
    from qkv.train import optim

    make = getattr(optim, "adamw", None)
    if callable(make):
        accepted = inspect.signature(make).parameters
        optimizer = make(model.parameters(), **{k: v for k, v in ADAMW.items() if k in accepted})
        kind = getattr(optim, "adamw_kind", lambda o: "?")(optimizer)
        return optimizer, f"qkv.train.optim.adamw ({kind})"
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW, fused=fused)  # type: ignore[arg-type]
    return optimizer, f"torch.optim.AdamW(fused={fused}) built here"


def group_training(ctx: Context) -> None:
    tests_on_path()
    from translation import TorchSeq2Seq, train_step

    from qkv.data.batching import Seq2SeqBatch
    from qkv.models.transformer import Transformer, TransformerConfig

    s = ctx.sizes
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, s.vocab, (s.train_batch, s.train_length), generator=g)
    tgt = torch.randint(3, s.vocab, (s.train_batch, s.train_length), generator=g)
    bos = torch.full((s.train_batch, 1), 1)
    batch = Seq2SeqBatch(src, torch.cat([bos, tgt[:, :-1]], dim=1), tgt).to(ctx.device)
    tokens = s.train_batch * s.train_length

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        # benchmarks/translation.py's step, in bf16 on this device.
        def call() -> None:
            train_step(model, optimizer, batch, bf16=True)

        return call

    base = TransformerConfig.base(s.vocab, s.vocab, share_embeddings=True, **s.transformer)
    for label, attention_dropout, own_optimizer in (
        ("matched: attention dropout = dropout, the same AdamW", base.dropout, False),
        ("as qkv trains: no attention dropout, qkv's optimizer", 0.0, True),
    ):
        torch.manual_seed(0)
        ours = Transformer(replace(base, attention_dropout=attention_dropout))
        reference = TorchSeq2Seq(ours)
        ours, reference = ours.to(ctx.device).eval(), reference.to(ctx.device).eval()
        with torch.no_grad():
            check = check_close(
                ours(batch.src[:2], batch.tgt_in[:2]).logits,
                reference(batch.src[:2], batch.tgt_in[:2]),
                "training",
            )
        ours.train(), reference.train()
        if own_optimizer:
            optimizer, how = qkv_optimizer(ours, ctx.device)
        else:
            optimizer = torch.optim.AdamW(ours.parameters(), **ADAMW)  # type: ignore[arg-type]
            how = "torch.optim.AdamW"
        ref_optimizer = torch.optim.AdamW(reference.parameters(), **ADAMW)  # type: ignore[arg-type]
        qkv_times, ref_times = timed_pair(
            ctx, step(ours, optimizer), step(reference, ref_optimizer), s.train_calls
        )
        qkv_s, ref_s = statistics.median(qkv_times), statistics.median(ref_times)
        flops = s.train_batch * transformer_flops(ours.config, s.train_length, s.train_length)
        ctx.add(
            Row(
                "training",
                f"Transformer-{s.size} training step, bf16 autocast, batch {s.train_batch} × "
                f"{s.train_length}, {label} vs nn.Transformer",
                f"{1e3 * qkv_s:.1f} ms ({count(tokens / qkv_s)} tgt tok/s)",
                f"{1e3 * ref_s:.1f} ms ({count(tokens / ref_s)} tgt tok/s)",
                ratio_spread(ref_times, qkv_times),
                rounds_cell(ctx, s.train_calls),
                rate_cell(ctx, flops, qkv_s, ref_s),
                f"qkv optimizer: {how}; reference: torch.optim.AdamW; fp32 {check}",
            )
        )
        del ours, reference, optimizer, ref_optimizer
        release(ctx)


# --- decoding ------------------------------------------------------------------------------------

# The arguments greedy_decode and beam_search had before issue 18; any other is a flag
# of the new fast paths.
KNOWN_ARGUMENTS = {
    "model", "src_ids", "bos_id", "eos_id", "max_len", "min_len", "src_key_padding_mask",
    "beam_size", "length_penalty", "n_best", "style", "early_stopping",
}  # fmt: skip


def path_flags(
    fn: Callable[..., Any], device: torch.device
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """The keyword arguments of ``fn``'s fast path; those of the paths to compare it
    with: the old path (every new flag off), and on CUDA each automatic flag (default
    ``None``, e.g. CUDA graphs) alone off; and a note naming the new arguments found."""
    fast: dict[str, Any] = {}
    old: dict[str, Any] = {}
    automatic: list[str] = []
    seen = []
    for name, p in inspect.signature(fn).parameters.items():
        if name in KNOWN_ARGUMENTS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        seen.append(f"{name}={p.default!r}")
        if p.default is True:
            old[name] = False  # on by default: off is the old path
        elif p.default is None and "bool" in str(p.annotation):
            old[name] = False  # automatic (on where the device has it)
            automatic.append(name)
        elif p.default is False:
            fast[name] = True  # off by default: an opt-in fast path
            old[name] = False
    others = [old] if old else []
    if device.type == "cuda" and len(old) > 1:
        others += [{**fast, name: False} for name in automatic]
    note = "new arguments: " + (", ".join(seen) if seen else "none")
    return fast, others, note


def flags_text(flags: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in flags.items())


def decoding_row(
    ctx: Context,
    name: str,
    fast_call: Callable[[], Any],
    fast_name: str,
    call: Callable[[dict[str, Any]], Callable[[], Any]],
    flags: dict[str, Any] | None,
    new_tokens: int,
) -> None:
    """One row: qkv's fast path alone (``flags`` None), or against ``call(flags)``."""
    calls = ctx.sizes.decode_calls
    if flags is None:
        times = timed_alone(ctx, fast_call, calls)
        ctx.add(
            Row(
                "decoding",
                name,
                f"{count(new_tokens / statistics.median(times))} tok/s",
                rounds=rounds_cell(ctx, calls),
                notes="no flag selects the old path",
            )
        )
        return
    other_call = call(flags)
    got, expected = fast_call().tokens, other_call().tokens
    same = sum(
        a == b for x, y in zip(got, expected, strict=True) for a, b in zip(x, y, strict=False)
    )
    agree = same / max(1, sum(len(y) for y in expected))
    qkv_times, ref_times = timed_pair(ctx, fast_call, other_call, calls)
    ctx.add(
        Row(
            "decoding",
            f"{name}: {fast_name} vs {flags_text(flags)}",
            f"{count(new_tokens / statistics.median(qkv_times))} tok/s",
            f"{count(new_tokens / statistics.median(ref_times))} tok/s",
            ratio_spread(ref_times, qkv_times),
            rounds_cell(ctx, calls),
            notes=f"tokens agree {agree:.1%}",
        )
    )


def group_decoding(ctx: Context) -> None:
    from qkv.decoding import beam_search, greedy_decode
    from qkv.models.transformer import Transformer, TransformerConfig

    s = ctx.sizes
    torch.manual_seed(0)
    base = Transformer(
        TransformerConfig.base(s.vocab, s.vocab, share_embeddings=True, **s.transformer)
    ).eval()
    n = s.decode_tokens
    searches: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        ("greedy", greedy_decode, {}),
        (f"beam {s.beam}", beam_search, {"beam_size": s.beam}),
    ]
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", BF16)):
        model = base.to(ctx.device, dtype)  # fp32 first, then in place to bf16
        for label, fn, extra in searches:
            fast, others, note = path_flags(fn, ctx.device)
            if dtype_name == "fp32":
                ctx.notes.append(f"{fn.__name__}: {note}")
                log(ctx.notes[-1])
            for batch in s.decode_batches:
                g = torch.Generator().manual_seed(batch)
                src = torch.randint(3, s.vocab, (batch, s.src_length), generator=g).to(ctx.device)

                def call(
                    flags: dict[str, Any],
                    fn: Callable[..., Any] = fn,
                    model: nn.Module = model,
                    src: Tensor = src,
                    extra: dict[str, Any] = extra,
                ) -> Callable[[], Any]:
                    # min_len = max_len: eos is never chosen, every sentence gets n tokens.
                    return lambda: fn(
                        model, src, bos_id=1, eos_id=2, max_len=n, min_len=n, **extra, **flags
                    )

                name = (
                    f"{label} decoding, {s.size} translator, {dtype_name}, batch {batch}, "
                    f"{n} new tokens"
                )
                fast_name = f"qkv ({flags_text(fast)})" if fast else "qkv's default"
                for flags in others or [None]:
                    try:
                        decoding_row(ctx, name, call(fast), fast_name, call, flags, batch * n)
                    except Exception as error:  # the other rows still run
                        row = name if flags is None else f"{name} vs {flags_text(flags)}"
                        ctx.failures.append(f"decoding: {row}: failed: {one_line(error)}")
                        log(f"gpu.py: {ctx.failures[-1]}")
        release(ctx)


# --- the run -------------------------------------------------------------------------------------

GROUP_FUNCTIONS: dict[str, Callable[[Context], None]] = {
    "matmul": group_matmul,
    "attention": group_attention,
    "bert": group_bert,
    "vit": group_vit,
    "training": group_training,
    "decoding": group_decoding,
}


def run_groups(ctx: Context, groups: Sequence[str], functions: dict[str, Callable] | None = None):
    """Each group in turn; a failure is one line in ``ctx.failures`` and on stderr."""
    functions = GROUP_FUNCTIONS if functions is None else functions
    for name in groups:
        start = time.perf_counter()
        try:
            functions[name](ctx)
        except Exception as error:  # one failing group must not stop the others
            line = f"{name}: failed: {one_line(error)}"
            ctx.failures.append(line)
            log(f"gpu.py: {line}")
        finally:
            release(ctx)
        log(f"{name}: {time.perf_counter() - start:.1f} s")


def table(ctx: Context) -> str:
    lines = [
        "| comparison | qkv | reference | speed ratio (> 1: qkv faster), median | min–max "
        "| rounds × calls | % of the bf16 matrix rate, qkv / ref | notes |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in ctx.rows:
        ratio, spread = ("—", "—")
        if r.ratio is not None:
            ratio, spread = f"{r.ratio[0]:.2f}", f"{r.ratio[1]:.2f}–{r.ratio[2]:.2f}"
        lines.append(
            f"| {r.name} | {r.qkv} | {r.ref} | {ratio} | {spread} | {r.rounds} | {r.rate} "
            f"| {r.notes} |"
        )
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    for name in ("transformers", "timm"):
        # Without importing: timm's import may need torchvision stood in for (vit.py).
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(parts)


def section(ctx: Context, argv: Sequence[str], seconds: float) -> str:
    command = " ".join([".venv/bin/python benchmarks/gpu.py", *argv])
    cuda = ctx.device.type == "cuda"
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {device_name(ctx.device)}, "
        f"{versions()}; `{command}` ({seconds:.0f} s). bf16 unless a row says otherwise; "
        "each comparison interleaved round by round in the same run"
        + (", each round timed between two torch.cuda.synchronize" if cuda else "")
        + "; the reference of a decoding row is qkv with the flags it names; "
        "FLOP counts in the docstring of benchmarks/gpu.py.",
        "",
        table(ctx),
    ]
    if ctx.notes:
        lines += [""] + [f"- {note}" for note in ctx.notes]
    if ctx.failures:
        lines += ["", "Failed row groups:", ""] + [f"- {f}" for f in ctx.failures]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run issue 18's GPU comparisons of qkv against its references."
    )
    parser.add_argument("--device", default="cuda", help="the device to measure on")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one round: a smoke test"
    )
    parser.add_argument(
        "--only", nargs="+", choices=GROUPS, help="run only these row groups (matmul always runs)"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per comparison (default: 5)")
    parser.add_argument(
        "--write",
        nargs="?",
        const=RESULTS,
        type=Path,
        metavar="PATH",
        help=f"replace the section {SECTION!r} of PATH (default: {RESULTS.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (try --device cpu)")
    partial = args.quick or args.only or device.type != "cuda"
    if partial and args.write is not None and args.write.resolve() == RESULTS.resolve():
        # The project's results hold full GPU runs only.
        parser.error(
            f"--write {RESULTS.relative_to(ROOT)} records full GPU runs: "
            "use --device cuda without --quick and --only, or give another PATH"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    ctx = Context(device, sizes, args.rounds or sizes.rounds)
    groups = ["matmul", *[g for g in GROUPS if g != "matmul" and (not args.only or g in args.only)]]
    log(f"{device_name(device)}, {versions()}; groups: {', '.join(groups)}")
    start = time.perf_counter()
    run_groups(ctx, groups)
    text = section(ctx, argv, time.perf_counter() - start)
    print(text, end="", flush=True)
    if args.write is not None:
        write_results(args.write, text)
        log(f"written to {args.write}")


if __name__ == "__main__":
    main()
