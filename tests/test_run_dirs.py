"""Run directories lose nothing: no silent overwrite, one writer, the run's identity checked
on resume, atomic files, kills at any moment resumed on the same loss curve, Ctrl-C that
checkpoints, corrupt pointers and bad weights caught (qkv.train.rundir and the engine).

The runs are the tiny translator on a small Ding-format file written here."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from qkv import Transformer, TransformerConfig
from qkv.data.toy import toy_batches
from qkv.tasks.translation import PRESETS, train_translator
from qkv.train import TrainConfig, Trainer, TrainingInterrupted, seq2seq_loss
from qkv.train import checkpoint as checkpoint_module
from qkv.train.checkpoint import latest_checkpoint, list_checkpoints, load_weights
from qkv.train.metrics import MetricsLog, read_metrics
from qkv.train.rundir import RunDirError, open_run_dir

STEPS = 8
RECIPE = PRESETS["tiny"].override(
    {
        "model.src_vocab_size": 200,
        "model.tgt_vocab_size": 200,
        "model.d_model": 32,
        "model.d_ff": 64,
        "train.max_steps": STEPS,
        "train.warmup_steps": 4,
        "train.eval_every": 0,
        "train.checkpoint_every": 2,
        "train.log_every": 1,
        "train.keep_checkpoints": 2,
    }
)
PAIRS = [
    ("Der Hund schläft im Garten.", "The dog is sleeping in the garden."),
    ("Die Katze trinkt die Milch.", "The cat is drinking the milk."),
    ("Ich gehe heute nach Hause.", "I am going home today."),
    ("Er liest ein altes Buch.", "He is reading an old book."),
]


def write_corpus(path: Path) -> Path:
    """A small Ding-format file of 120 numbered sentence pairs at ``path``."""
    lines = [
        f"{de.replace('.', f' {n}.')} {{f}} :: {en.replace('.', f' {n}.')}\n"
        for n in range(30)
        for de, en in PAIRS
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("ding") / "de-en")


def _train(run: Path, corpus: Path, recipe=RECIPE, **options):
    return train_translator(
        run, recipe, data_path=corpus, bleu_sentences=2, progress=False, **options
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("finished")
    _train(run, corpus)
    return run


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _losses(run: Path) -> list[tuple[int, float]]:
    return read_metrics(run / "metrics.csv")["train_loss"]


# -- refusing, overwriting, validating first ----------------------------------------------


def test_a_finished_run_is_refused_without_resume_and_left_byte_for_byte(copy, corpus):
    before = _snapshot(copy)
    with pytest.raises(
        RunDirError, match=r"holds a run \(checkpoints up to step 8\); pass --resume"
    ):
        _train(copy, corpus)
    assert _snapshot(copy) == before
    assert "run.json" in before and "run.lock" not in before


def test_the_refusal_comes_before_the_corpus_is_read(copy, corpus, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the corpus was read before the folder was checked")

    monkeypatch.setattr("qkv.tasks.translation.train.load_translation", never)
    with pytest.raises(RunDirError, match=r"holds a run \(checkpoints up to step 8\)"):
        _train(copy, corpus)


def test_a_corpus_without_validation_pairs_is_refused_before_anything_is_written(tmp_path, corpus):
    # Five pairs leave the hash split's validation part empty: its loss and BLEU would be
    # those of nothing (sacreBLEU raised on the empty list, after run.json was written).
    with pytest.raises(ValueError, match="no validation pairs .*--limit 5 is too small"):
        _train(tmp_path / "run", corpus, limit=5)
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_run_and_keeps_other_files(copy, corpus):
    (copy / "notes.txt").write_text("mine")
    (copy / "checkpoints" / "step-00000099").mkdir()  # of the old run: must go
    result = _train(copy, corpus, max_steps=2, overwrite=True)
    assert result.step == 2
    assert [c.step for c in list_checkpoints(copy)] == [2]
    assert not (copy / "checkpoints" / "step-00000099").exists()
    assert [s for s, _ in _losses(copy)] == [1, 2]
    assert (copy / "notes.txt").read_text() == "mine"
    assert json.loads((copy / "run.json").read_text())["train"]["max_steps"] == 2


def test_resume_and_overwrite_together_and_bad_options_fail_before_any_file(tmp_path, corpus):
    with pytest.raises(RunDirError, match="exclude each other"):
        _train(tmp_path / "a", corpus, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="max_steps"):
        _train(tmp_path / "b", corpus, max_steps=0)
    with pytest.raises(FileNotFoundError):
        _train(tmp_path / "c", tmp_path / "no-such-corpus")
    assert list(tmp_path.iterdir()) == []


# -- identity on resume -------------------------------------------------------------------


def test_resume_with_another_model_is_refused_naming_the_field(copy, corpus):
    before = _snapshot(copy)
    other = RECIPE.override({"model.d_model": 48})
    with pytest.raises(RunDirError, match=r"model\.d_model: run 32, command 48"):
        _train(copy, corpus, other, resume=True)
    assert _snapshot(copy) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipe": RECIPE.override({"train.lr": 5e-3})}, r"train\.lr: run 0\.002, command 0\.005"),
        (
            {"recipe": RECIPE.override({"label_smoothing": 0.0})},
            r"label_smoothing: run 0\.1, command 0\.0",
        ),
        ({"direction": "en-de"}, r"direction: run de-en, command en-de"),
        ({"limit": 50}, r"data\.limit: run None, command 50"),
    ],
    ids=["training setting", "recipe field", "direction", "data"],
)
def test_resume_with_another_recipe_direction_or_data_is_refused(copy, corpus, change, message):
    before = _snapshot(copy)
    options = dict(change)
    recipe = options.pop("recipe", RECIPE)
    with pytest.raises(RunDirError, match=message):
        _train(copy, corpus, recipe, resume=True, **options)
    assert _snapshot(copy) == before


def test_resume_with_only_max_steps_changed_continues(copy, corpus):
    result = _train(copy, corpus, resume=True, max_steps=10)
    assert result.step == 10
    assert [s for s, _ in _losses(copy)] == list(range(1, 11))
    assert json.loads((copy / "run.json").read_text())["train"]["max_steps"] == 10


def test_resume_without_the_tokenizer_is_refused(copy, corpus):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(RunDirError, match="without its tokenizer.json"):
        _train(copy, corpus, resume=True)
    assert not (copy / "tokenizer.json").exists()


def test_resume_with_a_changed_tokenizer_is_refused(copy, corpus):
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzzz"] = len(tokenizer["model"]["vocab"])
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(RunDirError, match="tokenizer_sha256: run"):
        _train(copy, corpus, resume=True)


# -- the lock -----------------------------------------------------------------------------


def _write_lock(folder: Path, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lock = {"pid": pid, "host": socket.gethostname(), "started": time.time()}
    (folder / "run.lock").write_text(json.dumps(lock))


def test_a_lock_held_by_a_live_process_refuses(tmp_path, corpus):
    owner = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, owner.pid)
        with pytest.raises(RunDirError, match=f"pid {owner.pid} on {socket.gethostname()}"):
            _train(tmp_path, corpus)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
    finally:
        owner.kill()
        owner.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    with open_run_dir(tmp_path, resume=False, overwrite=False, identity={"task": "t"}):
        lock = json.loads((tmp_path / "run.lock").read_text())
        assert lock["pid"] == os.getpid()
        # A second writer in the meantime is refused at once.
        again = open_run_dir(tmp_path, resume=True, overwrite=False, identity={"task": "t"})
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"), again:
            pass
    assert "no longer running" in caplog.text
    assert not (tmp_path / "run.lock").exists()


def test_the_lock_goes_on_an_error_and_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".tokenizer.json.x1.tmp").write_text("{")
    (tmp_path / "checkpoints" / ".tmp-step-00000004-abc").mkdir(parents=True)
    opened = open_run_dir(tmp_path, resume=False, overwrite=False, identity={"task": "t"})
    with pytest.raises(KeyError), opened:
        assert not (tmp_path / ".tokenizer.json.x1.tmp").exists()
        assert not (tmp_path / "checkpoints" / ".tmp-step-00000004-abc").exists()
        raise KeyError("boom")
    assert not (tmp_path / "run.lock").exists()


# -- kills at any moment ------------------------------------------------------------------

# A training that SIGKILLs itself at a chosen moment ("kind:target"):
#   replace:NAME  when os.replace is about to put NAME (a file or checkpoint folder) in place;
#   metrics:N     right after the metrics rows of step N are written;
#   row:N         halfway through writing a metrics.csv row of step N;
#   write:NAME    halfway through Path.write_text of NAME (a checkpoint's meta.json);
#   lock          right after the lock is taken, before anything else is written;
#   eval          during the evaluation at the end of training (before the last checkpoint).
KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
run, corpus, moment, resume, recipe = sys.argv[1:6]
import qkv.train.metrics as metrics
from qkv.tasks.translation import train_translator

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kind, _, target = moment.partition(":")
if kind == "replace":
    real_replace = os.replace
    def replace(src, dst):
        if os.path.basename(dst) == target:
            die()
        real_replace(src, dst)
    os.replace = replace
elif kind == "metrics":
    real_log = metrics.MetricsLog.log
    def log(self, step, **values):
        real_log(self, step, **values)
        if step == int(target):
            die()
    metrics.MetricsLog.log = log
elif kind == "row":
    real_write = os.write
    def write(fd, data):
        if data.startswith(f"{target},".encode()):
            real_write(fd, data[: len(data) // 2])
            die()
        return real_write(fd, data)
    os.write = write
elif kind == "write":
    import pathlib
    real_write_text = pathlib.Path.write_text
    def write_text(self, text, *args, **kwargs):
        if self.name == target:
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            die()
        return real_write_text(self, text, *args, **kwargs)
    pathlib.Path.write_text = write_text
elif kind == "lock":
    import qkv.train.rundir as rundir
    real_acquire = rundir._acquire
    def acquire(lock):
        real_acquire(lock)
        die()
    rundir._acquire = acquire
elif kind == "eval":
    import importlib
    task = importlib.import_module("qkv.tasks.translation.train")
    def score(*args, **kwargs):
        die()
    task.score = score
recipe = eval(recipe)  # the test's own expression: PRESETS['tiny'].override({...})
train_translator(run, recipe, data_path=corpus, bleu_sentences=2, progress=False,
                 resume=resume == "1")
"""


def _subprocess_train(run: Path, corpus: Path, moment: str, resume: bool) -> int:
    recipe = "__import__('qkv.tasks.translation', fromlist=['PRESETS']).PRESETS['tiny'].override("
    recipe += repr(_overrides()) + ")"
    process = subprocess.run(
        [sys.executable, "-c", KILLER, str(run), str(corpus), moment, str(int(resume)), recipe],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return process.returncode


def _overrides() -> dict:
    return {
        "model.src_vocab_size": 200, "model.tgt_vocab_size": 200, "model.d_model": 32,
        "model.d_ff": 64, "train.max_steps": STEPS, "train.warmup_steps": 4,
        "train.eval_every": 0, "train.checkpoint_every": 2, "train.log_every": 1,
        "train.keep_checkpoints": 2,
    }  # fmt: skip


def _assert_whole_lines(run: Path) -> None:
    text = (run / "metrics.csv").read_text()
    assert text.endswith("\n")
    assert all(len(line.split(",")) == 4 for line in text.splitlines())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> list[tuple[int, float]]:
    run = tmp_path_factory.mktemp("reference")
    assert _subprocess_train(run, corpus, "none", resume=False) == 0
    return _losses(run)


# The moments killed: by default, and in the slow set (-m slow).
KILLS = {
    "during-the-tokenizer-write": "replace:tokenizer.json",
    "during-a-checkpoint-write": "replace:step-00000004",
    "between-checkpoints": "metrics:5",
}
SLOW_KILLS = {
    "during-the-latest-write": "replace:latest",
    "during-the-run.json-write": "replace:run.json",
    "after-the-first-step": "metrics:1",
    "after-the-last-checkpoint-but-one": "metrics:7",
    "during-a-checkpoint-meta.json-write": "write:meta.json",
    "during-a-metrics.csv-row-write": "row:5",
    "right-after-the-lock-is-taken": "lock",
    "during-the-final-evaluation": "eval",
    "during-the-last-checkpoint-write": "replace:step-00000008",
    "after-the-third-step": "metrics:3",
}


@pytest.mark.parametrize("moment", list(KILLS.values()), ids=list(KILLS))
def test_a_killed_run_resumes_on_the_same_loss_curve(tmp_path, corpus, reference, moment):
    assert _subprocess_train(tmp_path, corpus, moment, resume=False) == -signal.SIGKILL
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] > 0  # left behind
    if (tmp_path / "metrics.csv").exists():
        _assert_whole_lines(tmp_path)
    assert _subprocess_train(tmp_path, corpus, "none", resume=True) == 0
    assert _losses(tmp_path) == reference
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))
    _assert_whole_lines(tmp_path)
    assert not (tmp_path / "run.lock").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(SLOW_KILLS.values()), ids=list(SLOW_KILLS))
def test_more_kills_resume_on_the_same_loss_curve(tmp_path, corpus, reference, moment):
    assert _subprocess_train(tmp_path, corpus, moment, resume=False) == -signal.SIGKILL
    assert _subprocess_train(tmp_path, corpus, "none", resume=True) == 0
    assert _losses(tmp_path) == reference
    _assert_whole_lines(tmp_path)
    assert not (tmp_path / "run.lock").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".tmp-*"))


# -- files of a run -----------------------------------------------------------------------


def test_metrics_csv_drops_a_partial_line_and_appends_whole_rows(tmp_path):
    log = MetricsLog(tmp_path)
    log.log(1, train_loss=2.5)
    log.log(2, train_loss=2.0)
    log.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("3,1700000000.0,train_lo")  # a write cut short
    log = MetricsLog(tmp_path, resume_step=2)
    log.log(3, train_loss=1.5)
    log.close()
    assert read_metrics(tmp_path / "metrics.csv")["train_loss"] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    _assert_whole_lines(tmp_path)


def test_a_corrupt_latest_falls_back_to_the_newest_complete_checkpoint(copy, caplog):
    (copy / "checkpoints" / "latest").write_text('{"checkpoint": "step-000')
    checkpoint = latest_checkpoint(copy)
    assert checkpoint is not None and checkpoint.step == STEPS
    assert "corrupt" in caplog.text
    (copy / "checkpoints" / "latest").write_text('{"checkpoint": "step-00000999"}')
    assert latest_checkpoint(copy).step == STEPS


def test_checkpoint_folders_are_readable_by_others(finished):
    mode = latest_checkpoint(finished).path.stat().st_mode & 0o777
    assert mode == 0o755


def test_weights_with_nan_are_refused_naming_the_tensor(tmp_path):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = float("nan")
    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = torch.nn.Linear(3, 2)
    before = fresh.weight.clone()
    with pytest.raises(ValueError, match=r"model\.safetensors hold NaN or infinite values in bias"):
        load_weights(fresh, tmp_path)
    assert torch.equal(fresh.weight, before)


# -- the engine ---------------------------------------------------------------------------


def _toy_trainer(run_dir: Path, loss_fn, max_steps: int = 6) -> Trainer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(12, 12, d_model=16))
    return Trainer(
        model,
        TrainConfig(max_steps=max_steps, warmup_steps=2, checkpoint_every=4, log_every=1),
        run_dir,
        batches=toy_batches(vocab_size=12, batch_size=4, batches_per_epoch=5),
        loss_fn=loss_fn,
        progress=False,
    )


def test_sigint_finishes_the_step_checkpoints_it_and_raises(tmp_path):
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return seq2seq_loss(model, batch, label_smoothing=0.0)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as caught:
        _toy_trainer(tmp_path, loss_fn).fit()
    assert caught.value.signal_number == signal.SIGINT and caught.value.step == 3
    assert latest_checkpoint(tmp_path).step == 3
    assert "SIGINT after step 3" in str(caught.value)
    assert signal.getsignal(signal.SIGINT) is previous
    # The interrupted run resumes on.
    result = _toy_trainer(tmp_path, lambda m, b: seq2seq_loss(m, b, label_smoothing=0.0)).fit(
        resume=True
    )
    assert result.step == 6


def test_a_full_disk_at_a_checkpoint_names_the_folder_and_keeps_the_older(tmp_path, monkeypatch):
    trainer = _toy_trainer(tmp_path, lambda m, b: seq2seq_loss(m, b, label_smoothing=0.0))
    real_save = checkpoint_module.save_model

    def save_model_full(model, filename):
        if "step-00000006" in filename:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(model, filename)

    monkeypatch.setattr(checkpoint_module, "save_model", save_model_full)
    with pytest.raises(OSError, match=f"no space left on device.*{tmp_path / 'checkpoints'}"):
        trainer.fit()
    assert [c.step for c in list_checkpoints(tmp_path)] == [4]
    assert latest_checkpoint(tmp_path).step == 4
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# -- a BERT model folder appears whole ------------------------------------------------------


def _tiny_bert():
    from qkv.models.bert import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig.tiny(vocab_size=50, d_model=16, d_ff=32))


def test_save_pretrained_never_leaves_weights_without_config(tmp_path, monkeypatch):
    from qkv.convert import bert, common

    def config_write_dies(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common, "write_text_atomic", config_write_dies)
    with pytest.raises(OSError, match="No space"):
        bert.save_pretrained(_tiny_bert(), tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # neither model/ nor its temporary sibling
    monkeypatch.undo()
    bert.save_pretrained(_tiny_bert(), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    # An existing folder (with the tokenizer beside) is written in place.
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    bert.save_pretrained(_tiny_bert(), tmp_path / "model")
    assert (tmp_path / "model" / "tokenizer.json").read_text() == "{}"


def test_a_model_folder_left_half_written_is_removed_on_open(tmp_path):
    (tmp_path / "seed-0" / ".tmp-pretrained-model-abc").mkdir(parents=True)
    (tmp_path / "seed-0" / ".tmp-pretrained-model-abc" / "model.safetensors").write_bytes(b"x")
    with open_run_dir(tmp_path, resume=False, overwrite=False, identity={"task": "t"}):
        assert not (tmp_path / "seed-0" / ".tmp-pretrained-model-abc").exists()


def test_a_meta_json_that_is_not_json_is_named(copy):
    from qkv.train.checkpoint import read_meta

    checkpoint = latest_checkpoint(copy).path
    (checkpoint / "meta.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"meta\.json: not valid JSON"):
        read_meta(checkpoint)


def _vit_train(run_dir: Path) -> None:
    from qkv.tasks.vit import train_vit

    train_vit(run_dir, "digits")


def _bert_finetune(run_dir: Path) -> None:
    from qkv.tasks.bert import finetune

    finetune(run_dir, preset="tiny")


def _bert_tokens(run_dir: Path) -> None:
    from qkv.tasks.bert.tokens import finetune_tokens

    finetune_tokens(run_dir, train="train.conll", preset="tiny")


def _bert_pretrain(run_dir: Path) -> None:
    from qkv.tasks.bert.pretrain import pretrain

    pretrain(run_dir)


@pytest.mark.parametrize(
    ("module", "reader", "call"),
    [
        ("qkv.tasks.vit.train", "load_images", _vit_train),
        ("qkv.tasks.bert.finetune", "load_labelled", _bert_finetune),
        ("qkv.tasks.bert.tokens", "_read_splits", _bert_tokens),
        ("qkv.tasks.bert.pretrain", "load_mlm_text", _bert_pretrain),
    ],
    ids=["vit train", "bert finetune", "bert finetune-tokens", "bert pretrain"],
)
def test_every_family_refuses_a_held_folder_before_reading_its_data(
    module, reader, call, tmp_path, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the data were read before the folder was checked")

    # By module object: qkv.tasks.bert.finetune is also the name of a function there.
    monkeypatch.setattr(importlib.import_module(module), reader, never)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(RunDirError, match="holds a run"):
        call(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
