"""``qkv translate RUN``: streaming standard input, decoding options (beam, length,
sampling, n-best), ``--json`` and ``--device``/``--dtype``, on a tiny translator
trained here for a few steps (its translations are poor but deterministic)."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.cli._options import add_quantize, check_quantize
from qkv.quantize import int8_unavailable
from qkv.tasks.translation import PRESETS, load_translator, train_translator

PAIRS = [
    ("Der Hund schläft im Garten.", "The dog is sleeping in the garden."),
    ("Die Katze trinkt die Milch.", "The cat is drinking the milk."),
    ("Ich gehe heute nach Hause.", "I am going home today."),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
]
RECIPE = PRESETS["tiny"].override(
    {
        "model.src_vocab_size": 300,
        "model.tgt_vocab_size": 300,
        "train.max_steps": 12,
        "train.warmup_steps": 4,
        "train.eval_every": 12,
        "train.checkpoint_every": 12,
        "average_last": 1,
    }
)
SENTENCES = ["Der Hund schläft.", "", "Ich gehe heute.", "Die Katze trinkt die Milch 7."]
# Short outputs keep every decode quick; the untrained model rarely ends on its own.
FAST = ["--max-length", "8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """About 7 s: 12 steps of the tiny preset on a few hundred pairs."""
    lines = [
        f"{de.replace('.', f' {n}.')} {{f}} :: {en.replace('.', f' {n}.')}\n"
        for n in range(40)
        for de, en in PAIRS
    ]
    data = tmp_path_factory.mktemp("ding") / "de-en"
    data.write_text("".join(lines), encoding="utf-8")
    run = tmp_path_factory.mktemp("translate-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_translator(run, RECIPE, data_path=data, bleu_sentences=4, progress=False)
    torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def translator(run_dir):
    return load_translator(run_dir)


def qkv(args: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(["--threads", "1", *args])
    return status, capsys.readouterr().out


def usage_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- Translator


def test_candidates_n_best_is_ordered_and_starts_with_the_translation(translator):
    sentences = [s for s in SENTENCES if s]
    best = translator.translate(sentences, beam_size=4, max_length=8)
    found = translator.candidates(sentences, beam_size=4, n_best=3, max_length=8)
    for text, kept in zip(best, found, strict=True):
        assert len(kept) == 3
        assert kept[0].text == text
        scores = [c.score for c in kept]
        assert scores == sorted(scores, reverse=True)
        assert all(c.log_prob <= c.score < 0 for c in kept)  # lp >= 1 shrinks |log_prob|
    assert translator.candidates(["", "  "], n_best=2) == [[], []]


def test_candidates_refuse_bad_combinations(translator):
    with pytest.raises(ValueError, match=r"n_best must be from 1 to beam_size \(2\), got 3"):
        translator.candidates(["Hallo."], beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="beam_size must be 1, got 4"):
        translator.candidates(["Hallo."], sample=True)


def test_max_length_bounds_the_output(translator):
    # One new token, eos counted: at most one word (BPE pieces of one word at most).
    out = translator.translate(SENTENCES, beam_size=1, max_length=1)
    assert all(len(text.split()) <= 1 for text in out)
    longer = translator.translate(SENTENCES, beam_size=1, max_length=8)
    assert any(len(text.split()) > 1 for text in longer)


def test_translator_sampling_is_reproducible(translator):
    def draw(seed: int, **kwargs) -> list[str]:
        generator = torch.Generator().manual_seed(seed)
        return translator.translate(
            SENTENCES, beam_size=1, sample=True, generator=generator, max_length=8, **kwargs
        )

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    greedy = translator.translate(SENTENCES, beam_size=1, max_length=8)
    assert draw(3, top_k=1) == greedy
    assert draw(4, top_p=1e-6) == greedy


# ---------------------------------------------------------------- the command, text


def test_stdin_gives_one_line_per_input_line_blank_kept(run_dir, translator, capsys, monkeypatch):
    lines = [SENTENCES[i % 4] for i in range(11)]
    status, out = qkv(
        ["translate", str(run_dir), "--beam", "1", "--batch-size", "3", *FAST],
        capsys, "\n".join(lines) + "\n", monkeypatch,
    )  # fmt: skip
    assert status == 0
    assert out.split("\n")[:-1] == translator.translate(lines, beam_size=1, max_length=8)
    assert out.count("\n") == 11
    assert [i for i, line in enumerate(out.split("\n")[:-1]) if not line] == [1, 5, 9]


def test_sentences_as_arguments_still_work(run_dir, translator, capsys):
    status, out = qkv(
        ["translate", str(run_dir), "Der Hund schläft.", "--beam", "2", *FAST], capsys
    )
    assert status == 0
    assert out == translator.translate(["Der Hund schläft."], beam_size=2, max_length=8)[0] + "\n"


def test_n_best_text_layout(run_dir, capsys):
    status, out = qkv(
        ["translate", str(run_dir), *SENTENCES[:3], "--beam", "3", "--n-best", "2", *FAST], capsys
    )
    assert status == 0
    rows = [line.split("\t") for line in out.splitlines()]
    # LINE<TAB>SCORE<TAB>TRANSLATION, best first; the blank sentence 2 has none.
    assert [r[0] for r in rows] == ["1", "1", "3", "3"]
    for first, second in (rows[0:2], rows[2:4]):
        assert float(first[1]) >= float(second[1])
        assert first[2] != second[2]


def test_sampling_with_a_seed_is_reproducible(run_dir, capsys):
    args = ["translate", str(run_dir), *SENTENCES, "--sample", *FAST]
    outputs = [qkv([*args, "--seed", seed], capsys)[1] for seed in ("1", "1", "2")]
    assert outputs[0] == outputs[1] != outputs[2]
    assert outputs[0].count("\n") == 4
    greedy = qkv(["translate", str(run_dir), *SENTENCES, "--beam", "1", *FAST], capsys)[1]
    sampled = qkv([*args, "--seed", "5", "--top-k", "1", "--temperature", "2"], capsys)[1]
    assert sampled == greedy


def test_usage_errors(run_dir, capsys):
    run = str(run_dir)
    cases = [
        (["--sample", "--beam", "2"], "--sample draws one translation: it cannot go with --beam 2"),
        (["--top-k", "5"], "--top-k needs --sample"),
        (["--top-p", "0.5"], "--top-p needs --sample"),
        (["--temperature", "0.7"], "--temperature needs --sample"),
        (["--seed", "1"], "--seed needs --sample"),
        (["--sample", "--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
        (["--sample", "--top-p", "0"], "argument --top-p: must be more than 0"),
        (["--sample", "--temperature", "0"], "argument --temperature: must be more than 0"),
        (["--sample", "--top-k", "0"], "argument --top-k: must be at least 1"),
        (["--beam", "2", "--n-best", "3"], "--n-best 3 asks for more translations than the beam"),
        (["--n-best", "5"], "--n-best 5 asks for more translations than the beam keeps 4"),
        (["--sample", "--n-best", "2"], "than sampling draws one"),
        (["--max-length", "0"], "argument --max-length: must be at least 1"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice"),
    ]
    for extra, message in cases:
        err = usage_error(["translate", run, "Hallo.", *extra], capsys)
        assert err.startswith("qkv translate: ") and message in err, (extra, err)


def test_fp16_on_the_cpu_is_one_line(run_dir, capsys):
    assert main(["translate", str(run_dir), "Hallo.", "--device", "cpu", "--dtype", "fp16"]) == 1
    assert "--dtype fp16 needs a GPU" in capsys.readouterr().err


def test_help_lists_every_option_with_a_sentence(capsys):
    with pytest.raises(SystemExit):
        main(["translate", "RUN", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--beam", "--length-penalty", "--max-length", "--n-best", "--sample", "--temperature",
        "--top-k", "--top-p", "--seed", "--batch-size", "--json", "--device", "--dtype",
        "--quantize",
    ):  # fmt: skip
        assert option in text, option
    assert "(default: 64)" in text and "(default: 4, or 1 with --sample)" in text


# ---------------------------------------------------------------- --json


def test_json_records(run_dir, translator, capsys):
    status, out = qkv(
        ["translate", str(run_dir), *SENTENCES, "--json", "--beam", "3", "--n-best", "2", *FAST],
        capsys,
    )
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    keys = {"source", "translation", "score", "log_prob", "src_lang", "tgt_lang", "n_best"}
    assert all(set(r) == keys for r in records)
    assert [r["source"] for r in records] == SENTENCES
    assert {(r["src_lang"], r["tgt_lang"]) for r in records} == {("de", "en")}
    expected = translator.translate(SENTENCES, beam_size=3, max_length=8)
    assert [r["translation"] for r in records] == expected
    blank = records[1]
    assert blank["translation"] == "" and blank["score"] is None and blank["n_best"] == []
    for r in (records[0], records[2], records[3]):
        assert len(r["n_best"]) == 2
        assert set(r["n_best"][0]) == {"translation", "score", "log_prob"}
        assert r["n_best"][0]["translation"] == r["translation"]
        assert r["n_best"][0]["score"] == r["score"] >= r["n_best"][1]["score"]
        assert math.isfinite(r["log_prob"]) and r["log_prob"] <= r["score"]


def test_json_without_n_best_has_no_n_best_key(run_dir, capsys):
    status, out = qkv(["translate", str(run_dir), "Hallo.", "--json", "--beam", "1", *FAST], capsys)
    record = json.loads(out)
    assert status == 0 and "n_best" not in record
    assert record["score"] == record["log_prob"]  # greedy: the score is the log-probability


# ---------------------------------------------------------------- --dtype


def test_bf16_translator_is_cast_on_load(run_dir):
    bf16 = load_translator(run_dir, dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "low_precision",
    [
        ["--dtype", "bf16"],
        pytest.param(
            ["--quantize", "int8"],
            marks=pytest.mark.skipif(
                int8_unavailable(torch.device("cpu")) is not None, reason="no int8 kernels"
            ),
        ),
    ],
    ids=["bf16", "int8"],
)
def test_low_precision_on_the_cpu_translates_like_fp32(run_dir, capsys, low_precision):
    args = ["translate", str(run_dir), *SENTENCES, "--json", "--beam", "1", *FAST]
    status, out = qkv([*args, "--device", "cpu", *low_precision], capsys)
    assert status == 0
    low = [json.loads(line) for line in out.splitlines()]
    full = [json.loads(line) for line in qkv(args, capsys)[1].splitlines()]
    assert len(low) == 4 and low[1]["translation"] == ""
    for a, b in zip(low, full, strict=True):
        if b["source"]:
            assert a["translation"].split()  # words, not an empty or broken line
            # Close to fp32's log-probability of its own translation (bf16 keeps ~3
            # digits, int8 weights ~2).
            assert a["log_prob"] == pytest.approx(b["log_prob"], rel=0.1)
            assert a["log_prob"] != b["log_prob"]  # it did run in low precision
    same = sum(a["translation"] == b["translation"] for a, b in zip(low, full, strict=True))
    assert same >= 3


@pytest.mark.skipif(int8_unavailable(torch.device("cpu")) is not None, reason="no int8 kernels")
def test_quantize_where_it_cannot_run_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser(prog="qkv translate")
    add_quantize(parser)
    options = parser.parse_args(["--quantize", "int8"])
    check_quantize(parser, options, torch.device("cpu"))  # runs here
    with pytest.raises(SystemExit) as stopped:
        check_quantize(parser, options, torch.device("cuda"))
    assert stopped.value.code == 2
    assert "--quantize int8: int8 weights run on a CPU only, not cuda" in capsys.readouterr().err
    assert "invalid choice: 'int4'" in usage_error(
        ["translate", "RUN", "--quantize", "int4"], capsys
    )


# ---------------------------------------------------------------- streaming


def stdin_from_pipe(monkeypatch, data: bytes) -> None:
    """Standard input as a real pipe holding ``data``, closed after it."""
    read, write = os.pipe()

    def writer() -> None:
        with open(write, "wb") as w:
            w.write(data)

    # A thread writes, as another process would: a pipe holds only so much.
    threading.Thread(target=writer, daemon=True).start()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(open(read, "rb")))  # noqa: SIM115


def test_a_large_input_through_a_pipe(run_dir, translator, capsys, monkeypatch):
    lines = [SENTENCES[i % 4] if i % 7 else "" for i in range(149)] + ["Ich gehe."]
    # Windows line ends, and a last line without one, are lines too.
    data = "\r\n".join(lines).encode()
    stdin_from_pipe(monkeypatch, data)
    status, out = qkv(["translate", str(run_dir), "--beam", "1", "--max-length", "3"], capsys)
    assert status == 0
    got = out.split("\n")[:-1]
    assert len(got) == 150
    assert [i for i, t in enumerate(got) if not t] == [i for i, s in enumerate(lines) if not s]
    assert got == translator.translate(lines, beam_size=1, max_length=3)


def test_bad_utf8_on_stdin_names_the_line(run_dir, capsys, monkeypatch):
    stdin_from_pipe(monkeypatch, b"Hallo.\n\xffoops\n")
    assert main(["translate", str(run_dir), "--beam", "1", *FAST]) == 1
    assert "stdin: line 2: not valid UTF-8 (byte 0xff at column 1)" in capsys.readouterr().err


def read_line(stream, deadline: float) -> bytes:
    """One line from a subprocess's stdout, failing the test at ``deadline``."""
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], "no output in time"
        byte = os.read(stream.fileno(), 1)
        assert byte, f"output ended early: {line!r}"
        line += byte
    return line


@pytest.mark.skipif(sys.platform == "win32", reason="select() on pipes")
def test_output_arrives_before_stdin_closes(run_dir, translator):
    # A batch of 64 lines would never fill here: a partial batch goes when stdin is
    # silent for a moment, so each line's translation comes while stdin is still open.
    command = [sys.executable, "-m", "qkv.cli", "--threads", "1", "translate", str(run_dir)]
    process = subprocess.Popen(
        [*command, "--beam", "1", *FAST],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    expected = translator.translate(SENTENCES, beam_size=1, max_length=8)
    try:
        deadline = time.monotonic() + 120  # the interpreter and torch start first
        for sentence, translation in zip(SENTENCES, expected, strict=True):
            process.stdin.write(sentence.encode() + b"\n")
            process.stdin.flush()
            assert read_line(process.stdout, deadline).decode() == translation + "\n"
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        assert process.stdout.read() == b""
        assert b"translating de -> en" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_seeded_sampling_from_stdin_is_batched_by_count_only(run_dir, capsys, monkeypatch):
    # With --seed the batches are full ones (never cut by timing), so stdin gives what
    # the same sentences as arguments give, batch for batch.
    lines = [s or "Wo ist der Bahnhof?" for s in SENTENCES] * 2
    args = ["--sample", "--seed", "7", "--batch-size", "3", *FAST]
    stdin_from_pipe(monkeypatch, ("\n".join(lines) + "\n").encode())
    status, piped = qkv(["translate", str(run_dir), *args], capsys)
    assert status == 0
    assert piped == qkv(["translate", str(run_dir), *lines, *args], capsys)[1]
    assert piped.count("\n") == 8
