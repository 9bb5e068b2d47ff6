"""The fast training paths give the plain paths' results: fused and foreach AdamW,
the engine's one-pass gradient mean and clipping, activation checkpointing, compiled
training; and every family's training command takes the options."""

from __future__ import annotations

import copy

import pytest
import torch

from qkv import Transformer, TransformerConfig
from qkv.data.toy import toy_batches
from qkv.models.bert import BertConfig, BertForSequenceClassification
from qkv.models.vit import ViT, ViTConfig
from qkv.train import TrainConfig, Trainer, seq2seq_loss
from qkv.train.checkpointing import checkpoint_layers, is_checkpointed
from qkv.train.optim import adamw, adamw_kind, load_optimizer_state


def _tiny(dropout: float = 0.0) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        TransformerConfig.tiny(12, 12, d_model=32, dropout=dropout, attention_dropout=dropout)
    )


def _trainer(tmp_path, model=None, steps=4, **options) -> Trainer:
    return Trainer(
        model if model is not None else _tiny(),
        TrainConfig(max_steps=steps, lr=3e-3, warmup_steps=2, log_every=1, grad_clip=0.5),
        tmp_path,
        batches=toy_batches(vocab_size=12, batch_size=8, batches_per_epoch=10),
        loss_fn=lambda m, b: seq2seq_loss(m, b, label_smoothing=0.1),
        progress=False,
        device="cpu",
        **options,
    )


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module, **tolerance) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if name.endswith("k_proj.bias"):
            # Softmax ignores a shift of every score of a query, so this gradient is zero
            # up to rounding; Adam divides it by its own size, turning rounding noise
            # into steps of size lr. Its value is meaningless in any implementation.
            continue
        torch.testing.assert_close(x, y, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


# --- AdamW -------------------------------------------------------------------------------


def test_adamw_is_fused_on_the_cpu():
    optimizer = adamw([torch.nn.Parameter(torch.ones(3))], lr=1e-3, betas=(0.9, 0.98),
                      eps=1e-9, weight_decay=0.0)  # fmt: skip
    assert adamw_kind(optimizer) == "fused"


@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_fast_adamw_trains_to_the_parameters_of_the_plain_loop(tmp_path, kind):
    """Four steps (warm-up, clipping at 0.5 active) of the engine with each AdamW."""
    plain = _trainer(tmp_path / "loop", adamw_kind="loop")
    fast = _trainer(tmp_path / kind, adamw_kind=kind)
    assert adamw_kind(plain.optimizer) == "loop" and adamw_kind(fast.optimizer) == kind
    plain_history, fast_history = plain.fit().history, fast.fit().history
    _assert_same_parameters(plain.model, fast.model, atol=1e-6, rtol=1e-5)
    assert [r["train_loss"] for r in fast_history] == pytest.approx(
        [r["train_loss"] for r in plain_history], rel=1e-5
    )
    assert not torch.equal(plain.model.encoder.layers[0].feed_forward.linear1.weight,
                           _tiny().encoder.layers[0].feed_forward.linear1.weight)  # fmt: skip


def test_the_engine_step_is_the_plain_mean_clip_and_adamw(tmp_path):
    """One engine step (gradients scaled and clipped in one pass, fused AdamW) against
    the textbook: mean loss, backward, ``clip_grad_norm_``, torch's default AdamW."""
    trainer = _trainer(tmp_path, steps=1)
    reference = copy.deepcopy(trainer.model)
    batch = trainer.batches(0)[0]
    row = trainer.fit().history[0]
    output = reference(batch.src, batch.tgt_in, labels=batch.tgt_out, label_smoothing=0.1)
    output.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert norm > 0.5, "clipping must be active for this test to mean something"
    assert row["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=row["lr"], betas=(0.9, 0.98),
                                  eps=1e-9, weight_decay=0.0)  # fmt: skip
    optimizer.step()
    _assert_same_parameters(trainer.model, reference, atol=1e-6, rtol=1e-5)


def test_loading_a_loop_state_keeps_the_fused_implementation():
    parameter = torch.nn.Parameter(torch.ones(3))
    loop = torch.optim.AdamW([parameter], lr=1e-3)
    parameter.grad = torch.ones(3)
    loop.step()
    fused = adamw([parameter], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    load_optimizer_state(fused, loop.state_dict())
    assert adamw_kind(fused) == "fused"
    assert fused.state[parameter]["step"].dtype == torch.float32
    fused.step()  # the fused kernel accepts the loaded state
    assert float(fused.state[parameter]["step"]) == 2.0


# --- activation checkpointing ------------------------------------------------------------


def _gradients(model: torch.nn.Module, loss_of) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks for both
    loss_of(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _translator_loss(model):
    src = torch.tensor([[3, 4, 5, 6, 2, 0], [7, 8, 9, 10, 11, 2]])
    tgt = torch.tensor([[1, 5, 6, 7, 0], [1, 8, 9, 10, 11]])
    return model(src, tgt, labels=tgt.roll(-1, 1), label_smoothing=0.1).loss


def _bert_loss(model):
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 10, 11, 3]])
    return model(ids, attention_mask=(ids != 0).long(), labels=torch.tensor([0, 1])).loss


def _vit_loss(model):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 28, 28, generator=generator)
    return model(images, labels=torch.tensor([3, 7])).loss


FAMILIES = {
    "translator": (lambda: _tiny(dropout=0.1), _translator_loss, 4),
    "bert": (
        lambda: BertForSequenceClassification(
            BertConfig.tiny(vocab_size=20, pad_id=0, attention_dropout=0.1), 2
        ),
        _bert_loss,
        2,
    ),
    "vit": (lambda: ViT(ViTConfig.fashion_tiny(dropout=0.1)), _vit_loss, 6),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointed_layers_give_the_same_gradients(family):
    build, loss_of, layers = FAMILIES[family]
    torch.manual_seed(0)
    plain = build()
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_layers(checkpointed) == layers
    assert all(k == p for k, p in zip(checkpointed.state_dict(), plain.state_dict(), strict=True))
    expected, got = _gradients(plain, loss_of), _gradients(checkpointed, loss_of)
    assert expected.keys() == got.keys() and len(got) > 10
    for name, gradient in expected.items():
        torch.testing.assert_close(got[name], gradient, atol=1e-6, rtol=0, msg=name)


def test_checkpointing_survives_a_copy_and_leaves_inference_alone():
    model = _tiny(dropout=0.1)
    checkpoint_layers(model)
    twin = copy.deepcopy(model)
    layer = twin.decoder.layers[0]
    assert is_checkpointed(layer) and layer.forward.__self__ is layer
    assert type(layer).__name__ == "DecoderLayer"  # the class is kept
    plain = _tiny(dropout=0.1).eval()
    twin.eval()
    src, tgt = torch.tensor([[3, 4, 5, 2]]), torch.tensor([[1, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(twin(src, tgt).logits, plain(src, tgt).logits)


def test_checkpointing_a_model_without_layers_is_refused():
    with pytest.raises(ValueError, match="Linear has no qkv encoder or decoder layers"):
        checkpoint_layers(torch.nn.Linear(2, 2))


def test_the_engine_with_checkpointed_layers_follows_the_same_loss_curve(tmp_path):
    plain = _trainer(tmp_path / "plain", model=_tiny(dropout=0.1)).fit().history
    checkpointed = (
        _trainer(tmp_path / "ckpt", model=_tiny(dropout=0.1), checkpoint_activations=True)
        .fit()
        .history
    )
    assert [r["train_loss"] for r in checkpointed] == pytest.approx(
        [r["train_loss"] for r in plain], abs=1e-6
    )


# --- compiled training --------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_training_follows_the_eager_loss_curve(tmp_path):
    """torch.compile of the training forward and backward (the compiler's own random
    numbers would change dropout, so without dropout)."""
    eager = _trainer(tmp_path / "eager").fit().history
    compiled_trainer = _trainer(tmp_path / "compiled", compile=True)
    compiled = compiled_trainer.fit().history
    assert [r["train_loss"] for r in compiled] == pytest.approx(
        [r["train_loss"] for r in eager], rel=1e-4
    )
    # The weights are saved under their own names, not the compiled wrapper's.
    assert all(not k.startswith("_orig_mod") for k in compiled_trainer.model.state_dict())


# --- the commands ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parser",
    [
        "qkv.cli.translate:_train_parser",
        "qkv.cli.bert:_pretrain_parser",
        "qkv.cli.bert:_finetune_parser",
        "qkv.cli.bert_tokens:_finetune_parser",
    ],
)
def test_training_commands_take_the_speed_options(parser):
    import importlib

    from qkv.cli._options import training_speed

    module, name = parser.split(":")
    make = getattr(importlib.import_module(module), name)
    required = ["--train", "x.conll"] if "tokens" in module else []
    options = make().parse_args([*required, "--compile", "--checkpoint-activations"])
    assert training_speed(options) == {"compile": True, "checkpoint_activations": True}
    assert training_speed(make().parse_args(required)) == {
        "compile": False,
        "checkpoint_activations": False,
    }


def test_vit_train_command_takes_the_speed_options(tmp_path, capsys):
    """``qkv vit train`` builds its parser inside the command: ask for its help."""
    from qkv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["vit", "train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--compile" in out and "--checkpoint-activations" in out
