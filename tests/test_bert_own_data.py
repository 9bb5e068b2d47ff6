"""``qkv bert finetune --train FILE``: the user's own CSV, TSV and JSON Lines files, sentence
pairs, label names kept with the model, ``qkv bert classify --json``, and one clear line
for each kind of bad data.

The models are tiny BERTs from random weights with a vocabulary trained on the test's
own texts, fine-tuned for a few steps: the tests check the plumbing, not accuracy.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import random
import sys

import pytest
import torch

from qkv.cli import main
from qkv.data.labelled import LabelledFiles, read_labelled_file
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.tasks.bert.classify import TASK_FILE, Classifier, encode_texts

KEYWORDS = {
    "sport": ["football", "tennis", "goal", "match"],
    "tech": ["software", "computer", "chip", "internet"],
    "money": ["shares", "profit", "bank", "market"],
}
FILLER = ["the", "a", "today", "news", "report", "people", "said", "new", "big", "about"]


def examples(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (text, label) rows, each text holding a keyword of its class."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = sorted(KEYWORDS)[i % 3]
        words = [*rng.sample(FILLER, 4), rng.choice(KEYWORDS[label])]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path, rows, header=("text", "label")) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A small vocabulary of the tests' words (the --tokenizer of --from-scratch)."""
    directory = tmp_path_factory.mktemp("tok")
    texts = [t for t, _ in examples(90, 99)] + ["is this about a question answer yes no"]
    WordPieceTokenizer.train(texts * 3, vocab_size=200, min_frequency=1).save(directory)
    return directory


def scratch(tokenizer_dir, run_dir, *extra: str) -> list[str]:
    argv = ["bert", "finetune", "--from-scratch", "--preset", "tiny"]
    argv += ["--tokenizer", str(tokenizer_dir), "--run-dir", str(run_dir), "--no-progress"]
    argv += ["--epochs", "2", "--batch-size", "8", "--max-length", "32", "--lr", "1e-3"]
    return argv + list(extra)


@pytest.fixture(scope="module")
def csv_model(tokenizer_dir, tmp_path_factory):
    """A classifier fine-tuned from train/valid/test CSV files through the command line."""
    root = tmp_path_factory.mktemp("csv")
    for name, n, seed in (("train", 36, 0), ("valid", 9, 1), ("test", 12, 2)):
        write_csv(root / f"{name}.csv", examples(n, seed))
    argv = scratch(tokenizer_dir, root / "run", "--train", str(root / "train.csv"))
    argv += ["--valid", str(root / "valid.csv"), "--test", str(root / "test.csv")]
    argv += ["--set", "model.num_layers=1", "--set", "model.dropout=0.05"]
    assert main(argv) == 0
    return root


def test_csv_files_train_a_classifier_that_keeps_its_label_names(csv_model, capsys):
    results = json.loads((csv_model / "run" / "results.json").read_text())
    assert results["sizes"] == {"train": 36, "valid": 9, "test": 12}
    assert results["dataset"] == "train.csv"
    assert 0.0 <= results["test_accuracy"]["0"] <= 1.0
    model_dir = csv_model / "run" / "seed-0" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "money", "1": "sport", "2": "tech"}
    # The --set fields reached the model (the tiny preset has 2 layers, dropout 0.1).
    assert config["num_hidden_layers"] == 1 and config["hidden_dropout_prob"] == 0.05
    task = json.loads((model_dir / TASK_FILE).read_text())
    assert task["text_pair_column"] is None and task["label_names"] == ["money", "sport", "tech"]
    identity = json.loads((csv_model / "run" / "run.json").read_text())
    assert "train.csv" in json.dumps(identity)

    capsys.readouterr()
    texts = ["the football match", "new chip and software"]
    assert main(["bert", "classify", str(model_dir), "--json", "--device", "cpu", *texts]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == texts
    for record in records:
        assert list(record) == ["text", "label", "probabilities"]
        assert list(record["probabilities"]) == ["money", "sport", "tech"]
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)

    # The text output for people names the same labels; bf16 on the CPU runs too.
    assert main(["bert", "classify", str(model_dir), "--dtype", "bf16", "the goal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] in ("money", "sport", "tech")
    assert sorted(lines[1].split()[::2]) == ["money", "sport", "tech"]


def test_a_bad_model_field_is_refused_before_the_run_directory_is_made(
    tokenizer_dir, csv_model, tmp_path, capsys
):
    # Checked against the configuration the seeds would build (the tiny preset: 2 heads
    # of d_model 128), before anything is written.
    train = str(csv_model / "train.csv")
    for bad, named in (("model.num_heads=3", "num_heads (3) must divide"),
                       ("model.dropout=1.5", "dropout must be in [0, 1)")):  # fmt: skip
        argv = scratch(tokenizer_dir, tmp_path / "run", "--train", train, "--set", bad)
        assert main(argv) == 1
        assert named in capsys.readouterr().err
        assert not (tmp_path / "run").exists()
    # A checkpoint fixes the sizes of its weights (the fixture's model: 1 layer of 128).
    model_dir = str(csv_model / "run" / "seed-0" / "model")
    argv = ["bert", "finetune", "--model", model_dir, "--train", train, "--no-progress"]
    argv += ["--run-dir", str(tmp_path / "run"), "--set", "model.d_model=64"]
    assert main(argv) == 1
    assert "model.d_model=64: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_classify_scores_in_batches_and_keeps_the_input_order(csv_model, monkeypatch, capsys):
    model_dir = csv_model / "run" / "seed-0" / "model"
    texts = [t for t, _ in examples(7, 5)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    assert main(["bert", "classify", str(model_dir), "--json", "--batch-size", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == texts
    one_batch = Classifier.load(model_dir).logits(texts, batch_size=32)
    expected = one_batch.softmax(-1)
    for record, row in zip(records, expected, strict=True):
        got = torch.tensor(list(record["probabilities"].values()))
        torch.testing.assert_close(got, row, atol=1e-5, rtol=0)


def test_fp16_on_the_cpu_is_refused(csv_model, capsys):
    model_dir = csv_model / "run" / "seed-0" / "model"
    argv = ["bert", "classify", str(model_dir), "--dtype", "fp16", "--device", "cpu", "x"]
    assert main(argv) == 1
    assert "--dtype fp16 needs a GPU" in capsys.readouterr().err


def test_model_option_starts_from_a_checkpoint_folder(csv_model, tokenizer_dir, tmp_path, capsys):
    model_dir = csv_model / "run" / "seed-0" / "model"
    argv = ["bert", "finetune", "--model", str(model_dir), "--train", str(csv_model / "train.csv")]
    argv += ["--valid", str(csv_model / "valid.csv"), "--test", str(csv_model / "test.csv")]
    argv += ["--run-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
    argv += ["--max-length", "32", "--batch-size", "12"]
    assert main(argv) == 0
    assert f"train.csv from {model_dir}: train 36, test 12" in capsys.readouterr().out
    # Both the positional checkpoint and --model: a usage error.
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:3], str(model_dir), *argv[3:]])
    assert exit_info.value.code == 2
    assert "as an argument or as --model, not both" in capsys.readouterr().err


def test_a_classifier_with_other_labels_gets_a_new_head(csv_model, tmp_path):
    from qkv.convert.bert import from_pretrained

    start = csv_model / "run" / "seed-0" / "model"
    rows = [(text, "yes" if label == "sport" else "no") for text, label in examples(30, 7)]
    write_csv(tmp_path / "yes-no.csv", rows)
    write_csv(tmp_path / "yes-no-test.csv", rows[:6])
    argv = ["bert", "finetune", "--model", str(start), "--train", str(tmp_path / "yes-no.csv")]
    argv += [
        "--valid",
        str(tmp_path / "yes-no-test.csv"),
        "--test",
        str(tmp_path / "yes-no-test.csv"),
    ]
    argv += ["--run-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
    argv += ["--max-length", "32", "--lr", "1e-9"]  # the body barely moves
    assert main(argv) == 0
    model_dir = tmp_path / "run" / "seed-0" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "no", "1": "yes"}
    before, after = (
        from_pretrained(start, "classification"),
        from_pretrained(model_dir, "classification"),
    )
    assert after.classifier.weight.shape == (2, before.config.d_model)
    key = "bert.embeddings.segment.weight"
    torch.testing.assert_close(after.state_dict()[key], before.state_dict()[key], atol=1e-6, rtol=0)


def test_sentence_pairs_get_segment_ids_and_classify_splits_a_tab(
    tokenizer_dir, tmp_path, monkeypatch, capsys
):
    rows = []
    for i, (text, label) in enumerate(examples(40, 3)):
        rows.append({"question": "is this about " + label, "sentence": text, "gold": i % 2})
    write_jsonl(tmp_path / "pairs.jsonl", rows[:30])
    write_jsonl(tmp_path / "pairs-test.jsonl", rows[30:])
    seen = []
    # The module, not the function of the same name that qkv.tasks.bert exports.
    finetune_module = importlib.import_module("qkv.tasks.bert.finetune")

    def spy(tokenizer, texts, max_length):
        encoded = encode_texts(tokenizer, texts, max_length)
        seen.append((list(texts), encoded))
        return encoded

    monkeypatch.setattr(finetune_module, "encode_texts", spy)
    argv = scratch(tokenizer_dir, tmp_path / "run", "--train", str(tmp_path / "pairs.jsonl"))
    argv += ["--test", str(tmp_path / "pairs-test.jsonl"), "--label-column", "gold"]
    argv += ["--text-column", "question", "--text-pair-column", "sentence"]
    assert main(argv) == 0
    texts, encoded = seen[0]
    assert all(isinstance(t, tuple) and t[0].startswith("is this about") for t in texts)
    tok = WordPieceTokenizer.from_pretrained(tokenizer_dir)
    for row, (first, _) in enumerate(texts):
        # [CLS] first [SEP] in segment 0, then the pair and its [SEP] in segment 1.
        n_first = len(tok.encode_ids([first])[0]) + 2
        types = encoded.token_type_ids[row][encoded.attention_mask[row]]
        assert types[:n_first].eq(0).all() and types[n_first:].eq(1).all()
        assert types[n_first:].numel() > 1
        assert encoded.input_ids[row, n_first - 1] == tok.sep_id

    model_dir = tmp_path / "run" / "seed-0" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}  # numbers are label names
    assert Classifier.load(model_dir).pairs
    capsys.readouterr()
    stdin = "is this about sport\tthe football match\nis this about tech\tnew chip\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["bert", "classify", str(model_dir), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["text_pair"]) for r in records] == [
        ("is this about sport", "the football match"),
        ("is this about tech", "new chip"),
    ]
    assert list(records[0]) == ["text", "text_pair", "label", "probabilities"]
    assert list(records[0]["probabilities"]) == ["0", "1"]

    monkeypatch.setattr(sys, "stdin", io.StringIO("a\tb\nno tab here\n"))
    assert main(["bert", "classify", str(model_dir)]) == 1
    assert "stdin: line 2: this model classifies sentence pairs" in capsys.readouterr().err


def test_train_file_alone_is_split_by_hash_and_numbers_sort_as_numbers(tmp_path):
    from qkv.data.text import split_of

    rows = [(text, str([2, 10, 1][i % 3])) for i, (text, _) in enumerate(examples(60, 4))]
    rows.append(rows[0])  # a duplicate: dropped
    lines = ["text\tlabel"] + [f"{t}\t{y}" for t, y in rows]
    path = tmp_path / "data.tsv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    data = LabelledFiles(path).load()
    assert data.label_names == ("1", "2", "10")
    assert len(data.train) + len(data.valid) + len(data.test) == 60
    for part in ("train", "valid", "test"):
        assert all(split_of(text) == part for text, _ in getattr(data, part))
    assert data.valid and data.test

    # A given test file keeps the test bucket of the train file in train.
    write_csv(tmp_path / "test.csv", [("a goal", "10")])
    with_test = LabelledFiles(path, test=tmp_path / "test.csv").load()
    assert with_test.valid == data.valid
    assert len(with_test.train) == len(data.train) + len(data.test)
    assert with_test.test == (("a goal", data.label_names.index("10")),)


def test_csv_quoting_and_multiline_records(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,text,label\n1,"a, b ""c""",x\n2,"two\nlines",y\n3,,z\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"q\.csv: line 5: empty text in column 'text'"):
        read_labelled_file(path)
    path.write_text('id,text,label\n1,"a, b ""c""",x\n2,"two\nlines",y\n', encoding="utf-8")
    records = read_labelled_file(path)
    assert [(r.text, r.label, r.line) for r in records] == [
        ('a, b "c"', "x", 2),
        ("two\nlines", "y", 3),
    ]


BAD_DATA = [
    # (file name, contents, options, expected message after the file name)
    (
        "a.csv",
        "sentence,label\nhello,x\n",
        [],
        "a.csv: no text column 'text' (it has: 'sentence', 'label')",
    ),
    (
        "a.csv",
        "text,category\nhello,x\n",
        [],
        "a.csv: no label column 'label' (it has: 'text', 'category')",
    ),
    (
        "a.csv",
        "text,label\nhello,x\n",
        ["--text-pair-column", "b"],
        "a.csv: no text pair column 'b'",
    ),
    ("a.csv", "text,label\nhello,x\n  ,y\n", [], "a.csv: line 3: empty text in column 'text'"),
    ("a.csv", "text,label\nhello,x\nworld,\n", [], "a.csv: line 3: empty label"),
    ("a.csv", "text,label\nhello,x,extra\n", [], "a.csv: line 2: 3 fields, the header has 2"),
    ("a.csv", "", [], "a.csv: the file is empty"),
    ("a.csv", "text,label\n", [], "a.csv: no examples in the file"),
    ("a.tsv", "text\tlabel\nhi\tx\nhey\n", [], "a.tsv: line 3: 1 fields, the header has 2"),
    (
        "a.jsonl",
        '{"text": "hi", "label": "x"}\n{"text": "hey", "label": \n',
        [],
        "a.jsonl: line 2: not valid JSON",
    ),
    (
        "a.jsonl",
        '{"text": "hi", "label": "x"}\n\n["hey", "y"]\n',
        [],
        "a.jsonl: line 3: expected one JSON object per line, got an array",
    ),
    (
        "a.jsonl",
        '{"text": "hi", "label": "x"}\n{"txt": "hey", "label": "y"}\n',
        [],
        "a.jsonl: line 2: no text column 'text' (it has: 'txt', 'label')",
    ),
    (
        "a.jsonl",
        '{"text": "hi", "label": null}\n',
        [],
        "a.jsonl: line 1: the label must be a string or a number, got None",
    ),
    (
        "a.jsonl",
        '{"text": 5, "label": "x"}\n',
        [],
        "a.jsonl: line 1: column 'text' must hold a string, got 5",
    ),
    ("a.txt", "hello\n", [], "a.txt: unknown format; name the file .csv, .tsv, .jsonl or .json"),
]


@pytest.mark.parametrize(("name", "contents", "options", "message"), BAD_DATA)
def test_bad_data_is_one_line_naming_file_and_line(
    tmp_path, capsys, name, contents, options, message
):
    path = tmp_path / name
    path.write_text(contents, encoding="utf-8")
    argv = ["bert", "finetune", "--from-scratch", "--preset", "tiny", "--train", str(path)]
    argv += ["--run-dir", str(tmp_path / "run"), *options]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("qkv bert finetune: ") and err.count("\n") == 1
    assert f"{tmp_path}/{message}" in err
    assert not (tmp_path / "run").exists()  # nothing written before the data is checked


def finetune_in(tmp_path) -> list[str]:
    """``qkv bert finetune`` into a fresh folder (not the default one in the working folder)."""
    return ["bert", "finetune", "--run-dir", str(tmp_path / "run")]


def test_bytes_that_are_not_utf8_name_the_line(tmp_path, capsys):
    path = tmp_path / "a.csv"
    path.write_bytes(b"text,label\nhello,x\ncaf\xe9,y\n")
    assert main([*finetune_in(tmp_path), "--from-scratch", "--train", str(path)]) == 1
    assert f"{path}: line 3: not valid UTF-8 (byte 0xe9 at column 4)" in capsys.readouterr().err


def test_a_label_the_train_file_lacks_is_named(tmp_path, capsys):
    write_csv(tmp_path / "train.csv", examples(12, 0))
    write_csv(tmp_path / "valid.csv", [("a goal", "sport"), ("a bank", "finance")])
    argv = ["bert", "finetune", "--from-scratch", "--train", str(tmp_path / "train.csv")]
    argv += ["--valid", str(tmp_path / "valid.csv"), "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/valid.csv: line 3: label 'finance' is not in the train file" in err
    assert "(its labels: money, sport, tech)" in err
    assert not (tmp_path / "run").exists()


def test_too_few_examples_or_classes_are_refused_before_training(tmp_path, capsys):
    write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")])
    scratch_in = [*finetune_in(tmp_path), "--from-scratch", "--train"]
    assert main([*scratch_in, str(tmp_path / "one.csv")]) == 1
    assert "one.csv: every example has the label 'x'" in capsys.readouterr().err
    write_csv(tmp_path / "few.csv", [("a goal", "x"), ("a bank", "y")])
    assert main([*scratch_in, str(tmp_path / "few.csv")]) == 1
    err = capsys.readouterr().err
    assert "few.csv: the hash split left no" in err and "give --" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train", "a.csv", "--data", "tweets"], "--train reads your files"),
        (["--valid", "a.csv"], "--valid needs --train FILE"),
        (["--text-pair-column", "b"], "--text-pair-column needs --train FILE"),
        (["--from-scratch", "--model", "m"], "give a checkpoint or --from-scratch, not both"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bert", "finetune", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_progress_is_accepted_by_pretrain_and_finetune():
    from qkv.cli.bert import _finetune_parser, _pretrain_parser

    assert _pretrain_parser().parse_args(["--no-progress"]).no_progress
    assert _finetune_parser().parse_args(["--no-progress"]).no_progress
