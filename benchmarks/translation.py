"""Translation: training throughput against ``torch.nn.Transformer``, and the quality bar.

Two jobs, one per subcommand.

``throughput``: qkv's :class:`~qkv.models.transformer.Transformer` against
``torch.nn.Transformer`` of the same size, wrapped in qkv's own embeddings,
positional encoding and tied output projection, so the only difference is the
encoder–decoder in between. The reference's stacks are built without the final
LayerNorm ``nn.Transformer`` adds by default (post-norm does not have it), its weights
are copied from qkv's, and the two are checked to give the same logits before any
timing. Both train on the same real batches (the Ding dictionary's training pairs, a
preset's BPE vocabulary and token budget): forward, label-smoothed loss, backward,
AdamW step. Rounds are interleaved (order alternating); the ratio per round is qkv
target tokens/s ÷ reference target tokens/s (> 1: qkv faster).

``torch.nn.Transformer``'s single ``dropout`` also drops attention weights, so the
matched comparison gives qkv the same attention dropout; a second row shows qkv as
its presets run it (no attention dropout, which keeps the fused kernel).

The optimizer: in the first three rows both sides step ``torch.optim.AdamW`` as torch
builds it by default (on the CPU a loop over the parameters). The fourth row is qkv as
its trainer runs it: the preset's attention settings and :func:`qkv.train.optim.adamw`
(fused where the device has it) against torch's default AdamW, what a user of
``nn.Transformer`` gets without asking for more. The fifth gives both sides the fused
AdamW: the models alone. The sixth is the fourth with the plain attention path
(``fused_attention=False``), whatever the preset says. ``--rows 1 4`` runs some of them.

``--synthetic B L``: random token batches of ``B`` sentences of up to ``L`` source and
``L`` target tokens (lengths drawn from L/2 to L, the rest padding) over the preset's
vocabulary, instead of the dictionary's sentences (no BPE training; the size of the
PERFORMANCE notes' Transformer-base step, batch 16 × 64 + 64).

``train``: trains a preset with :func:`qkv.tasks.translation.train_translator` and scores
the test split with sacreBLEU (greedy, beam, and beam on the average of the last
checkpoints), reporting time and scores.

Run (from the repository root):
    .venv/bin/python benchmarks/translation.py throughput --preset small --rounds 5
    .venv/bin/python benchmarks/translation.py throughput --preset base --synthetic 16 64 --bf16
    .venv/bin/python benchmarks/translation.py train --preset small --run-dir runs/bench-small

``--results benchmarks/RESULTS.md`` writes the table into the section
``## Translation (benchmarks/translation.py)`` of that file (this subcommand's
sub-section replaced, the rest kept).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import interleave, log, ratio_spread, synchronize, write_results
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the weight-copying helpers of the parity tests

from torch_reference import copy_decoder_layer, copy_encoder_layer  # noqa: E402

from qkv.data.batching import Seq2SeqBatch  # noqa: E402
from qkv.data.bpe import PAD_ID, TranslationTokenizer  # noqa: E402
from qkv.data.translation import load_translation  # noqa: E402
from qkv.models.transformer import Transformer  # noqa: E402
from qkv.tasks.translation import (  # noqa: E402
    PRESETS,
    TranslationPreset,
    encode_pairs,
    epoch_batches,
)

SECTION = "## Translation (benchmarks/translation.py)"


class TorchSeq2Seq(nn.Module):
    """``torch.nn.Transformer`` between qkv's embeddings and output projection.

    The embeddings, positional encoding, input dropout and tied output projection
    are qkv's own modules, shared with nothing: they are copies, so each model trains
    its own.
    """

    def __init__(self, ours: Transformer) -> None:
        super().__init__()
        c = ours.config
        self.config = c
        if not (c.share_embeddings and c.tie_output):
            raise ValueError("the benchmark compares the presets' shared, tied embeddings")
        self.embed = copy.deepcopy(ours.src_embed)
        self.positional = copy.deepcopy(ours.src_positional)
        self.dropout = nn.Dropout(c.dropout)
        layer_args = dict(dropout=c.dropout, batch_first=True, norm_first=c.norm_first)
        encoder_layer = nn.TransformerEncoderLayer(c.d_model, c.num_heads, c.d_ff, **layer_args)
        decoder_layer = nn.TransformerDecoderLayer(c.d_model, c.num_heads, c.d_ff, **layer_args)
        # Pre-norm stacks end in a LayerNorm (qkv's and torch's alike); post-norm ones
        # do not in qkv, so the reference gets none either.
        encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else None
        decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else None
        self.transformer = nn.Transformer(
            c.d_model,
            c.num_heads,
            custom_encoder=nn.TransformerEncoder(
                encoder_layer, c.num_encoder_layers, encoder_norm, enable_nested_tensor=False
            ),
            custom_decoder=nn.TransformerDecoder(decoder_layer, c.num_decoder_layers, decoder_norm),
            batch_first=True,
        )
        for o, r in zip(ours.encoder.layers, self.transformer.encoder.layers, strict=True):
            copy_encoder_layer(o, r)
        for o, r in zip(ours.decoder.layers, self.transformer.decoder.layers, strict=True):
            copy_decoder_layer(o, r)
        if c.norm_first:
            encoder_norm.load_state_dict(ours.encoder.norm.state_dict())
            decoder_norm.load_state_dict(ours.decoder.norm.state_dict())

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Shape: src ``(b, k)``, tgt ``(b, q)`` -> logits ``(b, q, V)``."""
        src_pad, tgt_pad = src == self.config.pad_id, tgt == self.config.pad_id  # True = ignore
        q = tgt.shape[1]
        hidden = self.transformer(
            self.dropout(self.positional(self.embed(src))),
            self.dropout(self.positional(self.embed(tgt))),
            # bool like the padding masks (True = may not attend): torch warns on a mix.
            tgt_mask=torch.ones(q, q, dtype=torch.bool, device=tgt.device).triu(1),
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )  # (b, q, d)
        return F.linear(hidden, self.embed.weight)  # tied output projection


def _loss(logits: Tensor, batch: Seq2SeqBatch) -> Tensor:
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.tgt_out.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=0.1,
    )


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Seq2SeqBatch, bf16: bool
) -> None:
    """One training step: forward (bf16 autocast on the batch's device when ``bf16``),
    the label-smoothed loss, backward, the optimizer's step."""
    with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch.src, batch.tgt_in)
        if not isinstance(logits, Tensor):
            logits = logits.logits
    _loss(logits, batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Seq2SeqBatch], bf16: bool
) -> float:
    device = batches[0].src.device
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch, bf16)
    synchronize(device)  # CUDA: wait for the queued kernels
    return time.perf_counter() - start


def synthetic_batches(vocab: int, batch: int, length: int, count: int) -> list[Seq2SeqBatch]:
    """``count`` batches of ``batch`` random sentence pairs of L/2 to L tokens a side
    (ids from 3, the specials below), padded to ``length``."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (batch, 2, length + 1), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch, 2), generator=generator)
        padding = torch.arange(length + 1)[None, None, :] >= lengths[..., None]
        ids = ids.masked_fill(padding, PAD_ID)
        src, tgt = ids[:, 0, :length], ids[:, 1]
        batches.append(Seq2SeqBatch(src, tgt[:, :-1], tgt[:, 1:], PAD_ID))
    return batches


def _optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """``"default"``: ``torch.optim.AdamW`` as torch builds it; ``"qkv"``: the trainer's
    (:func:`qkv.train.optim.adamw`, the fastest kind the device has); ``"fused"``."""
    from qkv.train.optim import adamw

    if kind == "default":
        return torch.optim.AdamW(model.parameters(), lr=1e-4)
    return adamw(model.parameters(), lr=1e-4, kind=None if kind == "qkv" else "fused")


def throughput(args: argparse.Namespace) -> str:
    recipe = PRESETS[args.preset]
    if args.max_tokens:
        recipe = recipe.override({"max_tokens": args.max_tokens})
    torch.manual_seed(0)
    if args.synthetic:
        vocab = recipe.vocab_size
        batches = synthetic_batches(vocab, *args.synthetic, args.steps)
        data = f"{len(batches)} random batches of {args.synthetic[0]} × up to {args.synthetic[1]}"
    else:
        corpus = load_translation(None)
        tokenizer = TranslationTokenizer.train(corpus.train, vocab_size=recipe.vocab_size)
        vocab = tokenizer.source.vocab_size
        pairs = encode_pairs(corpus.train, tokenizer, 256)
        batches = epoch_batches(pairs, recipe.max_tokens, seed=0)(0)[: args.steps]
        data = f"{len(batches)} real batches"
    targets = sum(b.num_target_tokens for b in batches)
    device = torch.device(args.device)
    batches = [b.to(device) for b in batches]
    rows = []
    # label, attention dropout, fused attention, qkv's optimizer, the reference's
    specs = [
        ("matched (attention dropout = dropout)", recipe.model.dropout, True, "default", "default"),
        ("no attention dropout, fused kernel", 0.0, True, "default", "default"),
        ("no attention dropout, plain path (`fused_attention=False`)", 0.0, False, "default",
         "default"),
        ("as qkv trains: the preset's attention, qkv's AdamW (`qkv.train.optim.adamw`) "
         "against torch's default AdamW", 0.0, recipe.model.fused_attention, "qkv", "default"),
        ("matched, both with the fused AdamW", recipe.model.dropout, True, "fused", "fused"),
        ("no attention dropout, plain path, qkv's AdamW against torch's default AdamW", 0.0,
         False, "qkv", "default"),
    ]  # fmt: skip
    for number, (label, attention_dropout, fused, qkv_opt, ref_opt) in enumerate(specs, 1):
        if args.rows and number not in args.rows:
            continue
        torch.manual_seed(0)
        config = replace(
            recipe.model,
            src_vocab_size=vocab,
            tgt_vocab_size=vocab,
            attention_dropout=attention_dropout,
            fused_attention=fused,  # False: matmul, softmax, matmul instead of the fused kernel
        )
        ours = Transformer(config)
        reference = TorchSeq2Seq(ours)
        ours, reference = ours.to(device), reference.to(device)
        ours.eval(), reference.eval()
        with torch.no_grad():
            b = batches[0]
            torch.testing.assert_close(
                ours(b.src, b.tgt_in).logits, reference(b.src, b.tgt_in), atol=1e-4, rtol=1e-4
            )
        ours.train(), reference.train()
        optimizers = {"qkv": _optimizer(ours, qkv_opt), "torch": _optimizer(reference, ref_opt)}
        if args.compile:
            # What Trainer(compile=True) does; the warm-up below compiles.
            ours = torch.compile(ours)  # type: ignore[assignment]
        models = {"qkv": ours, "torch": reference}
        for name in models:  # warm-up: allocator, oneDNN kernels
            _train_steps(models[name], optimizers[name], batches[:2], args.bf16)
        qkv_times, torch_times = interleave(
            partial(_train_steps, ours, optimizers["qkv"], batches, args.bf16),
            partial(_train_steps, reference, optimizers["torch"], batches, args.bf16),
            args.rounds,
        )
        row = (
            label + (" (qkv compiled)" if args.compile else ""),
            targets / statistics.median(qkv_times),
            targets / statistics.median(torch_times),
            *ratio_spread(torch_times, qkv_times),
        )
        log(f"{row[0]}: ratio {row[3]:.3f} [{row[4]:.3f}, {row[5]:.3f}]")
        rows.append(row)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    lines = [
        f"### Training throughput against torch.nn.Transformer (preset `{args.preset}`)",
        "",
        f"Measured {datetime.date.today()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {precision}, {args.device}; {data} "
        f"({targets} target tokens) per round, {args.rounds} rounds interleaved.",
        "",
        f"`.venv/bin/python benchmarks/translation.py throughput --preset {args.preset} "
        f"--steps {args.steps} --rounds {args.rounds}{' --bf16' if args.bf16 else ''}"
        + (f" --synthetic {args.synthetic[0]} {args.synthetic[1]}" if args.synthetic else "")
        + (f" --max-tokens {args.max_tokens}" if args.max_tokens else "")
        + (" --rows " + " ".join(map(str, args.rows)) if args.rows else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (" --compile" if args.compile else "")
        + "`",
        "",
        "| qkv | qkv (target tokens/s) | torch.nn.Transformer (target tokens/s) "
        "| qkv / torch, median | min–max |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, ours_tps, ref_tps, ratio, low, high in rows:
        lines.append(
            f"| {label} | {ours_tps:.0f} | {ref_tps:.0f} | {ratio:.3f} | {low:.3f}–{high:.3f} |"
        )
    return "\n".join(lines)


def _override(recipe: TranslationPreset, assignments: Sequence[str]) -> TranslationPreset:
    """A preset with ``--set FIELD=VALUE`` assignments applied (:meth:`Recipe.override_text`),
    for recipes that are measured before they become presets."""
    try:
        return recipe.override_text(assignments)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def train(args: argparse.Namespace) -> str:
    from qkv.tasks.translation import evaluate_test, load_translator, train_translator

    recipe = _override(PRESETS[args.preset], args.set)
    start = time.perf_counter()
    train_translator(args.run_dir, recipe, resume=args.resume, progress=False)
    minutes = (time.perf_counter() - start) / 60
    corpus = load_translation(None)
    rows = []
    for label, beam, average in (
        ("greedy", 1, 1),
        ("beam 4", 4, 1),
        (f"beam 4, last {recipe.average_last} averaged", 4, recipe.average_last),
    ):
        if label.endswith("averaged") and recipe.average_last <= 1:
            continue
        translator = load_translator(args.run_dir, average_last=average)
        scores, _ = evaluate_test(translator, corpus, beam_size=beam)
        rows.append((label, scores))
        log(f"{label}: BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f}")
    lines = [
        f"### Preset `{args.preset}`: test BLEU after training",
        "",
        f"Measured {datetime.date.today()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: {recipe.train.max_steps} steps in {minutes:.1f} min "
        "(training and its periodic validation).",
        "",
        f"`.venv/bin/python benchmarks/translation.py train --preset {args.preset} "
        f"--run-dir {args.run_dir}" + "".join(f" --set {a}" for a in args.set) + "`",
        "",
        "| decoding | BLEU | chrF |",
        "| --- | ---: | ---: |",
    ]
    for label, scores in rows:
        lines.append(f"| {label} | {scores['bleu']:.2f} | {scores['chrf']:.2f} |")
    lines += ["", f"Signature: `{rows[-1][1]['bleu_signature']}`", ""]
    lines.append("Recipe: `" + json.dumps(recipe.to_dict()) + "`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--steps", type=int, default=4, help="batches per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--max-tokens", type=int, help="override the preset's tokens per batch")
    p.add_argument(
        "--synthetic", type=int, nargs=2, metavar=("BATCH", "LENGTH"),
        help="random token batches of this size instead of the dictionary's sentences",
    )  # fmt: skip
    p.add_argument("--rows", type=int, nargs="+", help="run only these rows (1-6)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timed with synchronisation)")
    p.add_argument("--compile", action="store_true", help="torch.compile qkv's model")
    p = sub.add_parser("train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--run-dir", default="runs/bench-translation")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="change one field of the preset's recipe (repeatable), e.g. dropout=0.3",
    )  # fmt: skip
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
        p.add_argument("--results", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = throughput(args) if args.job == "throughput" else train(args)
    print(text)
    if args.results:
        write_results(args.results, text, section=SECTION)


if __name__ == "__main__":
    main()
