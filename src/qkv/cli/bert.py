"""``qkv bert``: pretrain a BERT with masked-LM, fine-tune it, classify with it.

qkv bert finetune --train train.csv --valid valid.csv --test test.csv --run-dir runs/mine
qkv bert finetune --train pairs.jsonl --text-column question --text-pair-column answer
qkv bert classify runs/mine/seed-0/model --json < texts.txt
qkv bert pretrain --preset mini --steps 2000 --run-dir runs/bert-mini
qkv bert finetune --data bbc --seeds 0 1 2                  # all-MiniLM-L6-v2 (installed)
qkv bert finetune --data tweets --limit 6000 1000 all --max-length 64 --epochs 1
qkv bert finetune runs/bert-mini --data bbc --run-dir runs/bbc-mini
qkv bert finetune --from-scratch --preset mini --tokenizer runs/bert-mini --data bbc
qkv bert classify runs/bbc/seed-0/model "Shares fell sharply after the results."
qkv bert finetune-tokens --train train.conll --valid dev.conll --test test.conll
qkv bert tag runs/bert-tokens "Mr Smith flew to New York ." --json

Own data (finetune --train/--valid/--test): .csv, .tsv (no quoting) or .jsonl/.json (JSON
Lines), optionally .gz; a header row (CSV/TSV) naming --text-column, --label-column and,
for sentence pairs, --text-pair-column. The train file's labels, sorted, are the classes;
a split not given comes from the train file's hash split. classify reads a pair model's
inputs as TEXT<TAB>PAIR (arguments or stdin lines).

A Hugging Face RoBERTa or XLM-RoBERTa folder is read as a BERT one wherever a checkpoint
is taken (finetune's checkpoint or --model, classify, finetune-tokens, tag), with its own
tokenizer.json; what qkv fine-tunes from one is saved as one.

JSON keys (classify --json, one object per input): text (str), text_pair (str, pair
models only), label (str: the most probable class), probabilities (object: class name ->
probability, every class, in the model's label order).
"""

from __future__ import annotations

import argparse
from typing import Any

from qkv.cli._options import (
    Parser,
    add_compile,
    add_inference_options,
    add_json,
    add_overwrite,
    add_progress,
    add_set,
    add_training_speed,
    apply_set,
    device,
    inference_device,
    non_negative_int,
    overwrite_option,
    positive_float,
    positive_int,
    print_json,
    probability,
    progress_option,
    read_lines,
    training_speed,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__
_FILE_OPTIONS = ("valid", "test", "text_pair_column")


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
        commands="pretrain | finetune | classify | finetune-tokens | tag",
        run=run,
    )


def _pretrain_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert pretrain")
    p.add_argument(
        "--run-dir", default="runs/bert-pretrain", help="where checkpoints and the model go"
    )
    p.add_argument(
        "--preset",
        choices=["tiny", "mini", "small", "base"],
        default="mini",
        help="the model's size (BertConfig preset)",
    )
    p.add_argument("--tokenizer", help="take the vocabulary from this checkpoint or file")
    p.add_argument(
        "--vocab-size", type=positive_int, default=8192, help="of a newly trained vocabulary"
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per step")
    p.add_argument(
        "--max-length", type=positive_int, default=128, help="tokens per packed sequence"
    )
    p.add_argument("--lr", type=positive_float, default=5e-4, help="peak learning rate")
    p.add_argument(
        "--eval-every", type=positive_int, default=200, help="steps between held-out evaluations"
    )
    p.add_argument(
        "--max-documents", type=positive_int, help="use only this many documents (smoke tests)"
    )
    add_overwrite(p)
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="of initialisation, masking, order"
    )
    add_set(p, "model.dropout=0.0, train.weight_decay=0, eval_sequences=512")
    add_training_speed(p)
    add_progress(p)
    return p


def add_starting_point(p: argparse.ArgumentParser, *, model_help: str) -> None:
    """What a fine-tuning starts from: ``--model`` or ``--from-scratch`` with ``--preset``
    and ``--tokenizer`` (``qkv bert finetune`` and ``finetune-tokens``)."""
    p.add_argument(
        "--model",
        metavar="PATH",
        help=f"{model_help}: a BERT checkpoint folder (Hugging Face config.json, weights, "
        "vocabulary) or a qkv run to start from (default: the installed all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--from-scratch", action="store_true", help="start from random weights, not --model"
    )
    p.add_argument(
        "--preset",
        choices=["tiny", "mini", "small", "base"],
        default="mini",
        help="with --from-scratch: the model's size (BertConfig preset)",
    )
    p.add_argument(
        "--tokenizer",
        help="with --from-scratch: the vocabulary of this checkpoint (default: a new one "
        "trained on the train split)",
    )


# The fine-tuning recipe's fields that add_recipe_options sets: its option for each.
RECIPE_OPTIONS = {
    "epochs": "epochs", "batch_size": "batch_size", "max_length": "max_length", "train.lr": "lr"
}  # fmt: skip


def add_recipe_options(p: argparse.ArgumentParser, *, unit: str, long: str) -> None:
    """The fine-tuning recipe's numbers (:class:`qkv.tasks.bert.finetune.FinetuneRecipe`);
    ``unit`` is what a batch counts, ``long`` what becomes of a longer input."""
    p.add_argument("--epochs", type=positive_float, default=3.0, help="passes over the train set")
    p.add_argument("--batch-size", type=positive_int, default=16, help=f"{unit} per step")
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=128,
        help=f"WordPieces per sequence, [CLS] and [SEP] included; {long}",
    )
    p.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate")


def _finetune_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert finetune")
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="BERT checkpoint folder or pretrain run (default: the installed all-MiniLM-L6-v2)",
    )
    add_starting_point(p, model_help="the same as the positional checkpoint")
    p.add_argument(
        "--train",
        metavar="FILE",
        help="your labelled examples: .csv, .tsv or .jsonl (optionally .gz) with a header "
        "naming the columns",
    )
    p.add_argument(
        "--valid", metavar="FILE", help="validation examples (default: 10%% of --train by hash)"
    )
    p.add_argument(
        "--test", metavar="FILE", help="test examples (default: 10%% of --train by hash)"
    )
    p.add_argument("--text-column", default="text", help="the column (or key) holding the text")
    p.add_argument(
        "--text-pair-column",
        help="the column of a second text: sentence pairs, read as [CLS] text [SEP] pair [SEP]",
    )
    p.add_argument("--label-column", default="label", help="the column holding the label name")
    p.add_argument(
        "--data",
        choices=["bbc", "tweets"],
        help="a built-in data set (default: bbc, when no --train is given)",
    )
    p.add_argument("--data-path", help="the data set's file or folder (default: installed)")
    p.add_argument(
        "--run-dir", default="runs/bert-finetune", help="where each seed's run and model go"
    )
    p.add_argument(
        "--seeds",
        type=non_negative_int,
        nargs="+",
        default=[0],
        help="one fine-tuning per seed (head, dropout, data order); the mean and spread reported",
    )
    add_recipe_options(p, unit="examples", long="longer texts are truncated")
    p.add_argument(
        "--attention-dropout", type=probability, help="override the checkpoint's attention dropout"
    )
    add_set(p, "model.dropout=0.2, warmup_fraction=0.06, train.weight_decay=0")
    p.add_argument(
        "--limit",
        type=_count,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        help="at most this many examples of each split ('all': no limit), sampled with a "
        "fixed seed, the same for every --seeds",
    )
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default: cuda if available)")
    add_training_speed(p)
    add_overwrite(
        p,
        resume="continue the run in --run-dir: seeds done are kept, the stopped one continues "
        "from its last checkpoint",
    )
    add_progress(p)
    return p


def _classify_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert classify")
    p.add_argument("checkpoint", help="a fine-tuned classifier folder")
    p.add_argument(
        "texts",
        nargs="*",
        help="texts (default: one per line on stdin); TEXT<TAB>PAIR for a sentence-pair model",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    add_inference_options(p)
    add_compile(p)
    add_json(p, "one JSON object per text")
    return p


def _pretrain(argv: list[str]) -> int:
    from qkv.tasks.bert.pretrain import PretrainRecipe, pretrain

    parser = _pretrain_parser()
    o = parser.parse_args(argv)
    recipe = PretrainRecipe.create(
        o.preset,
        vocab_size=o.vocab_size,
        max_steps=o.steps,
        batch_size=o.batch_size,
        max_length=o.max_length,
        lr=o.lr,
        eval_every=o.eval_every,
    )
    recipe = apply_set(parser, recipe, o, {
        "model.vocab_size": "vocab_size", "train.max_steps": "steps", "batch_size": "batch_size",
        "max_length": "max_length", "train.lr": "lr", "train.eval_every": "eval_every",
    })  # fmt: skip
    report = pretrain(
        o.run_dir,
        recipe,
        tokenizer=o.tokenizer,
        max_documents=o.max_documents,
        resume=o.resume,
        device=o.device,
        seed=o.seed,
        progress=progress_option(o),
        **training_speed(o),
        **overwrite_option(pretrain, o.overwrite),
    )
    print(f"{report.steps} steps in {report.seconds:.0f} s; model in {report.model_dir}")
    print(f"{'held-out':<12}{'MLM loss':>10}{'accuracy':>10}")
    for name, values in (("start", report.initial), ("end", report.final)):
        if values:
            print(f"{name:<12}{values['mlm_loss']:>10.4f}{values['mlm_accuracy']:>10.2%}")
    return 0


def _finetune(argv: list[str]) -> int:
    from qkv.data.labelled import LabelledFiles
    from qkv.tasks.bert.common import minilm_path
    from qkv.tasks.bert.finetune import FinetuneRecipe, finetune

    parser = _finetune_parser()
    o = parser.parse_args(argv)
    if o.checkpoint and o.model:
        parser.error("give the checkpoint once: as an argument or as --model, not both")
    o.checkpoint = o.checkpoint or o.model
    if o.from_scratch and o.checkpoint:
        parser.error("give a checkpoint or --from-scratch, not both")
    if o.train is not None and (o.data is not None or o.data_path is not None):
        parser.error("--train reads your files; --data and --data-path name a built-in set")
    if o.train is None:
        given = [f"--{name.replace('_', '-')}" for name in _FILE_OPTIONS if getattr(o, name)]
        if given:
            parser.error(f"{', '.join(given)} needs --train FILE")
    files = None
    if o.train is not None:
        files = LabelledFiles(
            o.train, o.valid, o.test, o.text_column, o.label_column, o.text_pair_column
        )
    checkpoint = None if o.from_scratch else (o.checkpoint or minilm_path())
    overrides = {} if o.attention_dropout is None else {"attention_dropout": o.attention_dropout}
    recipe = FinetuneRecipe(
        epochs=o.epochs, batch_size=o.batch_size, max_length=o.max_length
    ).override({"train.lr": o.lr} | {f"model.{k}": v for k, v in overrides.items()})
    own = RECIPE_OPTIONS | {"model.attention_dropout": "attention_dropout"}
    recipe = apply_set(parser, recipe, o, own)
    report = finetune(
        o.run_dir,
        recipe,
        checkpoint=checkpoint,
        preset=o.preset if o.from_scratch else None,
        tokenizer=o.tokenizer,
        dataset=o.data or "bbc",
        data_path=o.data_path,
        data_files=files,
        seeds=o.seeds,
        limits=tuple(o.limit) if o.limit else (None, None, None),
        device=o.device,
        progress=progress_option(o),
        resume=o.resume,
        **training_speed(o),
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


def _pair_inputs(texts: list[str], from_stdin: bool) -> list[tuple[str, str]]:
    """TEXT<TAB>PAIR inputs of a sentence-pair model, split at the first tab."""
    pairs = []
    for i, text in enumerate(texts, start=1):
        where = f"stdin: line {i}" if from_stdin else f"text {i}"
        first, tab, second = text.partition("\t")
        if not tab or not first.strip() or not second.strip():
            raise ValueError(
                f"{where}: this model classifies sentence pairs; give TEXT<TAB>PAIR, both "
                "sides non-empty"
            )
        pairs.append((first, second))
    return pairs


def _classify(argv: list[str]) -> int:
    from qkv.tasks.bert.classify import Classifier

    o = _classify_parser().parse_intermixed_args(argv)
    where, dtype = inference_device(o)
    from_stdin = not o.texts
    texts = o.texts or [line.strip() for line in read_lines() if line.strip()]
    if not texts:
        raise ValueError("no text to classify: give texts, or lines on stdin")
    classifier = Classifier.load(o.checkpoint, device=where, dtype=dtype, compile=o.compile)
    inputs: list[Any] = _pair_inputs(texts, from_stdin) if classifier.pairs else texts
    predictions = classifier.predict(inputs, batch_size=o.batch_size)
    for text, prediction in zip(inputs, predictions, strict=True):
        if o.json:
            record: dict[str, Any] = {"text": text[0] if classifier.pairs else text}
            if classifier.pairs:
                record["text_pair"] = text[1]
            record |= {"label": prediction.label, "probabilities": prediction.probabilities}
            print_json(record)
            continue
        ranked = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])
        shown = "\t".join(text) if classifier.pairs else text
        print(f"{prediction.label}\t{shown}")
        print("   " + "  ".join(f"{name} {p:.3f}" for name, p in ranked))
    return 0


def run(args: argparse.Namespace) -> int:
    from qkv.cli import bert_tokens  # token classification: CoNLL files, seqeval

    commands = {"pretrain": _pretrain, "finetune": _finetune, "classify": _classify}
    commands |= {"finetune-tokens": bert_tokens.finetune_tokens, "tag": bert_tokens.tag}
    return dispatch("bert", USAGE, commands, list(args.args))
