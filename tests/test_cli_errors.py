"""The command line's contract on bad input: every expected failure is one line on
stderr naming the file or option at fault, exit status 1 (2 for a usage error), and
never a traceback; ``--debug`` shows the traceback.

Each case of :data:`CASES` runs through the real entry point, :func:`qkv.cli.main`,
in this process; a few also run end to end through ``.venv/bin/qkv``. The models
are tiny and untrained: the commands' handling of input is under test, not the answers.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from qkv.cli import main

QKV = Path(sys.executable).with_name("qkv")

# --- the models and files the cases read ---------------------------------------------------


def _translator(run: Path, steps: tuple[int, ...] = (1, 2)) -> Path:
    """A `qkv translate train` run directory: its tokenizer and two checkpoints, with
    room for 16 source positions (so long input must be cut)."""
    from qkv.data.bpe import PAD_ID, TranslationTokenizer
    from qkv.models.transformer import Transformer, TransformerConfig
    from qkv.train.checkpoint import save_checkpoint

    pairs = [("Der Hund aß das Futter.", "The dog ate the food."), ("Er war hungrig.", "He was.")]
    tokenizer = TranslationTokenizer.train(pairs * 2, vocab_size=200, min_frequency=1)
    tokenizer.save(run)
    n = tokenizer.source.vocab_size
    config = TransformerConfig.tiny(
        n, n, d_model=32, d_ff=64, share_embeddings=True, pad_id=PAD_ID, max_len=16
    )
    meta = {"family": "transformer-translation", "model_config": config.to_dict()}
    for step in steps:
        save_checkpoint(run, step, Transformer(config), {}, meta)
    return run


def _vit(run: Path) -> Path:
    from qkv.models.vit import ViT, ViTConfig
    from qkv.train.checkpoint import save_checkpoint

    config = ViTConfig.digits(patch_size=4)
    meta = {"family": "vit-classifier", "model_config": config.to_dict(), "max_value": 16}
    save_checkpoint(run, 1, ViT(config), {}, meta)
    return run


def _bert(folder: Path, *, head: bool, nan: bool = False) -> Path:
    """A Hugging Face BERT folder with a WordPiece tokenizer trained here; ``head``: a
    sequence classifier (with ``classifier.weight``), else the body only."""
    from qkv.convert.bert import save_pretrained
    from qkv.data.wordpiece import WordPieceTokenizer
    from qkv.models.bert import BertConfig, BertForSequenceClassification, BertModel

    texts = ["the dog ate the food because it was hungry", "shares fell after the results"]
    tokenizer = WordPieceTokenizer.train(texts * 4, vocab_size=120, min_frequency=1)
    config = BertConfig.tiny(
        vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, max_position_embeddings=16
    )
    model = BertForSequenceClassification(config, 2) if head else BertModel(config)
    if nan:
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
    save_pretrained(model, folder)
    tokenizer.save(folder)
    return folder


def _huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG of a few bytes that declares ``width`` x ``height`` pixels (far over Pillow's
    limit): a signature, a header chunk and an end chunk, no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def _bad_data(tmp: Path) -> dict[str, str]:
    """Data files with a byte that is not UTF-8 on line 2, and a CSV of the wrong kind."""
    corpus = tmp / "de-en-latin1"
    corpus.write_bytes("Der Hund schläft. :: The dog sleeps.\n".encode() + b"Gr\xfc\xdfe :: hi\n")
    bbc = tmp / "bbc"
    (bbc / "tech").mkdir(parents=True)
    (bbc / "tech" / "001.txt").write_bytes(b"Headline\n\x81\x8d broken\n")  # not cp1252 either
    (tmp / "wrong.csv").write_text("name,score\na,1\n")
    return {"corpus_latin1": str(corpus), "bbc_bad": str(bbc), "wrong_csv": str(tmp / "wrong.csv")}


def make_files(tmp: Path) -> dict[str, str]:
    """Write the models and files the cases read into ``tmp``; placeholder -> path, for
    the ``{...}`` in the cases' command lines (also used by benchmarks/reliability.py)."""
    from PIL import Image

    torch.manual_seed(0)
    (tmp / "text.png").write_text("not a picture")
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(tmp / "in.png")
    (tmp / "bad-json").mkdir()
    (tmp / "bad-json" / "config.json").write_text("{not json")
    broken = _bert(tmp / "broken-weights", head=True)
    (broken / "model.safetensors").write_bytes(b"\x00" * 20)
    _vit(tmp / "no-model-config")
    (meta,) = (tmp / "no-model-config").rglob("meta.json")
    meta.write_text(meta.read_text().replace('"model_config"', '"other"'))
    (tmp / "empty").mkdir()
    (_bert(tmp / "no-tokenizer", head=False) / "tokenizer.json").unlink()
    return {
        "tmp": str(tmp),
        "missing": str(tmp / "missing"),
        "empty": str(tmp / "empty"),
        "translator": str(_translator(tmp / "translator")),
        "vit": str(_vit(tmp / "vit")),
        "no_model_config": str(tmp / "no-model-config"),
        "bert": str(_bert(tmp / "bert-classifier", head=True)),
        "bert_body": str(_bert(tmp / "bert-body", head=False)),
        "bert_nan": str(_bert(tmp / "bert-nan", head=False, nan=True)),
        "broken_weights": str(broken),
        "bad_json": str(tmp / "bad-json"),
        "no_tokenizer": str(tmp / "no-tokenizer"),
        "text_file": str(tmp / "text.png"),
        "png": str(tmp / "in.png"),
        "huge_png": str(_huge_png(tmp / "huge.png")),
        **_bad_data(tmp),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return make_files(tmp_path_factory.mktemp("cli-errors"))


def run_main(argv: list[str], capsys, files: dict[str, str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``qkv ARGV``, placeholders filled in; argparse's
    SystemExit counts as the status it carries."""
    try:
        status = main([arg.format(**files) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- the table: command line, status, what stderr must name ------------------------------------

NON_UTF8 = b"Der Hund.\n\xff\xfe kaputt\n"

CASES = [
    # usage errors: status 2, the option named
    (["translate", "train", "--limit", "0"], 2, "--limit"),
    # --resume and --overwrite together: refused before any data is read or trained
    *[
        ([*command, "--resume", "--overwrite", "--run-dir", "{tmp}/both"], 2,
         "argument --overwrite: not allowed with argument --resume")
        for command in (["translate", "train"], ["vit", "train"], ["bert", "pretrain"],
                        ["bert", "finetune"], ["bert", "finetune-tokens"])
    ],
    (["translate", "train", "--limit", "-5"], 2, "--limit"),
    (["translate", "train", "--steps", "0"], 2, "--steps"),
    (["translate", "train", "--beam", "0"], 2, "--beam"),
    (["translate", "train", "--device", "gpu9"], 2, "--device"),
    (["translate", "train", "--device", "cuda:99"], 2, "--device"),
    (["translate", "train", "--set", "model.drop=0.3"], 2, "--set 'model.drop=0.3': expected"),
    (["translate", "train", "--set", "word_dropout"], 2, "FIELD one of"),
    (["translate", "train", "--set", "model.dropout=lots"], 2, "model.dropout takes float"),
    (["translate", "train", "--set", "alternatives=all"], 2, "takes one of keep, first, split"),
    (["translate", "train", "--set", "word_dropout=1.5"], 2, "word_dropout: expected 0 <= p < 1"),
    # Fields the job sets itself, and fields an option of the command sets: refused, not
    # silently replaced.
    (["translate", "train", "--set", "train.seed=3"], 2, "train.seed is set by the seed (--seed)"),
    (["translate", "train", "--set", "model.pad_id=3"], 2, "set by the BPE vocabulary"),
    (["translate", "train", "--steps", "9", "--set", "train.max_steps=3"], 2, "both set it"),
    (["vit", "train", "--set", "model.num_classes=3"], 2, "set by the data's classes"),
    (["vit", "train", "--set", "flip_p=often"], 2, "flip_p takes float"),
    (["vit", "train", "--set", "model.depth=3"], 2, "FIELD one of"),
    (["vit", "train", "--batch-size", "8", "--set", "batch_size=4"], 2, "--batch-size both"),
    (["bert", "finetune", "--set", "train.max_steps=9"], 2, "set by epochs (--epochs)"),
    (["bert", "finetune", "--lr", "3e-4", "--set", "train.lr=1e-4"], 2, "both set it"),
    (["bert", "finetune-tokens", "--train", "x", "--set", "model.vocab_size=9"], 2, "vocabulary"),
    (["bert", "pretrain", "--set", "eval_sequences=many"], 2, "eval_sequences takes int"),
    (["bert", "pretrain", "--steps", "9", "--set", "train.max_steps=3"], 2, "both set it"),
    # Values a job would only trip over after its run folder was made, or train into NaN.
    (["translate", "train", "--set", "average_last=0"], 2, "average_last (0)"),
    (["translate", "train", "--set", "label_smoothing=1.5"], 2, "label_smoothing: expected"),
    (["vit", "train", "--set", "flip_p=2"], 2, "flip_p (2.0) must be in [0, 1]"),
    (["vit", "train", "--set", "train.min_lr_factor=2"], 2, "min_lr_factor must be in [0, 1]"),
    (["vit", "train", "--set", "train.lr=inf"], 2, "lr must be finite"),
    (["vit", "train", "--set", "train.betas=0.9,1.5"], 2, "betas must be two numbers in [0, 1)"),
    (["bert", "finetune", "--set", "epochs=nan"], 2, "epochs must be positive, got nan"),
    (["bert", "finetune", "--set", "warmup_fraction=2"], 2, "warmup_fraction must be in [0, 1]"),
    (["bert", "finetune", "--max-length", "2"], 1, "max_length (2) leaves no room"),
    (["bert", "pretrain", "--set", "eval_sequences=0"], 2, "eval_sequences must be >= 1"),
    (["translate", "eval", "{translator}", "--limit", "-1"], 2, "--limit"),
    (["translate", "eval", "{translator}", "--beam", "0"], 2, "--beam"),
    (["translate", "eval", "{translator}", "--examples", "-2"], 2, "--examples"),
    (["translate", "{translator}", "Hallo.", "--length-penalty", "nan"], 2, "--length-penalty"),
    (["translate", "{translator}", "Hallo.", "--length-penalty", "inf"], 2, "--length-penalty"),
    (["translate", "{translator}", "Hallo.", "--length-penalty", "-1"], 2, "--length-penalty"),
    (["translate", "{translator}", "Hallo.", "--beam", "0"], 2, "--beam"),
    (["translate", "{translator}", "Hallo.", "--average", "0"], 2, "--average"),
    (["bert", "pretrain", "--batch-size", "0"], 2, "--batch-size"),
    (["bert", "pretrain", "--steps", "0"], 2, "--steps"),
    (["bert", "pretrain", "--lr", "nan"], 2, "--lr"),
    (["bert", "pretrain", "--device", "tpu"], 2, "--device"),
    (["bert", "finetune", "--epochs", "0"], 2, "--epochs"),
    (["bert", "finetune", "--epochs", "nan"], 2, "--epochs"),
    (["bert", "finetune", "--seeds", "-1"], 2, "--seeds"),
    (["bert", "finetune", "--limit", "0", "10", "all"], 2, "--limit"),
    (["bert", "finetune", "--attention-dropout", "1.5"], 2, "--attention-dropout"),
    (["embed", "--values", "-1", "hi"], 2, "--values"),
    (["vit", "train", "--batch-size", "0"], 2, "--batch-size"),
    (["vit", "train", "--steps", "0"], 2, "--steps"),
    (["vit", "train", "--limit", "-3"], 2, "--limit"),
    (["vit", "train", "--threads", "0"], 2, "--threads"),
    (["vit", "train", "--device", "cuda:7"], 2, "--device"),
    (["vit", "eval", "{vit}", "--limit", "0"], 2, "--limit"),
    (["vit", "classify", "{vit}", "digits:0", "--top", "0"], 2, "--top"),
    (["attention", "{translator}", "Hallo.", "--beam", "0"], 2, "--beam"),
    (["--threads", "0", "explain"], 2, "--threads"),
    (["vit", "fit"], 2, "fit"),
    # options that do not fit the model or the run: status 1, both sides named
    (["translate", "{translator}", "Hallo.", "--average", "5"], 1, "last 5 checkpoints"),
    (["attention", "{translator}", "Der Hund.", "--layer", "7"], 1, "--layer 7"),
    (["attention", "{translator}", "Der Hund.", "--head", "9"], 1, "--head 9"),
    (["attention", "{vit}", "{png}", "--layer", "99"], 1, "--layer 99"),
    (["attention", "{bert}", "the dog ate", "--lines", "zebra"], 1, "--lines 'zebra'"),
    (["attention", "{vit}", "{png}", "--kind", "cross"], 1, "--kind cross"),
    # files that are missing, damaged or of the wrong kind: status 1, the file named
    (["translate", "{missing}", "Hallo."], 1, "missing"),
    (["translate", "eval", "{empty}"], 1, "empty"),
    (["bert", "classify", "{missing}", "text"], 1, "missing"),
    (["bert", "classify", "{bert_body}", "text"], 1, "classification head"),
    (["bert", "classify", "{broken_weights}", "text"], 1, "model.safetensors"),
    (["embed", "--model", "{missing}", "hi"], 1, "missing"),
    (["embed", "--model", "{bad_json}", "hi"], 1, "config.json"),
    (["embed", "--model", "{bert_nan}", "hi"], 1, "model.safetensors: tensor"),
    (["attention", "{empty}", "text"], 1, "empty"),
    (["attention", "{vit}", "{text_file}"], 1, "text.png"),
    (["attention", "{vit}", "digits:360"], 1, "digits:360: no such test image (digits has 360"),
    (["attention", "{no_tokenizer}", "the dog"], 1, "tokenizer.json"),
    (["attention", "{bert}", " ".join(["the dog ate"] * 8)], 1, "max_position_embeddings"),
    (["vit", "classify", "{vit}", "{text_file}"], 1, "text.png"),
    (["vit", "classify", "{vit}", "{missing}.png"], 1, "missing.png"),
    (["vit", "eval", "{no_model_config}"], 1, "model_config"),
    (["explain", "--plot", "{text_file}/plot.png"], 1, "text.png"),
    (["vit", "classify", "{vit}", "{huge_png}"], 1, "{huge_png}: image too large"),
    (["attention", "{vit}", "{huge_png}"], 1, "{huge_png}: image too large"),
    # data files that are not UTF-8, or not the data set asked for: the file and line named
    (["translate", "eval", "{translator}", "--data", "{corpus_latin1}"], 1,
     "{corpus_latin1}: line 2: not valid UTF-8 (byte 0xfc at column 3)"),
    (["bert", "finetune", "--from-scratch", "--data-path", "{bbc_bad}", "--run-dir", "{tmp}/ft"],
     1, "001.txt: line 2: not valid UTF-8 (byte 0x81 at column 1)"),
    (["bert", "finetune", "--from-scratch", "--data", "tweets", "--data-path", "{wrong_csv}",
      "--run-dir", "{tmp}/ft"], 1, "{wrong_csv}: not the tweets CSV"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "status", "named"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_clear_line(argv, status, named, files, capsys):
    got, _, err = run_main(argv, capsys, files)
    assert got == status, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("qkv"), err
    assert named.format(**files) in err


STDIN_CASES = [
    (["translate", "{translator}", "--beam", "1"], "stdin: line 2: not valid UTF-8"),
    (["bert", "classify", "{bert}"], "stdin: line 2: not valid UTF-8"),
    (["embed", "--model", "{bert}"], "stdin: line 2: not valid UTF-8"),
]


@pytest.mark.parametrize(("argv", "named"), STDIN_CASES, ids=[c[0][0] for c in STDIN_CASES])
def test_input_that_is_not_utf8_names_the_line(argv, named, files, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(NON_UTF8)))
    status, _, err = run_main(argv, capsys, files)
    assert status == 1 and named in err and len(err.strip().splitlines()) == 1, err


def test_blank_input_lines_give_blank_output_lines(files, capsys, monkeypatch):
    text = "Der Hund.\n\n   \nEr war hungrig.\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    status, out, _ = run_main(["translate", "{translator}", "--beam", "1"], capsys, files)
    lines = out.split("\n")[:-1]
    assert status == 0 and len(lines) == 4 and lines[1] == lines[2] == "", out


def test_translator_answers_nothing_for_nothing_and_warns_on_long_input(files, caplog):
    from qkv.tasks.translation import load_translator

    translator = load_translator(files["translator"], average_last=1)
    long = " ".join(["Der Hund aß das Futter."] * 10)
    out = translator.translate(["", "   ", "Der Hund.", long], beam_size=1)
    assert out[:2] == ["", ""] and len(out) == 4
    assert "sentence 4 is" in caplog.text and "truncated" in caplog.text


def test_bert_warns_on_long_input(files, caplog):
    from qkv.tasks.bert import Classifier, SentenceEncoder

    long = " ".join(["the dog ate the food"] * 10)
    Classifier.load(files["bert"]).predict(["shares fell", long])
    assert "text 2 is" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    SentenceEncoder.load(files["bert"]).encode([long])
    assert "text 1 is" in caplog.text


def test_classify_with_nothing_to_classify(files, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\n\n")))
    status, _, err = run_main(["bert", "classify", "{bert}"], capsys, files)
    assert status == 1 and "no text to classify" in err


# --- interrupts, closed pipes, --debug, and the errors of other modules ------------------------


def _raising(error: BaseException):
    def run(args):
        raise error

    return run


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    monkeypatch.setattr("qkv.cli.explain.run", _raising(KeyboardInterrupt()))
    status, _, err = run_main(["explain"], capsys, {})
    assert status == 130 and err == "qkv explain: interrupted\n"


def test_training_interrupted_by_sigterm_is_status_143(capsys, monkeypatch):
    import signal

    from qkv.train.engine import TrainingInterrupted

    stopped = TrainingInterrupted(signal.SIGTERM, 7, None)
    monkeypatch.setattr("qkv.cli.explain.run", _raising(stopped))
    status, _, err = run_main(["explain"], capsys, {})
    assert status == 143 and err == "qkv explain: training stopped by SIGTERM after step 7\n"
    monkeypatch.setattr(
        "qkv.cli.explain.run", _raising(TrainingInterrupted(signal.SIGINT, 3, None))
    )
    assert run_main(["explain"], capsys, {})[0] == 130


def test_run_dir_error_is_one_line(capsys, monkeypatch):
    from qkv.train.rundir import RunDirError

    monkeypatch.setattr("qkv.cli.explain.run", _raising(RunDirError("runs/x holds a run")))
    status, _, err = run_main(["explain"], capsys, {})
    assert status == 1 and err == "qkv explain: runs/x holds a run\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr("qkv.cli.explain.run", _raising(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["explain"])


def test_debug_shows_the_traceback(files):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "translate", files["missing"], "Hallo."])


def test_closed_stdout_ends_quietly(capsys, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["explain"]) == 141
    assert capsys.readouterr().err == ""


def test_overwrite_is_passed_only_to_a_task_that_takes_it():
    from qkv.cli._options import overwrite_option

    def knows(run_dir, *, overwrite=False): ...

    def does_not(run_dir): ...

    assert overwrite_option(knows, True) == {"overwrite": True}
    assert overwrite_option(does_not, False) == {}
    with pytest.raises(ValueError, match="--overwrite"):
        overwrite_option(does_not, True)


# --- end to end, through the installed command -------------------------------------------------


def _qkv(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QKV), *argv], input=stdin.decode(), capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not QKV.exists(), reason="no installed qkv command")
def test_end_to_end_status_and_no_traceback(files):
    missing = _qkv("translate", files["missing"], "Hallo.")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    usage = _qkv("vit", "train", "--limit", "0")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr
    long = " ".join(["Der Hund aß das Futter."] * 10)
    warned = _qkv("translate", files["translator"], "--beam", "1", stdin=f"{long}\n".encode())
    assert warned.returncode == 0 and "truncated" in warned.stderr, warned.stderr
    assert warned.stdout.count("\n") == 1
    for result in (missing, usage, warned):
        assert "Traceback" not in result.stderr


@pytest.mark.skipif(not QKV.exists(), reason="no installed qkv command")
def test_output_into_a_closed_pipe_ends_quietly():
    result = subprocess.run(
        ["bash", "-c", f"'{QKV}' explain | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 141) and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "function"),
    [
        (["translate", "train", "--overwrite"], "qkv.tasks.translation:train_translator"),
        (["vit", "train", "--overwrite"], "qkv.tasks.vit:train_vit"),
        (["bert", "pretrain", "--overwrite"], "qkv.tasks.bert.pretrain:pretrain"),
    ],
)
def test_overwrite_reaches_the_task(argv, function, capsys, monkeypatch):
    """--overwrite arrives as ``overwrite=True``; the run directory's refusal is one line."""
    from qkv.train.rundir import RunDirError

    seen = {}

    def task(*args, overwrite=False, **kwargs):
        seen["overwrite"] = overwrite
        raise RunDirError("runs/x: refused")

    import importlib

    module, name = function.split(":")
    monkeypatch.setattr(importlib.import_module(module), name, task)
    status, _, err = run_main(argv, capsys, {})
    assert seen == {"overwrite": True} and status == 1 and err.endswith(": runs/x: refused\n")
