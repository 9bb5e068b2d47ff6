"""``precision="auto"``: bf16 only on hardware with bf16 matrix instructions, fp32 on the
rest, and a warning wherever bf16 is asked for on hardware without them."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from qkv import Transformer, TransformerConfig
from qkv.data.toy import toy_batches
from qkv.precision import bf16_is_slow, resolve_precision
from qkv.tasks.translation import PRESETS
from qkv.train import TrainConfig, Trainer, seq2seq_loss

CPU = torch.device("cpu")

ZEN4 = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True, "avx512_f": True,
        "avx512_bf16": True, "amx_bf16": False}  # fmt: skip
SAPPHIRE_RAPIDS = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx2": True,
                   "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}  # fmt: skip
SKYLAKE = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True,
           "avx512_bf16": False, "amx_bf16": False}  # fmt: skip
ZEN2 = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False,
        "avx512_bf16": False, "amx_bf16": False}  # fmt: skip
GRAVITON3 = {"architecture": "arm64", "bf16": True}
GRAVITON2 = {"architecture": "arm64", "bf16": False}


def _on_cpu(monkeypatch, features):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: types.MappingProxyType(features))


@pytest.mark.parametrize(
    ("features", "expected", "slow"),
    [
        (ZEN4, "bf16", None),
        (SAPPHIRE_RAPIDS, "bf16", None),
        (GRAVITON3, "bf16", None),
        (SKYLAKE, "fp32", "Intel Xeon has no bf16 matrix instructions (AVX-512, no AVX-512 BF16"),
        (ZEN2, "fp32", "AMD EPYC has no bf16 matrix instructions (AVX2, no AVX-512 BF16 or AMX)"),
        (GRAVITON2, "fp32", "this CPU has no bf16 matrix instructions"),
    ],
)
def test_auto_is_bf16_only_where_the_cpu_multiplies_it_fast(monkeypatch, features, expected, slow):
    _on_cpu(monkeypatch, features)
    assert resolve_precision("auto", CPU) == expected
    reason = bf16_is_slow(CPU)
    assert reason is None if slow is None else reason.startswith(slow)
    # What was asked for explicitly stays as asked.
    for precision in ("fp32", "bf16", "fp16"):
        assert resolve_precision(precision, CPU) == precision


def test_auto_is_fp32_on_mps_and_the_gpu_rule_is_ampere(monkeypatch):
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Tesla T4")
    assert bf16_is_slow(torch.device("cuda", 0)).startswith("Tesla T4 has no bf16 matrix")
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"


def test_the_real_cpu_gets_an_answer():
    # Whatever this machine is, the check runs and agrees with itself.
    assert resolve_precision("auto", CPU) == ("fp32" if bf16_is_slow(CPU) else "bf16")


def _loss(model, batch):
    return seq2seq_loss(model, batch, label_smoothing=0.0)


def _trainer(tmp_path, precision, seen=None):
    def loss_fn(model, batch):
        if seen is not None:  # the autocast dtype the step runs under, None for none
            on = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return _loss(model, batch)

    model = Transformer(TransformerConfig.tiny(12, 12, d_model=16, dropout=0.0))
    return Trainer(
        model,
        TrainConfig(max_steps=2, warmup_steps=1, precision=precision),
        tmp_path,
        batches=toy_batches(vocab_size=12, batch_size=4, batches_per_epoch=2),
        loss_fn=loss_fn,
        progress=False,
    )


def test_the_trainer_resolves_auto_says_so_and_trains_in_it(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="qkv.train.engine")
    seen: list[torch.dtype | None] = []
    _on_cpu(monkeypatch, ZEN2)
    trainer = _trainer(tmp_path / "zen2", "auto", seen)
    assert trainer.precision == "fp32"
    assert "precision auto: training in fp32 on cpu: AMD EPYC has no bf16" in caplog.text
    trainer.fit()
    assert seen == [None, None]  # no autocast: fp32

    seen.clear()
    _on_cpu(monkeypatch, ZEN4)
    trainer = _trainer(tmp_path / "zen4", "auto", seen)
    assert trainer.precision == "bf16"
    assert "precision auto: training in bf16 on cpu" in caplog.text
    trainer.fit()
    assert seen == [torch.bfloat16, torch.bfloat16]
    # The run records what was asked for, so that --resume elsewhere still matches.
    assert trainer.config.precision == "auto"


def test_bf16_asked_for_on_a_cpu_without_it_warns_once(tmp_path, monkeypatch, caplog):
    _on_cpu(monkeypatch, ZEN2)
    trainer = _trainer(tmp_path, "bf16")
    assert trainer.precision == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "precision bf16: AMD EPYC has no bf16 matrix instructions" in warnings[0].message
    assert "train.precision=auto" in warnings[0].message


def test_the_presets_that_asked_for_bf16_ask_for_auto():
    for name in ("small", "medium", "hour", "base"):
        assert PRESETS[name].train.precision == "auto", name


def test_dtype_bf16_for_inference_warns_where_it_is_slow(monkeypatch, caplog):
    import argparse

    from qkv.cli._options import inference_device

    options = argparse.Namespace(device="cpu", dtype="bf16")
    _on_cpu(monkeypatch, ZEN2)
    assert inference_device(options) == (CPU, torch.bfloat16)
    assert "--dtype bf16: AMD EPYC has no bf16 matrix instructions" in caplog.text
    caplog.clear()
    _on_cpu(monkeypatch, ZEN4)
    assert inference_device(options) == (CPU, torch.bfloat16)
    assert inference_device(argparse.Namespace(device="cpu", dtype="fp32"))[1] == torch.float32
    assert caplog.text == ""
