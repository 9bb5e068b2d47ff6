"""``qkv translate``: train a translator on your own parallel corpus (or the German–English
dictionary), score it, translate with it.

qkv translate train --preset small --run-dir runs/de-en
qkv translate eval runs/de-en --beam 4
qkv translate train --train fr-en.tsv.gz --src-lang fr --tgt-lang en --run-dir runs/fr-en
qkv translate train --source-file c.fr --target-file c.en --valid dev.tsv --test test.tsv
qkv translate train --train fr-en.tsv --vocab-size 16000 --skip-bad-lines --no-progress
qkv translate eval runs/fr-en --test newstest.tsv --json
qkv translate runs/de-en "Heute gab es eine unschöne Szene im Büro."
echo "Wie spät ist es?" | qkv translate runs/de-en
qkv translate runs/de-en --json --n-best 3 < sentences.txt > translations.jsonl
qkv translate runs/de-en --sample --top-p 0.9 --seed 1 "Wie spät ist es?"
qkv translate opus-mt-de-en/ "Wie spät ist es?"        (a Hugging Face Marian folder)
qkv translate train --from opus-mt-de-en/ --train de-en.tsv --run-dir runs/ft --steps 500
qkv translate export-hf runs/ft -o opus-mt-de-en-ft/
qkv translate train --preset small --direction en-de --run-dir runs/en-de
qkv translate back-translate runs/en-de -o synthetic.tsv        (English text -> German)
qkv translate train --preset hour --back-translated synthetic.tsv --run-dir runs/de-en-bt

JSON keys
  qkv translate RUN --json, one object per input line, in input order:
    source       the input line (without its line end)
    translation  the best translation ("" for a blank line)
    score        what the decoding maximised: beam search log_prob / length penalty,
                 greedy and sampling log_prob (null for a blank line)
    log_prob     the translation's total natural-log probability, end of sentence
                 included (null for a blank line)
    src_lang     the source language's code, as recorded in the run
    tgt_lang     the target language's code
    n_best       with --n-best only: the best translations, best first, each
                 {"translation", "score", "log_prob"} ([] for a blank line)
  qkv translate eval RUN --json, one object, the scores:
    bleu, chrf      corpus BLEU and chrF (sacreBLEU, detokenized text)
    bleu_multi      BLEU with each reference's "/" alternatives as several references
                    (equal to bleu when no reference has one)
    bleu_signature, bleu_multi_signature, chrf_signature   sacreBLEU's signatures
    sentences       test pairs scored
    beam            the beam size (1: greedy)
    length_penalty  the beam's length penalty exponent
    seconds         decoding time
    src_lang, tgt_lang   the languages' codes, as recorded in the run
    test            where the scored pairs came from (a file, or the run's split)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from qkv.cli._options import (
    Parser,
    add_inference_options,
    add_json,
    add_overwrite,
    add_progress,
    add_quantize,
    add_set,
    add_training_speed,
    apply_set,
    check_new_folder,
    check_quantize,
    device,
    inference_device,
    non_negative_float,
    non_negative_int,
    overwrite_option,
    positive_int,
    print_json,
    progress_option,
    training_speed,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__


def add_parser(subparsers: Any) -> None:
    add_group_parser(
        subparsers,
        "translate",
        help="train, evaluate and use a translator (your corpus or German-English)",
        usage=USAGE,
        commands="train | eval | back-translate | export-hf | CHECKPOINT",
        run=run,
    )


def _train_parser() -> argparse.ArgumentParser:
    from qkv.tasks.translation import PRESETS

    p = Parser(prog="qkv translate train")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="the recipe: model size, steps, learning rate",
    )
    p.add_argument(
        "--run-dir",
        default="runs/translate",
        help="the folder the run writes (tokenizer, checkpoints, metrics)",
    )
    own = p.add_argument_group(
        "your own parallel corpus (instead of the German-English dictionary)"
    )
    own.add_argument(
        "--train",
        metavar="FILE",
        help="training pairs: a TSV file, source<TAB>target per line (plain or .gz)",
    )
    own.add_argument(
        "--source-file",
        metavar="FILE",
        help="training sources, one sentence per line, aligned with --target-file "
        "(the OPUS/Moses layout; plain or .gz)",
    )
    own.add_argument(
        "--target-file",
        metavar="FILE",
        help="training targets, line N translating line N of --source-file",
    )
    own.add_argument(
        "--valid",
        metavar="FILE",
        help="validation pairs (TSV); default: a deterministic 5%% hash split of the training file",
    )
    own.add_argument(
        "--test",
        metavar="FILE",
        help="test pairs (TSV); default: a deterministic 5%% hash split of the training file",
    )
    own.add_argument(
        "--src-lang",
        metavar="CODE",
        help="the source language's code, recorded in the run (e.g. fr; default: src)",
    )
    own.add_argument(
        "--tgt-lang",
        metavar="CODE",
        help="the target language's code, recorded in the run (e.g. en; default: tgt)",
    )
    own.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip and count lines that are not a pair (no tab, an empty side, "
        "not UTF-8) instead of stopping at the first",
    )
    p.add_argument(
        "--back-translated",
        metavar="FILE",
        help="synthetic pairs to add to training (a TSV written by qkv translate "
        "back-translate: machine-translated source<TAB>real target), each source "
        "behind the recipe's tag word",
    )
    dictionary = p.add_argument_group("the German-English dictionary (the default data)")
    dictionary.add_argument(
        "--direction",
        choices=["de-en", "en-de"],
        help="translate German to English or back (default: de-en)",
    )
    dictionary.add_argument("--data", help="the dictionary file (default /usr/share/trans/de-en)")
    p.add_argument(
        "--vocab-size",
        type=positive_int,
        help="the joint BPE vocabulary's size (default: the preset's)",
    )
    p.add_argument(
        "--from",
        dest="start_from",
        metavar="DIR",
        help="fine-tune this Hugging Face Marian (OPUS-MT) folder: its model and "
        "SentencePiece tokenizer instead of the preset's model and a new BPE vocabulary",
    )
    p.add_argument("--steps", type=positive_int, help="override the preset's number of steps")
    add_set(p, "model.dropout=0.3, word_dropout=0.1, alternatives=first, train.lr=5e-4")
    p.add_argument(
        "--limit",
        type=positive_int,
        help="use only the first N sentence pairs of the training data (smoke tests)",
    )
    add_overwrite(p)
    p.add_argument(
        "--device", type=device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="the seed of the weights' initialisation and the batch order",
    )
    p.add_argument(
        "--beam", type=positive_int, default=4, help="beam size of the final test scoring"
    )
    p.add_argument("--test-limit", type=positive_int, help="score only the first N test sentences")
    add_training_speed(p)
    add_progress(p)
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv translate eval")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument(
        "--test",
        metavar="FILE",
        help="score on these pairs: a TSV file, source<TAB>target per line (plain "
        "or .gz) (default: the run's own test split)",
    )
    p.add_argument(
        "--split",
        choices=("test", "valid"),
        default="test",
        help="which of the run's own splits to score without --test: the test split "
        "(final figures) or the validation split (choosing a beam, a length penalty, "
        "a recipe)",
    )
    p.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip and count bad lines of the test file instead of stopping",
    )
    p.add_argument("--beam", type=positive_int, default=4, help="the beam size (1: greedy)")
    p.add_argument(
        "--length-penalty",
        type=non_negative_float,
        help="the beam's length penalty exponent (0: none; default: 0.6, or 1.0 as "
        "transformers' generate for a Marian model)",
    )
    p.add_argument(
        "--average",
        type=positive_int,
        help="average the last N checkpoints (default: the preset's)",
    )
    p.add_argument(
        "--data",
        help="the dictionary file, for runs trained on it "
        "(default: the run's, else /usr/share/trans/de-en)",
    )
    p.add_argument("--limit", type=positive_int, help="score only the first N test sentences")
    p.add_argument(
        "--examples",
        type=non_negative_int,
        default=5,
        help="print this many translated test sentences beside their references",
    )
    add_inference_options(p)
    add_quantize(p)
    add_json(p, what="the scores as one JSON object")
    return p


def _translate_parser() -> argparse.ArgumentParser:
    from qkv.cli._options import positive_float

    p = Parser(prog="qkv translate")
    p.add_argument(
        "checkpoint",
        help="a run directory or one of its checkpoints, or a Hugging Face Marian folder",
    )
    p.add_argument(
        "sentences",
        nargs="*",
        help="sentences to translate (default: one per line on standard input, read and "
        "translated batch by batch)",
    )
    p.add_argument(
        "--average",
        type=positive_int,
        help="average the last N checkpoints (default: the preset's)",
    )
    search = p.add_argument_group("decoding")
    search.add_argument(
        "--beam",
        type=positive_int,
        help="hypotheses kept per sentence by beam search; 1 is greedy decoding "
        "(default: 4, or 1 with --sample)",
    )
    search.add_argument(
        "--length-penalty",
        type=non_negative_float,
        help="the beam's length penalty exponent alpha, favouring longer translations "
        "(0: none; default: 0.6, or 1.0 as transformers' generate for a Marian model)",
    )
    search.add_argument(
        "--max-length",
        type=positive_int,
        help="the most tokens of a translation, end of sentence included (default: the "
        "sentence's own length + 50, within the model's positions)",
    )
    search.add_argument(
        "--n-best",
        type=positive_int,
        metavar="N",
        help="print the N best translations of the beam with their scores, at most --beam; "
        "text: LINE<TAB>SCORE<TAB>TRANSLATION lines, best first",
    )
    sampling = p.add_argument_group("sampling (instead of a search for the most probable)")
    sampling.add_argument(
        "--sample",
        action="store_true",
        help="draw each token at random from the model's distribution (one beam)",
    )
    sampling.add_argument(
        "--temperature",
        type=positive_float,
        help="divide the log-probabilities by this: below 1 sharper, above 1 more varied "
        "(default: 1)",
    )
    sampling.add_argument(
        "--top-k",
        type=positive_int,
        help="draw only from the K most probable tokens (default: all)",
    )
    sampling.add_argument(
        "--top-p",
        type=positive_float,
        help="draw only from the most probable tokens that together reach this probability, "
        "in (0, 1] (nucleus sampling; default: 1, all)",
    )
    sampling.add_argument(
        "--seed",
        type=non_negative_int,
        help="seed of the random draws: the same seed, input and --batch-size give the same "
        "output (stdin is then read in full batches only; default: random)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="translate this many lines together; standard input goes in batches as they "
        "are read, a smaller one when no more input comes for a moment",
    )
    add_json(p, what="one JSON object per input line")
    add_inference_options(p)
    add_quantize(p)
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="on a CUDA device, run every decoder step as separate kernels instead of "
        "replaying it as a captured CUDA graph (the default there)",
    )
    return p


def _test_pairs(
    translator: Any, test: str | None, data: str | None, skip: bool, split: str = "test"
) -> Any:
    """The pairs to score and a name for them: ``test`` (a TSV), else the run's own
    ``split`` (test or valid): the user's files it recorded, or the dictionary's
    (``data``, else the run's)."""
    from pathlib import Path

    from qkv.data.parallel import ParallelData, ParallelFile
    from qkv.data.translation import load_translation

    record = translator.data or {}
    if test is not None:
        file = ParallelFile.tsv_file(test)
        file.check("test file (--test)")
        return file.pairs(skip_bad_lines=skip), str(file.name)
    if record.get("kind") == "parallel":
        if data is not None:
            raise ValueError(
                "--data is the German-English dictionary; this run was trained on "
                f"{ParallelFile.from_record(record['train']).name}: pass --test FILE"
            )
        own = ParallelData.from_record(record)
        chosen = own.test if split == "test" else own.valid
        for file in (chosen, own.train):
            for path in file.paths if file is not None else ():
                if not Path(path).is_file():
                    raise FileNotFoundError(
                        f"{path}: the run's test data is gone; pass --test FILE"
                    )
        where = chosen.name if chosen is not None else f"{own.train.name} ({split} split)"
        return own.pairs(split), where
    if data is None and record.get("kind") == "dictionary" and record.get("path"):
        data = record["path"]
    corpus = load_translation(data, direction=translator.direction)
    if split == "valid":
        return corpus.valid, f"{corpus.path} (valid split)"
    return corpus.test, str(corpus.path)


def _report(
    translator: Any,
    pairs: Any,
    where: str,
    *,
    beam: int,
    length_penalty: float | None,
    limit: int | None,
    examples: int,
    json: bool = False,
    label: str = "test set",
) -> None:
    import itertools

    from qkv.tasks.translation import evaluate_test

    if length_penalty is None:
        length_penalty = translator.default_length_penalty

    pairs = list(itertools.islice(pairs, limit))
    start = time.perf_counter()
    scores, hypotheses = evaluate_test(
        translator, pairs, beam_size=beam, length_penalty=length_penalty
    )
    seconds = time.perf_counter() - start
    n = len(hypotheses)
    if json:
        print_json(
            {
                "bleu": scores["bleu"],
                "chrf": scores["chrf"],
                "bleu_multi": scores["bleu_multi"],
                "bleu_signature": scores["bleu_signature"],
                "bleu_multi_signature": scores["bleu_multi_signature"],
                "chrf_signature": scores["chrf_signature"],
                "sentences": n,
                "beam": beam,
                "length_penalty": length_penalty,
                "seconds": round(seconds, 3),
                "src_lang": translator.src_lang,
                "tgt_lang": translator.tgt_lang,
                "test": where,
            }
        )
        return
    print(f"{label}: {n} sentences ({where}), beam {beam}, decoded in {seconds:.1f} s")
    print(f"BLEU {scores['bleu']:.2f}   ({scores['bleu_signature']})")
    print(f"chrF {scores['chrf']:.2f}   ({scores['chrf_signature']})")
    if scores["bleu_multi"] != scores["bleu"]:
        print(
            f"BLEU {scores['bleu_multi']:.2f} with the references' '/' alternatives as "
            f"references   ({scores['bleu_multi_signature']})"
        )
    for (source, reference), hypothesis in list(zip(pairs, hypotheses, strict=False))[:examples]:
        print(f"\n  source     {source}\n  reference  {reference}\n  qkv        {hypothesis}")


def _own_data(options: argparse.Namespace) -> Any:
    """The user's corpus the options name, or None for the dictionary; ValueError for
    options that do not go together."""
    from qkv.data.parallel import ParallelData, ParallelFile

    pair = options.source_file is not None or options.target_file is not None
    own = options.train is not None or pair
    if options.train is not None and pair:
        raise ValueError("--train (a TSV) and --source-file/--target-file exclude each other")
    if pair and (options.source_file is None or options.target_file is None):
        raise ValueError("--source-file and --target-file go together (two aligned files)")
    if not own:
        for name in ("valid", "test", "src_lang", "tgt_lang", "skip_bad_lines"):
            if getattr(options, name):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} needs your own corpus (--train or --source-file)")
        return None
    if options.direction is not None or options.data is not None:
        flag = "--direction" if options.direction is not None else "--data"
        raise ValueError(
            f"{flag} is for the German-English dictionary; with --train or --source-file "
            "use --src-lang/--tgt-lang"
        )
    train = (
        ParallelFile.tsv_file(options.train)
        if options.train is not None
        else ParallelFile.aligned(options.source_file, options.target_file)
    )
    data = ParallelData(
        train,
        ParallelFile.tsv_file(options.valid) if options.valid else None,
        ParallelFile.tsv_file(options.test) if options.test else None,
        src_lang=options.src_lang or "src",
        tgt_lang=options.tgt_lang or "tgt",
        skip_bad_lines=options.skip_bad_lines,
    )
    for file, option in ((data.train, "--train"), (data.valid, "--valid"), (data.test, "--test")):
        if file is not None:
            file.check(f"file ({option})")
    return data


def _train(argv: list[str]) -> int:
    import torch

    from qkv.tasks.translation import PRESETS, load_translator, train_translator
    from qkv.train.distributed import is_main_process

    parser = _train_parser()
    options = parser.parse_args(argv)
    recipe = apply_set(
        parser, PRESETS[options.preset], options,
        {"train.max_steps": "steps", "model.src_vocab_size": "vocab_size"},
    )  # fmt: skip
    own = options.train is not None or options.source_file is not None
    if options.start_from is not None and own:
        # The Marian folder names its languages; the corpus need not repeat them.
        src_lang, tgt_lang = _marian_languages(options.start_from)
        options.src_lang = options.src_lang or src_lang
        options.tgt_lang = options.tgt_lang or tgt_lang
    data = _own_data(options)
    train_translator(
        options.run_dir,
        recipe,
        direction=options.direction or "de-en",
        data_path=options.data,
        data=data,
        resume=options.resume,
        max_steps=options.steps,
        limit=options.limit,
        vocab_size=options.vocab_size,
        start_from=options.start_from,
        back_translated=options.back_translated,
        device=options.device,
        seed=options.seed,
        progress=progress_option(options),
        **training_speed(options),
        **overwrite_option(train_translator, options.overwrite),
    )
    if not is_main_process():  # torchrun: the main process scores
        return 0
    # The test scoring runs where the training ran.
    where = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    translator = load_translator(options.run_dir, device=where)
    pairs, name = _test_pairs(translator, None, options.data, options.skip_bad_lines)
    _report(translator, pairs, name, beam=options.beam, length_penalty=None,
            limit=options.test_limit, examples=5)  # fmt: skip
    return 0


def _marian_languages(folder: str) -> tuple[str | None, str | None]:
    """``source_lang`` and ``target_lang`` of a Marian folder's tokenizer_config.json
    (None when absent or unreadable: the fine-tuning then reports the real problem)."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "tokenizer_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(config, dict):
        return None, None
    return config.get("source_lang") or None, config.get("target_lang") or None


def _eval(argv: list[str]) -> int:
    from qkv.tasks.translation import load_translator

    parser = _eval_parser()
    options = parser.parse_args(argv)
    if options.test is not None and options.split != "test":
        parser.error("--split chooses one of the run's own splits; --test names a file")
    where, dtype = inference_device(options)
    check_quantize(parser, options, where)
    translator = load_translator(
        options.checkpoint, average_last=options.average, device=where, dtype=dtype
    )
    translator.quantize = options.quantize
    pairs, name = _test_pairs(
        translator, options.test, options.data, options.skip_bad_lines, options.split
    )
    _report(translator, pairs, name, beam=options.beam, length_penalty=options.length_penalty,
            limit=options.limit, examples=options.examples, json=options.json,
            label="test set" if options.test is not None or options.split == "test"
            else "validation set")  # fmt: skip
    return 0


def _export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv translate export-hf")
    p.add_argument(
        "checkpoint",
        help="a run fine-tuned from a Marian folder (qkv translate train --from), or one of "
        "its checkpoints",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="the Hugging Face Marian folder to write (config.json, model.safetensors, "
        "the tokenizer files)",
    )
    p.add_argument(
        "--average",
        type=positive_int,
        help="average the last N checkpoints (default: the preset's)",
    )
    return p


def _export_hf(argv: list[str]) -> int:
    from qkv.convert.marian import save_pretrained
    from qkv.tasks.translation import load_translator

    options = _export_parser().parse_args(argv)
    check_new_folder(options.output)
    translator = load_translator(options.checkpoint, average_last=options.average)
    save_pretrained(translator, options.output)
    print(f"wrote {options.output}")
    return 0


def _translate(argv: list[str]) -> int:
    import logging
    import sys

    import torch

    from qkv.tasks.translation import load_translator

    parser = _translate_parser()
    options = parser.parse_intermixed_args(argv)
    # Usage errors before the model is loaded.
    if options.sample:
        if options.beam is not None and options.beam > 1:
            parser.error(f"--sample draws one translation: it cannot go with --beam {options.beam}")
        beam = 1
    else:
        for name in ("temperature", "top_k", "top_p", "seed"):
            if getattr(options, name) is not None:
                parser.error(f"--{name.replace('_', '-')} needs --sample")
        beam = 4 if options.beam is None else options.beam
    if options.top_p is not None and options.top_p > 1:
        parser.error(f"argument --top-p: must be in (0, 1], got {options.top_p}")
    n_best = options.n_best or 1
    if n_best > beam:
        what = "sampling draws one" if options.sample else f"the beam keeps {beam}"
        parser.error(f"--n-best {n_best} asks for more translations than {what} (--beam)")
    where, dtype = inference_device(options)
    check_quantize(parser, options, where)
    translator = load_translator(
        options.checkpoint, average_last=options.average, device=where, dtype=dtype
    )
    translator.quantize = options.quantize
    if options.no_cuda_graphs:
        translator.cuda_graphs = False
    logging.getLogger(__name__).info(
        "translating %s -> %s on %s", translator.src_lang, translator.tgt_lang, where
    )
    generator = None
    if options.seed is not None:
        generator = torch.Generator(device=translator.device).manual_seed(options.seed)
    settings = dict(
        beam_size=beam,
        length_penalty=options.length_penalty,
        n_best=n_best,
        batch_size=options.batch_size,
        max_length=options.max_length,
        sample=options.sample,
        temperature=1.0 if options.temperature is None else options.temperature,
        top_k=options.top_k,
        top_p=1.0 if options.top_p is None else options.top_p,
        generator=generator,
    )
    if options.sentences:
        batches: Any = (
            options.sentences[i : i + options.batch_size]
            for i in range(0, len(options.sentences), options.batch_size)
        )
    else:
        # Batches as they come: translated and printed one by one, so a pipe's reader
        # gets output while the input is still being written. Seeded sampling draws per
        # batch, so its batches must not depend on timing.
        wait = None if options.seed is not None else _STDIN_WAIT_S
        batches = _line_batches(options.batch_size, wait=wait)
    number = 0  # input lines so far
    for batch in batches:
        # Every input line gets an output line, a blank one for a blank line, so the
        # output stays aligned with the input.
        found = translator.candidates([line.strip() for line in batch], **settings)
        for source, candidates in zip(batch, found, strict=True):
            number += 1
            best = candidates[0] if candidates else None
            if options.json:
                record: dict[str, Any] = {
                    "source": source,
                    "translation": best.text if best else "",
                    "score": best.score if best else None,
                    "log_prob": best.log_prob if best else None,
                    "src_lang": translator.src_lang,
                    "tgt_lang": translator.tgt_lang,
                }
                if options.n_best is not None:
                    record["n_best"] = [
                        {"translation": c.text, "score": c.score, "log_prob": c.log_prob}
                        for c in candidates
                    ]
                print_json(record)
            elif options.n_best is not None:
                for c in candidates:
                    print(f"{number}\t{c.score:.4f}\t{c.text}")
            else:
                print(best.text if best else "")
        sys.stdout.flush()
    return 0


# How long standard input may stay silent before a partial batch is translated: a
# person typing, or a slow producer, gets each line's translation without waiting
# for --batch-size lines.
_STDIN_WAIT_S = 0.1


def _line_batches(size: int, *, wait: float | None) -> Any:
    """Standard input's lines, without their line ends, in lists of at most ``size``:
    each full list as soon as it is read; with ``wait`` (seconds), also the lines read
    so far whenever no more input comes for that long. UTF-8 is decoded line by line,
    so a bad byte is an error naming its line (lines before it are already out)."""
    import io
    import os
    import select
    import sys

    from qkv.data.textio import decode_line

    stream = sys.stdin
    binary = getattr(stream, "buffer", None)
    if binary is None:  # a text stream (as tests substitute for stdin)
        lines = [line.rstrip("\r\n") for line in stream]
        yield from (lines[i : i + size] for i in range(0, len(lines), size))
        return
    try:
        fd = binary.fileno()
        select.select([fd], [], [], 0)  # pipes on Windows cannot be polled
    except (OSError, ValueError, io.UnsupportedOperation):
        fd = None
    number = 0
    pending = b""
    lines = []
    while True:
        if fd is None:
            chunk = binary.readline()
        else:
            if lines and wait is not None and not select.select([fd], [], [], wait)[0]:
                yield lines
                lines = []
                continue
            # os.read returns what the pipe holds now (up to 64 KiB), not a full buffer.
            chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            number += 1
            lines.append(decode_line(raw.removesuffix(b"\r"), name="stdin", number=number))
        while len(lines) >= size:
            yield lines[:size]
            lines = lines[size:]
    if pending:  # a last line without its line end
        lines.append(decode_line(pending.removesuffix(b"\r"), name="stdin", number=number + 1))
    if lines:
        yield lines


def _back_translate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qkv translate back-translate")
    p.add_argument(
        "checkpoint",
        help="the reverse translator: a run (or Marian folder) that translates the "
        "target-language text into the source language (English->German for a "
        "German->English model)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="the synthetic pairs, translation<TAB>sentence per line (for train "
        "--back-translated)",
    )  # fmt: skip
    p.add_argument(
        "-i", "--input", metavar="FILE",
        help="the text to translate, one sentence per line (plain or .gz; blank lines "
        "skipped); default: the installed English Wikipedia lead sections and BBC News "
        "articles, cut into sentences",
    )  # fmt: skip
    p.add_argument(
        "--min-words", type=positive_int, default=4,
        help="with the installed text: the shortest sentence kept, in words",
    )  # fmt: skip
    p.add_argument(
        "--max-words", type=positive_int, default=25,
        help="with the installed text: the longest sentence kept, in words",
    )  # fmt: skip
    p.add_argument("--limit", type=positive_int, help="translate only the first N sentences")
    p.add_argument("--beam", type=positive_int, default=1, help="the beam size (1: greedy)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="sentences translated at once"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    add_inference_options(p)
    add_quantize(p)
    add_progress(p)
    return p


def _back_translate(argv: list[str]) -> int:
    from pathlib import Path

    from qkv.data.sentences import monolingual_sentences
    from qkv.data.textio import read_lines
    from qkv.tasks.translation import load_translator
    from qkv.tasks.translation.backtranslate import back_translate

    parser = _back_translate_parser()
    options = parser.parse_args(argv)
    if options.min_words > options.max_words:
        parser.error("--min-words is larger than --max-words")
    output = Path(options.output)
    if output.exists() and not options.overwrite:
        raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
    if not output.absolute().parent.is_dir():
        raise FileNotFoundError(f"{output.absolute().parent}: no such folder (--output)")
    where, dtype = inference_device(options)
    check_quantize(parser, options, where)
    reverse = load_translator(options.checkpoint, device=where, dtype=dtype)
    reverse.quantize = options.quantize
    if options.input is None:
        if reverse.src_lang != "en":
            raise ValueError(
                f"{options.checkpoint} translates from {reverse.src_lang!r}; the installed "
                "text is English: pass --input FILE with text in its source language"
            )
        sentences = monolingual_sentences(min_words=options.min_words, max_words=options.max_words)
    else:
        path = Path(options.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (--input)")
        sentences = [" ".join(line.split()) for line in read_lines(path) if line.strip()]
        if not sentences:
            raise ValueError(f"{path}: no sentences (the file is empty or blank)")
    sentences = sentences[: options.limit]
    start = time.perf_counter()
    written = back_translate(
        reverse, sentences, output, beam_size=options.beam, batch_size=options.batch_size,
        overwrite=options.overwrite, progress=progress_option(options),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(
        f"{output}: {written} synthetic pairs ({reverse.tgt_lang}<TAB>{reverse.src_lang}) "
        f"from {len(sentences)} sentences in {seconds:.0f} s"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    return dispatch(
        "translate",
        USAGE,
        {
            "train": _train,
            "eval": _eval,
            "export-hf": _export_hf,
            "back-translate": _back_translate,
        },
        list(args.args),
        default=_translate,
        default_parser=_translate_parser,
    )
