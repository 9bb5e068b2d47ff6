"""``qkv bert finetune-tokens`` and ``qkv bert tag``: token classification (named
entities, tagging) from CoNLL-style files, and tagging new text.

qkv bert finetune-tokens --train train.conll --valid dev.conll --test test.conll
qkv bert finetune-tokens --from-scratch --preset tiny --train train.conll --epochs 10
qkv bert tag runs/bert-tokens "Mr Smith flew to New York ."
qkv bert tag runs/bert-tokens --json < sentences.txt

The files: a token and its tag per line (the token is the first whitespace-separated
column, the tag the last), a blank line between sentences, ``-DOCSTART-`` lines skipped
(:mod:`qkv.data.conll`). Tags go on the first WordPiece of each word; scores are
entity-level precision, recall and F1 of ``seqeval`` (:mod:`qkv.tasks.bert.tokens`).

``tag`` splits each text into words on whitespace only: punctuation stays with its word
(``"Paris,"`` is one word, tagged where its first piece ``paris`` is), so put spaces
around punctuation, as CoNLL files do, for the tags the model learned. It prints each
word and its tag separated by a tab, one word a line and a blank line after each text
(itself a CoNLL-style file). Texts come from the arguments, or one per line from standard
input, where a blank line gives an object with no words (``--json``) or an empty block,
so that with ``--json`` output line N answers input line N.

JSON keys (``tag --json``, one object per text):
    text       the text as given
    words      its words (split on whitespace)
    tags       a tag per word
    entities   the entities read from the tags as seqeval does: a list of objects with
               ``type`` (``PER``), ``start`` and ``end`` (word indices into ``words``,
               ``end`` exclusive) and ``text`` (those words joined by single spaces)
"""

from __future__ import annotations

import argparse

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
    positive_int,
    print_json,
    progress_option,
    read_lines,
    training_speed,
)
from qkv.cli.bert import RECIPE_OPTIONS, add_recipe_options, add_starting_point

__all__ = ["finetune_tokens", "tag"]

USAGE = __doc__


def _finetune_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert finetune-tokens", description=USAGE)
    p.add_argument(
        "--train", required=True, help="CoNLL-style training file (token ... tag per line)"
    )
    p.add_argument("--valid", help="CoNLL-style file scored after each epoch and at the end")
    p.add_argument("--test", help="CoNLL-style file scored once, after training")
    add_starting_point(p, model_help="the token classifier's body")
    p.add_argument("--run-dir", default="runs/bert-tokens", help="where the run is written")
    add_recipe_options(p, unit="sentences", long="longer sentences are tagged in windows")
    add_set(p, "model.dropout=0.2, warmup_fraction=0.06, train.weight_decay=0")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="head initialisation and data order"
    )
    p.add_argument(
        "--device", type=device, help="where to train: cpu, cuda, ... (default: cuda if available)"
    )
    add_training_speed(p)
    add_progress(p)
    add_overwrite(p, resume="continue the run in --run-dir from its last checkpoint")
    return p


def _tag_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv bert tag", description=USAGE)
    p.add_argument("model", help="a fine-tuned token classifier folder or finetune-tokens run")
    p.add_argument("texts", nargs="*", help="texts to tag (default: one per line on stdin)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    add_inference_options(p)
    add_compile(p)
    add_json(p, "one JSON object per text")
    return p


def _scores_table(name: str, scores: object) -> list[str]:
    from qkv.tasks.bert.tokens import EntityScores

    assert isinstance(scores, EntityScores)
    lines = [
        f"{name:<8}{scores.sentences:>10}{scores.entities:>10}"
        f"{scores.precision:>11.2%}{scores.recall:>10.2%}{scores.f1:>10.2%}"
    ]
    for kind, row in sorted(scores.per_type.items()):
        lines.append(
            f"  {kind:<6}{'':>10}{row['support']:>10}"
            f"{row['precision']:>11.2%}{row['recall']:>10.2%}{row['f1']:>10.2%}"
        )
    return lines


def finetune_tokens(argv: list[str]) -> int:
    """``qkv bert finetune-tokens``: fine-tune, print the scores of valid and test."""
    from qkv.tasks.bert.common import minilm_path
    from qkv.tasks.bert.finetune import FinetuneRecipe
    from qkv.tasks.bert.tokens import finetune_tokens as run

    parser = _finetune_parser()
    o = parser.parse_args(argv)
    if o.from_scratch and o.model:
        parser.error("give --model or --from-scratch, not both")
    if o.tokenizer and not o.from_scratch:
        parser.error("--tokenizer goes with --from-scratch (a checkpoint brings its own)")
    recipe = FinetuneRecipe(
        name="finetune-tokens", epochs=o.epochs, batch_size=o.batch_size, max_length=o.max_length
    ).override({"train.lr": o.lr})
    recipe = apply_set(parser, recipe, o, RECIPE_OPTIONS)
    report = run(
        o.run_dir,
        recipe,
        train=o.train,
        valid=o.valid,
        test=o.test,
        checkpoint=None if o.from_scratch else (o.model or minilm_path()),
        preset=o.preset if o.from_scratch else None,
        tokenizer=o.tokenizer,
        seed=o.seed,
        device=o.device,
        progress=progress_option(o),
        resume=o.resume,
        overwrite=o.overwrite,
        **training_speed(o),
    )
    sizes = ", ".join(f"{name} {n}" for name, n in report.sizes.items())
    print(f"from {report.source}: {len(report.labels)} tags, sentences: {sizes}")
    print(f"{report.steps} steps in {report.seconds:.0f} s; model in {report.model_dir}")
    if report.valid is None and report.test is None:
        print("no --valid or --test file: nothing scored")
        return 0
    print(f"{'':<8}{'sentences':>10}{'entities':>10}{'precision':>11}{'recall':>10}{'F1':>10}")
    for name, scores in (("valid", report.valid), ("test", report.test)):
        if scores is not None:
            print("\n".join(_scores_table(name, scores)))
    return 0


def tag(argv: list[str]) -> int:
    """``qkv bert tag``: a tag for each word of each text."""
    from qkv.tasks.bert.tokens import Tagger

    o = _tag_parser().parse_intermixed_args(argv)
    where, dtype = inference_device(o)
    if o.texts:
        empty = [i for i, text in enumerate(o.texts, start=1) if not text.split()]
        if empty:
            raise ValueError(f"text {empty[0]} has no words to tag")
        texts = o.texts
    else:
        # Every line answers, a blank one with no words, so that output line N (with
        # --json) belongs to input line N in a pipe.
        texts = read_lines()
        if not any(line.split() for line in texts):
            raise ValueError("no text to tag: give texts, or lines on stdin")
    tagger = Tagger.load(o.model, device=where, dtype=dtype, compile=o.compile)
    for begin in range(0, len(texts), o.batch_size):
        # Printed batch by batch, so a pipe's reader gets the first results early.
        for tagged in tagger.tag(texts[begin : begin + o.batch_size], batch_size=o.batch_size):
            if o.json:
                print_json(tagged.as_json())
            else:
                print(
                    "".join(f"{w}\t{t}\n" for w, t in zip(tagged.words, tagged.tags, strict=True))
                )
    return 0
