"""``qkv translate``: train a German–English translator, score it, translate with it.

qkv translate train --preset small --run-dir runs/de-en
qkv translate eval runs/de-en --beam 4
qkv translate runs/de-en "Heute gab es eine unschöne Szene im Büro."
echo "Wie spät ist es?" | qkv translate runs/de-en
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from qkv.cli._options import (
    Parser,
    add_overwrite,
    device,
    non_negative_float,
    non_negative_int,
    overwrite_option,
    positive_int,
    read_lines,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__


def add_parser(subparsers: Any) -> None:
    add_group_parser(
        subparsers,
        "translate",
        help="train, evaluate and use a German-English translator",
        usage=USAGE,
        commands="train | eval | CHECKPOINT",
        run=run,
    )


def _train_parser() -> argparse.ArgumentParser:
    from qkv.tasks.translation import PRESETS

    p = Parser(prog="qkv translate train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--run-dir", default="runs/translate")
    p.add_argument("--direction", choices=["de-en", "en-de"], default="de-en")
    p.add_argument("--steps", type=positive_int, help="override the preset's number of steps")
    p.add_argument("--data", help="the dictionary file (default /usr/share/trans/de-en)")
    p.add_argument(
        "--limit", type=positive_int, help="use only this many sentence pairs (smoke tests)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    add_overwrite(p)
    p.add_argument(
        "--device", type=device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--beam", type=positive_int, default=4, help="beam size of the final test scoring"
    )
    p.add_argument("--test-limit", type=positive_int, help="score only the first N test sentences")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv translate eval")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument("--beam", type=positive_int, default=4)
    p.add_argument("--length-penalty", type=non_negative_float, default=0.6)
    p.add_argument(
        "--average",
        type=positive_int,
        help="average the last N checkpoints (default: the preset's)",
    )
    p.add_argument("--data", help="the dictionary file (default /usr/share/trans/de-en)")
    p.add_argument("--limit", type=positive_int, help="score only the first N test sentences")
    p.add_argument("--examples", type=non_negative_int, default=5)
    return p


def _translate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv translate")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument("sentences", nargs="*", help="sentences (default: one per line on stdin)")
    p.add_argument("--beam", type=positive_int, default=4)
    p.add_argument("--length-penalty", type=non_negative_float, default=0.6)
    p.add_argument(
        "--average",
        type=positive_int,
        help="average the last N checkpoints (default: the preset's)",
    )
    return p


def _report(translator: Any, data: str | None, beam: int, limit: int | None, examples: int) -> None:
    from qkv.data.translation import load_translation
    from qkv.tasks.translation import evaluate_test

    corpus = load_translation(data, direction=translator.direction)
    start = time.perf_counter()
    scores, hypotheses = evaluate_test(translator, corpus, beam_size=beam, limit=limit)
    seconds = time.perf_counter() - start
    n = len(hypotheses)
    print(f"test set: {n} sentences, beam {beam}, decoded in {seconds:.1f} s")
    print(f"BLEU {scores['bleu']:.2f}   ({scores['bleu_signature']})")
    print(f"chrF {scores['chrf']:.2f}   ({scores['chrf_signature']})")
    for (source, reference), hypothesis in list(zip(corpus.test, hypotheses, strict=False))[
        :examples
    ]:
        print(f"\n  source     {source}\n  reference  {reference}\n  qkv        {hypothesis}")


def _train(argv: list[str]) -> int:
    from qkv.tasks.translation import load_translator, train_translator
    from qkv.train.distributed import is_main_process

    options = _train_parser().parse_args(argv)
    train_translator(
        options.run_dir,
        options.preset,
        direction=options.direction,
        data_path=options.data,
        resume=options.resume,
        max_steps=options.steps,
        limit=options.limit,
        device=options.device,
        seed=options.seed,
        **overwrite_option(train_translator, options.overwrite),
    )
    if not is_main_process():  # torchrun: the main process scores
        return 0
    translator = load_translator(options.run_dir)
    _report(translator, options.data, options.beam, options.test_limit, examples=5)
    return 0


def _eval(argv: list[str]) -> int:
    from qkv.tasks.translation import load_translator

    options = _eval_parser().parse_args(argv)
    translator = load_translator(options.checkpoint, average_last=options.average)
    _report(translator, options.data, options.beam, options.limit, options.examples)
    return 0


def _translate(argv: list[str]) -> int:
    from qkv.tasks.translation import load_translator

    options = _translate_parser().parse_intermixed_args(argv)
    translator = load_translator(options.checkpoint, average_last=options.average)
    # Every stdin line gets an output line, a blank one for a blank line, so the output
    # stays aligned with the input.
    sentences = options.sentences or [line.strip() for line in read_lines()]
    outputs = translator.translate(
        sentences, beam_size=options.beam, length_penalty=options.length_penalty
    )
    for line in outputs:
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    return dispatch(
        "translate",
        USAGE,
        {"train": _train, "eval": _eval},
        list(args.args),
        default=_translate,
        default_parser=_translate_parser,
    )
