"""The training engine: determinism, kill and resume, data parallel, divergence,
schedules, checkpoints, and a copy task that must be learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qkv import Transformer, TransformerConfig
from qkv.data.batching import collate_pairs, token_batches
from qkv.data.toy import toy_batches, toy_pairs
from qkv.decoding import greedy_decode
from qkv.fileio import atomic_write, write_json_atomic, write_text_atomic
from qkv.train import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    average_checkpoints,
    latest_checkpoint,
    lr_factor,
    paper_peak_lr,
    seq2seq_loss,
)
from qkv.train.metrics import read_metrics

SCRIPT = Path(__file__).parent / "scripts" / "train_toy.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True
    )


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return read_metrics(run_dir / "metrics.csv")["train_loss"]


def test_same_command_twice_gives_the_same_losses(tmp_path):
    _run(str(tmp_path / "a"), "--steps", "8")
    _run(str(tmp_path / "b"), "--steps", "8")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert len(_losses(tmp_path / "a")) == 8
    assert (tmp_path / "a" / "loss_curves.png").stat().st_size > 1000


def test_killed_run_resumes_on_the_same_loss_curve(tmp_path):
    steps = 30
    _run(str(tmp_path / "full"), "--steps", str(steps))
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(killed), "--steps", str(steps), "--sleep", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        checkpoint = latest_checkpoint(killed)
        if checkpoint is not None and checkpoint.step >= 10:
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("the run wrote no checkpoint in time")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(killed).step
    assert 10 <= killed_at < steps, "the run must die before its end for this test to mean much"
    _run(str(killed), "--steps", str(steps), "--resume")
    full, resumed = _losses(tmp_path / "full"), _losses(killed)
    assert [s for s, _ in resumed] == list(range(1, steps + 1))
    torch.testing.assert_close(
        torch.tensor([v for _, v in resumed]), torch.tensor([v for _, v in full]), rtol=0, atol=0
    )
    final = load_file(str(latest_checkpoint(killed).path / "model.safetensors"))
    reference = load_file(str(latest_checkpoint(tmp_path / "full").path / "model.safetensors"))
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0)


def test_two_processes_take_the_same_step_as_one_with_the_combined_batch(tmp_path):
    # Adam's first step is about lr·sign(gradient), which turns rounding noise in
    # near-zero gradients into full-size differences; a large eps makes the step
    # proportional to the gradient, so equal gradients show as equal parameters.
    args = ["--steps", "1", "--dropout", "0", "--checkpoint-every", "1", "--lr", "1.0"]
    args += ["--adam-eps", "1.0"]
    _run(str(tmp_path / "one"), "--grad-accum", "2", *args)
    subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", str(SCRIPT), str(tmp_path / "two"), *args,
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    one = load_file(str(latest_checkpoint(tmp_path / "one").path / "model.safetensors"))
    two = load_file(str(latest_checkpoint(tmp_path / "two").path / "model.safetensors"))
    initial = Transformer(TransformerConfig.tiny(12, 12, dropout=0.0, d_model=32)).state_dict()
    moved = 0
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-6, rtol=1e-5)
        moved += not torch.equal(tensor, initial[name]) if name in initial else 0
    assert moved > 10, "the step changed (almost) nothing: the comparison proves little"
    assert _losses(tmp_path / "one")[0][1] == pytest.approx(_losses(tmp_path / "two")[0][1])


def _tiny_trainer(tmp_path, lr=3e-3, steps=20, d_model=32, batch_size=16, **config):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(12, 12, d_model=d_model, dropout=0.0))
    return Trainer(
        model,
        TrainConfig(max_steps=steps, lr=lr, warmup_steps=20, log_every=1, **config),
        tmp_path,
        batches=toy_batches(vocab_size=12, batch_size=batch_size, batches_per_epoch=10),
        loss_fn=lambda m, b: seq2seq_loss(m, b, label_smoothing=0.0),
        progress=False,
    )


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _tiny_trainer(tmp_path, steps=10, checkpoint_every=2)
    calls = {"n": 0}
    good_loss = trainer.loss_fn

    def poisoned(model, batch):
        calls["n"] += 1
        loss, count = good_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 5 else loss), count

    trainer.loss_fn = poisoned
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5.*last good checkpoint"):
        trainer.fit()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.step == 4
    weights = load_file(str(checkpoint.path / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_copy_task_is_learned_and_greedy_output_copies(tmp_path):
    trainer = _tiny_trainer(
        tmp_path, steps=300, d_model=64, batch_size=32, schedule="cosine", checkpoint_every=1000
    )
    result = trainer.fit()
    losses = [row["train_loss"] for row in result.history if "train_loss" in row]
    assert sum(losses[-10:]) / 10 < 0.1, f"copy task not learned: losses end {losses[-10:]}"
    model = trainer.model.eval()
    pairs = toy_pairs(50, vocab_size=12, seed=999)
    batch = collate_pairs(pairs, pad_id=0, bos_id=1, eos_id=2)
    decoded = greedy_decode(model, batch.src, bos_id=1, eos_id=2)
    exact = sum(out == tgt for out, (_, tgt) in zip(decoded.tokens, pairs, strict=True))
    assert exact >= 45, f"only {exact} of 50 sequences copied exactly"


def test_schedules():
    # The paper's schedule: linear to the peak at the end of warm-up, then 1/sqrt(step).
    factors = [
        lr_factor(s, schedule="inverse_sqrt", warmup_steps=4000, total_steps=0)
        for s in (0, 1999, 3999, 15999)
    ]
    assert factors == pytest.approx([1 / 4000, 0.5, 1.0, 0.5])
    assert paper_peak_lr(512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)
    cosine = [
        lr_factor(s, schedule="cosine", warmup_steps=10, total_steps=110, min_factor=0.1)
        for s in (4, 9, 59, 109)
    ]
    assert cosine == pytest.approx([0.5, 1.0, 0.55, 0.1])
    with pytest.raises(ValueError, match="schedule must be"):
        lr_factor(20, schedule="linear", warmup_steps=1, total_steps=2)


def test_checkpoints_are_complete_rotated_and_average(tmp_path):
    trainer = _tiny_trainer(tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=2)
    trainer.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000004", "step-00000006"]
    assert json.loads((tmp_path / "checkpoints" / "latest").read_text())["step"] == 6
    meta = json.loads((tmp_path / "checkpoints" / "step-00000006" / "meta.json").read_text())
    assert meta["train_config"]["max_steps"] == 6 and "epoch" in meta
    paths = [tmp_path / "checkpoints" / n for n in names[1:]]
    averaged = average_checkpoints(paths)
    a, b = (load_file(str(p / "model.safetensors")) for p in paths)
    for name in a:
        torch.testing.assert_close(averaged[name], (a[name] + b[name]) / 2)


def test_atomic_writes_replace_the_file_whole_or_not_at_all(tmp_path):
    target = tmp_path / "new" / "config.json"
    write_json_atomic(target, {"step": 3})
    assert json.loads(target.read_text()) == {"step": 3}
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError, match="writer failed"), atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        tmp.write_text("half of a ")
        raise RuntimeError("writer failed")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]  # no temp file left


def test_atomic_writes_have_the_permissions_of_a_plain_write(tmp_path):
    # The temporary file is private (mkstemp); the finished one is not.
    mask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "weights.bin") as tmp:
            tmp.write_bytes(b"x")
        (tmp_path / "plain.bin").write_bytes(b"x")
        assert (tmp_path / "weights.bin").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)


def test_seq2seq_batch_counts_targets_without_its_own_padding():
    batch = collate_pairs([([4, 5], [6, 7, 8]), ([4], [6])], pad_id=3, bos_id=1, eos_id=2)
    assert batch.pad_id == 3
    assert batch.tgt_out.tolist() == [[6, 7, 8, 2], [6, 2, 3, 3]]
    assert batch.num_target_tokens == 6
    assert batch.to("cpu").num_target_tokens == 6


def test_token_batches_respect_the_budget_and_are_reproducible():
    lengths = [5, 9, 3, 12, 7, 7, 2, 11, 4, 6] * 5
    batches = token_batches(lengths, max_tokens=30, seed=1, epoch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 30 for b in batches)
    assert batches == token_batches(lengths, max_tokens=30, seed=1, epoch=3)
    assert batches != token_batches(lengths, max_tokens=30, seed=1, epoch=4)
    with pytest.raises(ValueError, match="longer than max_tokens=10"):
        token_batches(lengths, max_tokens=10)


def test_training_config_errors():
    message = r"precision must be 'fp32', 'bf16', 'fp16' or 'auto', got 'fp8'"
    with pytest.raises(ValueError, match=message):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="lr must be positive"):
        TrainConfig(lr=0)
    with pytest.raises(
        ValueError, match=r"schedule must be 'inverse_sqrt', 'cosine' or 'constant'"
    ):
        TrainConfig(schedule="linear")  # type: ignore[arg-type]
    assert TrainConfig.from_dict(TrainConfig(lr=1e-3).to_dict()) == TrainConfig(lr=1e-3)
