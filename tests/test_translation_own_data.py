"""Translation on the user's own parallel corpus (qkv.data.parallel, ``qkv translate train
--train/--source-file``, ``qkv translate eval --test``): the readers, every bad-data case
with its message, the hash split, the compact ids, the languages and the vocabulary size
recorded in the run, resume refusing changed data, and the eval's JSON.

Every file is written here, a few hundred short pairs, and the model is the tiny preset
trained for two steps.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.cli import main
from qkv.data.batching import collate_pairs
from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID
from qkv.data.parallel import (
    EncodedPairs,
    EncodedPairsBuilder,
    ParallelData,
    ParallelFile,
    SkippedLines,
)
from qkv.tasks.translation import (
    PRESETS,
    Translator,
    encode_pairs,
    epoch_batches,
    load_translator,
    train_translator,
)
from qkv.tasks.translation.train import collate_encoded
from qkv.train.rundir import RunDirError

WORDS = ["chat", "chien", "pain", "livre", "train", "jardin", "soleil", "maison"]
ENGLISH = ["cat", "dog", "bread", "book", "train", "garden", "sun", "house"]


def pairs(n: int = 240) -> list[tuple[str, str]]:
    """n distinct French-English pairs."""
    return [
        (f"le {WORDS[i % 8]} numéro {i} est ici.", f"the {ENGLISH[i % 8]} number {i} is here.")
        for i in range(n)
    ]


def write_tsv(path: Path, rows: list[tuple[str, str]] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else f"{r[0]}\t{r[1]}" for r in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_aligned(folder: Path, rows: list[tuple[str, str]]) -> tuple[Path, Path]:
    source, target = folder / "corpus.fr", folder / "corpus.en"
    source.write_text("".join(f"{s}\n" for s, _ in rows), encoding="utf-8")
    target.write_text("".join(f"{t}\n" for _, t in rows), encoding="utf-8")
    return source, target


FAST = ["--preset", "tiny", "--steps", "2", "--vocab-size", "300", "--no-progress"]
FAST += ["--beam", "1", "--test-limit", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("corpus") / "fr-en.tsv", pairs())


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run") / "fr-en"
    argv = ["translate", "train", "--train", str(corpus), "--run-dir", str(run)]
    assert main([*argv, "--src-lang", "fr", "--tgt-lang", "en", *FAST]) == 0
    return run


# -- reading -------------------------------------------------------------------------------


def test_tsv_gz_and_two_files_give_the_same_pairs(tmp_path):
    rows = pairs(20)
    plain = ParallelFile.tsv_file(write_tsv(tmp_path / "a.tsv", rows))
    packed = ParallelFile.tsv_file(write_tsv(tmp_path / "a.tsv.gz", rows))
    source, target = write_aligned(tmp_path, rows)
    aligned = ParallelFile.aligned(source, target)
    assert list(plain.pairs()) == rows
    assert list(packed.pairs()) == rows
    assert list(aligned.pairs()) == rows
    # Gzipped source and target files too; sides are stripped of spaces and \r.
    (tmp_path / "s.gz").write_bytes(gzip.compress(b" eins \r\nzwei\n"))
    (tmp_path / "t.gz").write_bytes(gzip.compress(b"one\r\ntwo\n"))
    both = ParallelFile.aligned(tmp_path / "s.gz", tmp_path / "t.gz")
    assert list(both.pairs()) == [("eins", "one"), ("zwei", "two")]


BAD_TSV = [
    ("no tab here", "line 2: no tab between source and target"),
    ("a\tb\tc", "line 2: 2 tabs, expected one between source and target"),
    ("\tthe target", "line 2: empty source side"),
    ("la source\t  ", "line 2: empty target side"),
    ("", "line 2: empty line, expected source<TAB>target"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_TSV, ids=[p for _, p in BAD_TSV])
def test_a_bad_tsv_line_is_named(tmp_path, line, problem):
    path = write_tsv(tmp_path / "bad.tsv", ["un\tone", line, "deux\ttwo"])
    with pytest.raises(ValueError) as error:
        list(ParallelFile.tsv_file(path).pairs())
    assert str(error.value) == f"{path}: {problem}"
    skipped = SkippedLines()
    kept = list(ParallelFile.tsv_file(path).pairs(skip_bad_lines=True, skipped=skipped))
    assert kept == [("un", "one"), ("deux", "two")]
    assert skipped.counts == {str(path): 1} and skipped.first[str(path)] == problem


def test_non_utf8_is_named_with_line_and_column(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("un\tone\nzwölf\ttwelve\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv: line 2: not valid UTF-8 \(byte 0xf6 at "
                       r"column 3\)"):  # fmt: skip
        list(ParallelFile.tsv_file(path).pairs())
    source, target = tmp_path / "s.txt", tmp_path / "t.txt"
    source.write_text("un\ndeux\n")
    target.write_bytes(b"one\ntw\xffo\n")
    with pytest.raises(ValueError, match=r"t.txt: line 2: not valid UTF-8 \(byte 0xff"):
        list(ParallelFile.aligned(source, target).pairs())


def test_an_empty_side_in_two_files_names_the_file(tmp_path):
    source, target = write_aligned(tmp_path, [("un", "one"), ("deux", "two")])
    target.write_text("one\n \n")
    with pytest.raises(ValueError) as error:
        list(ParallelFile.aligned(source, target).pairs())
    assert str(error.value) == f"{target}: line 2: empty target side"
    skipped = SkippedLines()
    kept = list(ParallelFile.aligned(source, target).pairs(skip_bad_lines=True, skipped=skipped))
    assert kept == [("un", "one")] and skipped.counts == {str(target): 1}


def test_files_of_different_lengths_are_refused_even_when_skipping(tmp_path):
    source, target = write_aligned(tmp_path, pairs(5))
    target.write_text("".join(f"{t}\n" for _, t in pairs(7)))
    message = f"{source} has 5 lines but {target} has 7: the two files must be aligned"
    for skip in (False, True):
        with pytest.raises(ValueError, match=message):
            list(ParallelFile.aligned(source, target).pairs(skip_bad_lines=skip))


def test_the_hash_split_depends_on_the_sentence_only(tmp_path):
    rows = pairs(400)
    forward = ParallelData(ParallelFile.tsv_file(write_tsv(tmp_path / "a.tsv", rows)))
    backward = ParallelData(ParallelFile.tsv_file(write_tsv(tmp_path / "b.tsv", rows[::-1])))
    splits = {s: set(forward.pairs(s)) for s in ("train", "valid", "test")}
    assert sum(map(len, splits.values())) == 400 and all(splits.values())
    assert splits["test"] == set(backward.pairs("test"))
    assert set(forward.with_limit(100).pairs("test")) <= splits["test"]
    # With a valid file, the train file gives train and test only (95/5).
    valid = ParallelFile.tsv_file(write_tsv(tmp_path / "v.tsv", pairs(3)))
    with_valid = ParallelData(forward.train, valid)
    assert list(with_valid.pairs("valid")) == pairs(3)
    assert set(with_valid.pairs("train")) | set(with_valid.pairs("test")) == set(rows)


# -- compact ids ----------------------------------------------------------------------------


def test_encoded_pairs_are_flat_arrays_and_collate_like_lists():
    builder = EncodedPairsBuilder(vocab_size=300)
    sources, targets = [[5, 6, 7], [8], [9, 10]], [[11], [12, 13, 14, 15], [16, 17]]
    builder.add(sources[:2], targets[:2])
    builder.add(sources[2:], targets[2:])
    encoded = builder.build()
    assert isinstance(encoded, EncodedPairs) and len(encoded) == 3
    assert encoded.source_ids.dtype == np.uint16 and encoded.source_ids.shape == (6,)
    assert encoded.source_offsets.tolist() == [0, 3, 4, 6]
    assert [(s.tolist(), t.tolist()) for s, t in encoded] == list(
        zip(sources, targets, strict=True)
    )
    for indices in ([0], [2, 0, 1], [1, 1]):
        ours = collate_encoded(encoded, indices)
        expected = collate_pairs(
            [(sources[i], targets[i]) for i in indices], pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID
        )
        for name in ("src", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(ours, name), getattr(expected, name)), name
    assert EncodedPairsBuilder(vocab_size=70_000).dtype == np.int32


def test_encode_pairs_streams_a_generator_and_batches_cover_every_pair(run):
    translator = load_translator(run)
    encoded = encode_pairs((p for p in pairs(50)), translator.tokenizer, max_len=256)
    assert len(encoded) == 50
    assert encoded.nbytes < 50 * 2 * 40 * 2 + 2 * 51 * 8  # 2-byte ids + offsets
    batches = epoch_batches(encoded, max_tokens=200, seed=0)(0)
    assert sum(b.src.shape[0] for b in batches) == 50
    assert all(b.src.numel() <= 200 for b in batches)


# -- training on own data -------------------------------------------------------------------


def test_the_run_records_languages_vocab_and_data(run, corpus):
    identity = json.loads((run / "run.json").read_text())
    assert identity["src_lang"] == "fr" and identity["tgt_lang"] == "en"
    assert identity["direction"] == "fr-en"
    assert identity["model"]["src_vocab_size"] == 300
    assert identity["data"]["kind"] == "parallel"
    assert identity["data"]["train"]["tsv"]["path"] == str(corpus.absolute())
    assert identity["data"]["train"]["tsv"]["bytes"] == corpus.stat().st_size
    translator = load_translator(run)
    assert (translator.src_lang, translator.tgt_lang) == ("fr", "en")
    assert translator.data is not None and translator.data["kind"] == "parallel"
    assert translator.tokenizer.source.vocab_size <= 300


def test_vocab_size_is_honoured(tmp_path, corpus):
    small = PRESETS["tiny"].override({"train.max_steps": 1})
    data = ParallelData(ParallelFile.tsv_file(corpus))
    train_translator(tmp_path / "a", small, data=data, vocab_size=150, progress=False)
    translator = load_translator(tmp_path / "a")
    assert translator.tokenizer.source.vocab_size == 150
    assert translator.model.config.src_vocab_size == 150
    assert (translator.src_lang, translator.tgt_lang) == ("src", "tgt")  # the defaults


def test_old_runs_get_their_languages_from_the_direction(run):
    translator = load_translator(run)
    old = Translator(translator.model, translator.tokenizer, "en-de")
    assert (old.src_lang, old.tgt_lang, old.data) == ("en", "de", None)


def test_two_files_with_valid_and_test_files(tmp_path, capsys):
    source, target = write_aligned(tmp_path, pairs(120))
    valid = write_tsv(tmp_path / "valid.tsv", pairs(130)[120:125])
    test = write_tsv(tmp_path / "test.tsv.gz", pairs(140)[130:])
    argv = ["translate", "train", "--source-file", str(source), "--target-file", str(target)]
    argv += ["--valid", str(valid), "--test", str(test), "--run-dir", str(tmp_path / "run")]
    assert main([*argv, *FAST]) == 0
    out = capsys.readouterr().out
    assert f"test set: 4 sentences ({test})" in out  # --test-limit 4
    record = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert record["train"]["source"]["path"] == str(source)
    assert record["test"]["tsv"]["path"] == str(test)
    assert record["split"] == "hash of the source side: 100/0/0"


def test_bad_lines_stop_the_run_before_it_starts(tmp_path, capsys):
    bad = write_tsv(tmp_path / "bad.tsv", [*pairs(100), "no tab", *pairs(200)[100:]])
    run = tmp_path / "run"
    assert main(["translate", "train", "--train", str(bad), "--run-dir", str(run), *FAST]) == 1
    assert f"{bad}: line 101: no tab between source and target" in capsys.readouterr().err
    assert not run.exists() or not any(run.iterdir())  # nothing written


def test_skip_bad_lines_trains_and_reports_the_count(tmp_path, capsys, caplog):
    rows = [*pairs(100), "no tab", "\tno source", *pairs(200)[100:], "x\ty\tz"]
    bad = write_tsv(tmp_path / "bad.tsv", rows)
    argv = ["translate", "train", "--train", str(bad), "--run-dir", str(tmp_path / "run")]
    with caplog.at_level(logging.WARNING, logger="qkv.data.parallel"):
        assert main([*argv, "--skip-bad-lines", *FAST]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"{bad}: skipped 3 bad lines (the first: line 101: no tab between source and target)"
        in warnings
    )


def test_an_empty_corpus_is_an_error_not_a_run(tmp_path, capsys):
    empty = write_tsv(tmp_path / "empty.tsv", [])
    empty.write_bytes(b"")
    run = tmp_path / "run"
    argv = ["translate", "train", "--train", str(empty), "--run-dir", str(run), *FAST]
    assert main(argv) == 1
    assert f"{empty}: no sentence pairs (the corpus is empty)" in capsys.readouterr().err
    only_bad = write_tsv(tmp_path / "bad.tsv", ["no tab", "\t"])
    argv = ["translate", "train", "--train", str(only_bad), "--run-dir", str(run), *FAST]
    assert main([*argv, "--skip-bad-lines"]) == 1
    assert f"{only_bad}: no sentence pairs (the corpus is empty)" in capsys.readouterr().err
    assert not run.exists() or not any(run.iterdir())


def test_options_that_do_not_go_together(tmp_path, corpus, capsys):
    base = ["translate", "train", "--run-dir", str(tmp_path / "run"), *FAST]
    cases = [
        (["--train", str(corpus), "--direction", "en-de"], "--direction is for the German"),
        (["--train", str(corpus), "--source-file", str(corpus)], "exclude each other"),
        (["--source-file", str(corpus)], "--source-file and --target-file go together"),
        (["--valid", str(corpus)], "--valid needs your own corpus"),
        (["--train", str(tmp_path / "nope.tsv")], "nope.tsv: no such file (--train)"),
        (["--train", str(corpus), "--src-lang", "f r"], "--src-lang: 'f r' is not a language"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 1, extra
        assert message in capsys.readouterr().err


def test_resume_refuses_a_changed_data_file(tmp_path):
    path = write_tsv(tmp_path / "c.tsv", pairs())
    recipe = PRESETS["tiny"].override({"train.max_steps": 1, "model.src_vocab_size": 200,
                                       "model.tgt_vocab_size": 200})  # fmt: skip
    data = ParallelData(ParallelFile.tsv_file(path), src_lang="fr", tgt_lang="en")
    train_translator(tmp_path / "run", recipe, data=data, progress=False)
    result = train_translator(
        tmp_path / "run", recipe, data=data, resume=True, max_steps=2, progress=False
    )
    assert result.step == 2
    write_tsv(path, [*pairs()[:-1], ("le chat change.", "the cat changes.")])
    with pytest.raises(RunDirError, match=r"differs in data\.train\.tsv\.bytes: run \d+"):
        train_translator(tmp_path / "run", recipe, data=data, resume=True, max_steps=3,
                         progress=False)  # fmt: skip
    other = ParallelData(ParallelFile.tsv_file(path), src_lang="de", tgt_lang="en")
    write_tsv(path, pairs())
    with pytest.raises(RunDirError, match="src_lang: run fr, command de"):
        train_translator(tmp_path / "run", recipe, data=other, resume=True, max_steps=3,
                         progress=False)  # fmt: skip


# -- eval -----------------------------------------------------------------------------------


def test_eval_on_a_test_file_prints_json(run, tmp_path, capsys):
    test = write_tsv(tmp_path / "test.tsv", pairs(260)[240:])
    argv = ["translate", "eval", str(run), "--test", str(test), "--beam", "2", "--json"]
    assert main([*argv, "--device", "cpu", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert record["sentences"] == 20 and record["beam"] == 2
    assert record["test"] == str(test)
    assert (record["src_lang"], record["tgt_lang"]) == ("fr", "en")
    assert 0 <= record["bleu"] <= 100 and 0 <= record["chrf"] <= 100
    assert "nrefs:1" in record["bleu_signature"] and "nc:6" in record["chrf_signature"]
    assert record["seconds"] >= 0


def test_eval_without_test_uses_the_runs_own_split(run, corpus, capsys):
    expected = len(list(ParallelData(ParallelFile.tsv_file(corpus)).pairs("test")))
    assert main(["translate", "eval", str(run), "--beam", "1", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"test set: {expected} sentences ({corpus} (test split))" in out
    assert "reference  the " in out


def test_eval_when_the_runs_data_is_gone(tmp_path, capsys):
    path = write_tsv(tmp_path / "gone.tsv", pairs())
    recipe = PRESETS["tiny"].override({"train.max_steps": 1})
    data = ParallelData(ParallelFile.tsv_file(path))
    train_translator(tmp_path / "run", recipe, data=data, vocab_size=200, progress=False)
    path.unlink()
    assert main(["translate", "eval", str(tmp_path / "run"), "--beam", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: the run's test data is gone; pass --test FILE" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["translate", "eval", str(tmp_path / "run"), "--data", "x", "--beam", "1"]) == 1
    assert "--data is the German-English dictionary" in capsys.readouterr().err


def test_eval_test_file_with_a_bad_line(run, tmp_path, capsys):
    test = write_tsv(tmp_path / "t.tsv", [*pairs(3), "oops"])
    assert main(["translate", "eval", str(run), "--test", str(test), "--beam", "1"]) == 1
    assert f"{test}: line 4: no tab between source and target" in capsys.readouterr().err
    argv = ["translate", "eval", str(run), "--test", str(test), "--beam", "1", "--json"]
    assert main([*argv, "--skip-bad-lines"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 3
