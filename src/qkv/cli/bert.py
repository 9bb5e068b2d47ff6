"""``qkv bert``: pretrain a BERT with masked-LM, fine-tune it, classify with it.

qkv bert pretrain --preset mini --steps 2000 --run-dir runs/bert-mini
qkv bert finetune --data bbc --seeds 0 1 2                  # all-MiniLM-L6-v2 (installed)
qkv bert finetune --data tweets --limit 6000 1000 all --max-length 64 --epochs 1
qkv bert finetune runs/bert-mini --data bbc --run-dir runs/bbc-mini
qkv bert finetune --from-scratch --preset mini --tokenizer runs/bert-mini --data bbc
qkv bert classify runs/bbc/seed-0/model "Shares fell sharply after the results."
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qkv.cli._options import (
    Parser,
    add_overwrite,
    device,
    non_negative_int,
    overwrite_option,
    positive_float,
    positive_int,
    probability,
    read_lines,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__


def _count(value: str) -> int | None:
    """A number of examples, or ``all``."""
    if value == "all":
        return None
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (or 'all')") from None


def add_parser(subparsers: Any) -> None:
    add_group_parser(
        subparsers,
        "bert",
        help="pretrain (masked LM), fine-tune and use BERT classifiers",
        usage=USAGE,
        commands="pretrain | finetune | classify",
        run=run,
    )


def _pretrain_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert pretrain")
    p.add_argument("--run-dir", default="runs/bert-pretrain")
    p.add_argument("--preset", choices=["tiny", "mini", "small", "base"], default="mini")
    p.add_argument("--tokenizer", help="take the vocabulary from this checkpoint or file")
    p.add_argument(
        "--vocab-size", type=positive_int, default=8192, help="of a newly trained vocabulary"
    )
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=5e-4)
    p.add_argument("--eval-every", type=positive_int, default=200)
    p.add_argument(
        "--max-documents", type=positive_int, help="use only this many documents (smoke tests)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    add_overwrite(p)
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    return p


def _finetune_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert finetune")
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="BERT checkpoint folder or pretrain run (default: the installed all-MiniLM-L6-v2)",
    )
    p.add_argument("--from-scratch", action="store_true", help="no pretrained weights")
    p.add_argument("--preset", choices=["tiny", "mini", "small", "base"], default="mini")
    p.add_argument("--tokenizer", help="with --from-scratch: vocabulary of this checkpoint")
    p.add_argument("--data", choices=["bbc", "tweets"], default="bbc")
    p.add_argument("--data-path", help="the data set's file or folder (default: installed)")
    p.add_argument("--run-dir", default="runs/bert-finetune")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0])
    p.add_argument("--epochs", type=positive_float, default=3.0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--attention-dropout", type=probability, help="override the checkpoint's")
    p.add_argument(
        "--limit",
        type=_count,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        help="at most this many examples of each split ('all': no limit), sampled with a "
        "fixed seed, the same for every --seeds",
    )
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default: cuda if available)")
    add_overwrite(p)
    return p


def _classify_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert classify")
    p.add_argument("checkpoint", help="a fine-tuned classifier folder")
    p.add_argument("texts", nargs="*", help="texts (default: one per line on stdin)")
    return p


def _pretrain(argv: list[str]) -> int:
    from qkv.tasks.bert.pretrain import PretrainRecipe, pretrain

    o = _pretrain_parser().parse_args(argv)
    recipe = PretrainRecipe.create(
        o.preset,
        vocab_size=o.vocab_size,
        max_steps=o.steps,
        batch_size=o.batch_size,
        max_length=o.max_length,
        lr=o.lr,
        eval_every=o.eval_every,
    )
    report = pretrain(
        o.run_dir,
        recipe,
        tokenizer=o.tokenizer,
        max_documents=o.max_documents,
        resume=o.resume,
        device=o.device,
        seed=o.seed,
        **overwrite_option(pretrain, o.overwrite),
    )
    print(f"{report.steps} steps in {report.seconds:.0f} s; model in {report.model_dir}")
    print(f"{'held-out':<12}{'MLM loss':>10}{'accuracy':>10}")
    for name, values in (("start", report.initial), ("end", report.final)):
        if values:
            print(f"{name:<12}{values['mlm_loss']:>10.4f}{values['mlm_accuracy']:>10.2%}")
    return 0


def _finetune(argv: list[str]) -> int:
    from qkv.tasks.bert.common import minilm_path
    from qkv.tasks.bert.finetune import FinetuneRecipe, finetune

    o = _finetune_parser().parse_args(argv)
    if o.from_scratch and o.checkpoint:
        print("qkv bert finetune: give a checkpoint or --from-scratch, not both", file=sys.stderr)
        return 2
    checkpoint = None if o.from_scratch else (o.checkpoint or minilm_path())
    overrides = {} if o.attention_dropout is None else {"attention_dropout": o.attention_dropout}
    recipe = FinetuneRecipe(
        epochs=o.epochs, batch_size=o.batch_size, max_length=o.max_length
    ).override({"train.lr": o.lr} | {f"model.{k}": v for k, v in overrides.items()})
    report = finetune(
        o.run_dir,
        recipe,
        checkpoint=checkpoint,
        preset=o.preset if o.from_scratch else None,
        tokenizer=o.tokenizer,
        dataset=o.data,
        data_path=o.data_path,
        seeds=o.seeds,
        limits=tuple(o.limit) if o.limit else (None, None, None),
        device=o.device,
        **overwrite_option(finetune, o.overwrite),
    )
    sizes = report.sizes
    print(f"{report.dataset} from {report.source}: train {sizes['train']}, test {sizes['test']}")
    for seed, accuracy in report.test_accuracy.items():
        print(
            f"seed {seed}: test accuracy {accuracy:.2%} (valid {report.valid_accuracy[seed]:.2%}, "
            f"{report.seconds[seed]:.0f} s) -> {report.model_dirs[seed]}"
        )
    print(
        f"test accuracy {report.mean:.2%} ± {report.std:.2%} over {len(report.test_accuracy)} seeds"
    )
    return 0


def _classify(argv: list[str]) -> int:
    from qkv.tasks.bert.classify import Classifier

    o = _classify_parser().parse_intermixed_args(argv)
    texts = o.texts or [line.strip() for line in read_lines() if line.strip()]
    if not texts:
        raise ValueError("no text to classify: give texts, or lines on stdin")
    classifier = Classifier.load(o.checkpoint)
    for text, prediction in zip(texts, classifier.predict(texts), strict=True):
        ranked = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])
        print(f"{prediction.label}\t{text}")
        print("   " + "  ".join(f"{name} {p:.3f}" for name, p in ranked))
    return 0


def run(args: argparse.Namespace) -> int:
    commands = {"pretrain": _pretrain, "finetune": _finetune, "classify": _classify}
    return dispatch("bert", USAGE, commands, list(args.args))
