"""The translation task end to end on a small Ding-format file: train, resume, load
(with checkpoint averaging), translate, score, and the ``qkv translate`` command.

The file is written here (a few dozen pairs repeated into a few hundred), so these
run without the Debian package; the real corpus is the benchmark's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.tasks.translation import PRESETS, load_translator, score, train_translator
from qkv.train.checkpoint import list_checkpoints

PAIRS = [
    ("Der Hund schläft im Garten.", "The dog is sleeping in the garden."),
    ("Die Katze trinkt die Milch.", "The cat is drinking the milk."),
    ("Ich gehe heute nach Hause.", "I am going home today."),
    ("Wir essen das Brot am Abend.", "We eat the bread in the evening."),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
    ("Er liest ein altes Buch.", "He is reading an old book."),
    ("Sie hat keine Zeit für uns.", "She has no time for us."),
    ("Wo ist der Bahnhof, bitte?", "Where is the station, please?"),
]

# Tiny and quick: a few steps of the tiny model, checkpoints every 4 steps.
RECIPE = PRESETS["tiny"].override(
    {
        "model.src_vocab_size": 300,
        "model.tgt_vocab_size": 300,
        "train.max_steps": 12,
        "train.warmup_steps": 4,
        "train.eval_every": 6,
        "train.checkpoint_every": 4,
        "average_last": 2,
    }
)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """A Ding-format file whose variants give a few hundred distinct sentence pairs."""
    lines = []
    for n in range(40):
        for de, en in PAIRS:
            # Vary a word so pairs stay distinct (the loader drops duplicates).
            de_n, en_n = de.replace(".", f" {n}."), en.replace(".", f" {n}.")
            lines.append(f"{de_n} {{f}} :: {en_n}\n")
    path = tmp_path_factory.mktemp("ding") / "de-en"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_file) -> Path:
    run = tmp_path_factory.mktemp("translate-run")
    torch.set_num_threads(1)
    train_translator(run, RECIPE, data_path=corpus_file, bleu_sentences=8, progress=False)
    return run


def test_training_writes_what_translating_needs(run_dir):
    assert (run_dir / "tokenizer.json").is_file()
    assert (run_dir / "metrics.csv").is_file()
    steps = [c.step for c in list_checkpoints(run_dir)]
    assert steps[-1] == RECIPE.train.max_steps
    meta = json.loads((list_checkpoints(run_dir)[-1].path / "meta.json").read_text())
    assert meta["family"] == "transformer-translation"
    assert meta["preset"]["average_last"] == 2
    # Validation ran mid-way and at the end: loss and BLEU logged.
    metrics = (run_dir / "metrics.csv").read_text()
    assert "valid_loss" in metrics and "valid_bleu" in metrics


def test_loaded_translator_translates_in_input_order(run_dir):
    translator = load_translator(run_dir, average_last=1)
    sentences = ["Der Hund schläft.", "Wo ist der Bahnhof 3, bitte?", "Ich gehe."]
    greedy = translator.translate(sentences, beam_size=1)
    assert len(greedy) == 3 and all(isinstance(t, str) for t in greedy)
    # One at a time gives the same (batched decoding is batch-invariant).
    assert [translator.translate([s], beam_size=1)[0] for s in sentences] == greedy
    beam = translator.translate(sentences, beam_size=3)
    assert len(beam) == 3


def test_averaging_uses_the_preset_default_and_differs_from_the_last(run_dir):
    last = load_translator(run_dir, average_last=1).model.state_dict()
    averaged = load_translator(run_dir).model.state_dict()  # the preset's 2
    name = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(last[name], averaged[name])
    with pytest.raises(ValueError, match="average_last"):
        load_translator(run_dir, average_last=0)


def test_resume_continues_to_a_larger_step_budget(tmp_path, corpus_file):
    short = RECIPE.override({"train.max_steps": 4})
    train_translator(tmp_path, short, data_path=corpus_file, bleu_sentences=4, progress=False)
    result = train_translator(
        tmp_path, short, data_path=corpus_file, resume=True, max_steps=8, progress=False
    )
    assert result.step == 8


def test_score_reports_bleu_chrf_and_signatures():
    scores = score(["The cat sat on the mat."], ["The cat sat on the mat."])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert "nrefs:1" in scores["bleu_signature"]


def test_translate_command_scores_and_translates(run_dir, corpus_file, capsys, monkeypatch):
    assert main(["translate", "eval", str(run_dir), "--data", str(corpus_file), "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "BLEU" in out and "chrF" in out and "reference" in out
    assert main(["translate", str(run_dir), "Der Hund schläft.", "--beam", "1"]) == 0
    assert capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Ich gehe.\nDie Katze.\n"))
    assert main(["translate", str(run_dir), "--beam", "1"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # a line per input, even an empty one
    # Options may also come between the sentences.
    assert main(["translate", str(run_dir), "Ich gehe.", "--beam", "1", "Die Katze."]) == 0
    assert capsys.readouterr().out.count("\n") == 2


def test_translate_command_errors_are_one_line(tmp_path, capsys):
    assert main(["translate", str(tmp_path / "missing"), "Hallo."]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    assert main(["translate", str(tmp_path), "Hallo."]) == 1  # a folder without checkpoints
    assert "neither a qkv checkpoint nor a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as unknown_option:  # argparse: usage and status 2
        main(["translate", "frobnicate", "--x"])
    assert unknown_option.value.code == 2
