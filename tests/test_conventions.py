"""One convention across the three families: configs, the attention path, outputs and
losses, trainer hooks, recipes and checkpoint families (qkv.config, qkv.outputs,
qkv.losses, qkv.train.recipe, qkv.families)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from qkv import MultiHeadAttention
from qkv.families import identify, loader
from qkv.losses import IGNORE_INDEX
from qkv.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    Transformer,
    TransformerConfig,
    ViT,
    ViTConfig,
)
from qkv.outputs import ModelOutput
from qkv.train import TrainConfig
from qkv.train.checkpoint import save_checkpoint
from qkv.train.recipe import field_type


def _models(fused: bool = True):
    """A tiny model of each family and an input batch with labels."""
    torch.manual_seed(0)
    transformer = Transformer(TransformerConfig.tiny(20, 20, dropout=0.0, fused_attention=fused))
    src, tgt = torch.randint(1, 20, (2, 7)), torch.randint(1, 20, (2, 5))
    tgt[1, 3:] = 0  # padding: no loss there
    bert_config = BertConfig.tiny(vocab_size=50, dropout=0.0, attention_dropout=0.0,
                                  fused_attention=fused)  # fmt: skip
    ids = torch.randint(1, 50, (2, 6))
    vit = ViT(ViTConfig.digits(fused_attention=fused))
    images = torch.randn(3, 1, 8, 8)
    token_labels = torch.randint(0, 4, (2, 6))
    mlm_labels = torch.full((2, 6), IGNORE_INDEX)
    mlm_labels[:, 2] = 7  # one masked position per row
    return [
        ("transformer", transformer, (src, tgt), tgt),
        ("bert-seq", BertForSequenceClassification(bert_config, 3), (ids,), torch.tensor([0, 2])),
        ("bert-token", BertForTokenClassification(bert_config, 4), (ids,), token_labels),
        ("bert-mlm", BertForMaskedLM(bert_config), (ids,), mlm_labels),
        ("vit", vit, (images,), torch.tensor([1, 2, 3])),
    ]


@pytest.mark.parametrize("index", range(5))
def test_every_family_returns_a_model_output_with_its_mean_loss(index):
    name, model, inputs, labels = _models()[index]
    model.eval()
    out = model(*inputs, labels=labels)
    assert isinstance(out, ModelOutput)
    flat_labels = labels.reshape(-1)
    if name == "transformer":
        flat_labels = flat_labels.masked_fill(flat_labels == 0, IGNORE_INDEX)  # padding id 0
    expected = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), flat_labels)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    assert int(out.num_targets) == int((flat_labels != IGNORE_INDEX).sum())
    assert model(*inputs).loss is None  # no labels, no loss


@pytest.mark.parametrize("index", range(5))
def test_fused_attention_is_a_config_field_that_reaches_every_layer(index):
    _, fused, inputs, _ = _models(fused=True)[index]
    _, plain, _, _ = _models(fused=False)[index]
    attentions = [m for m in plain.modules() if isinstance(m, MultiHeadAttention)]
    assert attentions and not any(m.fused for m in attentions)
    assert all(m.fused for m in fused.modules() if isinstance(m, MultiHeadAttention))
    assert plain.config.to_dict()["fused_attention"] is False  # saved with the model
    plain.load_state_dict(fused.state_dict())
    fused.eval(), plain.eval()
    torch.testing.assert_close(plain(*inputs).logits, fused(*inputs).logits, atol=1e-5, rtol=1e-5)


def test_every_model_names_what_a_trainer_should_not_decay():
    models = {name: model for name, model, _, _ in _models()}
    assert models["vit"].no_weight_decay() == {"cls_token", "position_embeddings"}
    for name in ("transformer", "bert-seq", "bert-token", "bert-mlm"):
        assert models[name].no_weight_decay() == set()


CONFIG_ERRORS = [
    (
        TransformerConfig,
        {"activation": "tanh"},
        r"activation must be 'relu', 'gelu' or 'silu', got 'tanh'",
    ),
    (
        TransformerConfig,
        {"d_model": 30, "num_heads": 4},
        r"num_heads \(4\) must divide d_model \(30\)",
    ),
    (BertConfig, {"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
    (ViTConfig, {"init": "xavier"}, r"init must be 'jax' or 'trunc_normal', got 'xavier'"),
    (ViTConfig, {"representation_size": 0}, r"representation_size must be positive or None"),
    (
        TrainConfig,
        {"precision": "fp8"},
        r"precision must be 'fp32', 'bf16', 'fp16' or 'auto', got 'fp8'",
    ),
    (TrainConfig, {"warmup_steps": -1}, r"warmup_steps must be >= 0 and finite, got -1"),
    # What an optimizer would refuse only after the run folder is made, or train into NaN.
    (TrainConfig, {"weight_decay": float("nan")}, r"weight_decay must be >= 0 and finite"),
    (TrainConfig, {"lr": float("inf")}, r"lr must be finite, got inf"),
    (TrainConfig, {"eps": 0.0}, r"eps must be positive, got 0.0"),
    (
        TrainConfig,
        {"betas": (0.9, 1.0)},
        r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)",
    ),
    (TrainConfig, {"betas": (0.9,)}, r"betas must be two numbers in \[0, 1\)"),
]


@pytest.mark.parametrize(("cls", "values", "message"), CONFIG_ERRORS)
def test_configs_are_checked_the_same_way(cls, values, message):
    args = (10, 10) if cls is TransformerConfig else ()
    with pytest.raises(ValueError, match=message):
        cls(*args, **values)


def test_configs_round_trip_and_refuse_unknown_keys():
    for config in (
        TransformerConfig.tiny(9, 9),
        BertConfig.tiny(),
        ViTConfig.digits(),
        TrainConfig(),
    ):
        assert type(config).from_dict(config.to_dict()) == config
        with pytest.raises(ValueError, match=r"unknown \w+Config fields \['colour'\]"):
            type(config).from_dict({**config.to_dict(), "colour": 1})


def test_recipes_hold_a_model_config_and_a_train_config():
    from qkv.tasks.bert import FinetuneRecipe, PretrainRecipe
    from qkv.tasks.translation import PRESETS as TRANSLATION
    from qkv.tasks.vit import PRESETS as VIT

    for recipe in (TRANSLATION["small"], VIT["fashion"], PretrainRecipe.create("tiny")):
        assert isinstance(recipe.train, TrainConfig)
        changed = recipe.override({"train.lr": 1e-5, "model.dropout": 0.25})
        assert changed.train.lr == 1e-5 and changed.model.dropout == 0.25
        assert recipe.train.lr != 1e-5  # frozen: the preset itself is unchanged
        assert json.loads(json.dumps(recipe.to_dict()))["train"]["lr"] == recipe.train.lr
    assert field_type(TRANSLATION["small"], "train.precision") is not None
    finetune = FinetuneRecipe().override({"model.attention_dropout": 0.0})
    assert finetune.model == {"attention_dropout": 0.0}  # overrides of a checkpoint's config
    with pytest.raises(ValueError, match="unknown recipe field 'train.speed'"):
        TRANSLATION["small"].override({"train.speed": 2})


def test_every_recipe_takes_set_assignments_and_refuses_what_its_job_sets():
    from qkv.tasks.bert import FinetuneRecipe, PretrainRecipe
    from qkv.tasks.translation import PRESETS as TRANSLATION
    from qkv.tasks.vit import PRESETS as VIT

    recipes = (TRANSLATION["small"], VIT["fashion"], PretrainRecipe.create("tiny"))
    for recipe in (*recipes, FinetuneRecipe()):
        changed = recipe.override_text(["model.dropout=0.25", "train.lr=1e-5"])
        dropout = (
            changed.model["dropout"] if isinstance(changed.model, dict) else changed.model.dropout
        )
        assert dropout == 0.25 and changed.train.lr == 1e-5
        with pytest.raises(ValueError, match=r"train\.seed is set by the seed"):
            recipe.override_text(["train.seed=3"])
    # A fine-tuning's model fields are the checkpoint configuration's, read as their types.
    finetune = FinetuneRecipe().override_text(["model.attention_dropout=0", "epochs=0.5"])
    assert finetune.model == {"attention_dropout": 0.0} and finetune.epochs == 0.5
    assert "model.fused_attention" in FinetuneRecipe().field_names()
    with pytest.raises(ValueError, match="model.dropout takes float"):
        FinetuneRecipe().override_text(["model.dropout=high"])
    with pytest.raises(ValueError, match=r"train\.max_steps is set by epochs"):
        FinetuneRecipe().override_text(["train.max_steps=10"])
    with pytest.raises(ValueError, match="FIELD one of"):
        FinetuneRecipe().override_text(["model.colour=1"])
    # A tuple field takes its values separated by commas.
    assert VIT["fashion"].override_text(["train.betas=0.9, 0.95"]).train.betas == (0.9, 0.95)
    with pytest.raises(ValueError, match=r"takes 2 values separated by commas \(float, float\)"):
        VIT["fashion"].override_text(["train.betas=0.9"])


def test_families_identify_runs_checkpoints_and_hugging_face_folders(tmp_path):
    from qkv.convert.bert import save_pretrained

    config = TransformerConfig.tiny(12, 12)
    meta = {"family": "transformer-translation", "model_config": config.to_dict()}
    checkpoint = save_checkpoint(tmp_path / "translator", 3, Transformer(config), {}, meta)
    found = identify(tmp_path / "translator")
    assert (found.family, found.path, found.hugging_face) == ("translator", checkpoint, False)

    save_pretrained(BertForSequenceClassification(BertConfig.tiny(), 2), tmp_path / "bert")
    assert identify(tmp_path / "bert").family == "bert"
    assert identify(tmp_path / "bert").hugging_face
    with pytest.raises(ValueError, match="holds a bert model, not a vit"):
        identify(tmp_path / "bert", expect="vit")

    save_checkpoint(tmp_path / "odd", 1, ViT(ViTConfig.digits()), {}, {"family": "gan"})
    with pytest.raises(ValueError, match="holds a 'gan' model"):
        identify(tmp_path / "odd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        identify(tmp_path / "missing")
    assert callable(loader("translator")) and callable(loader("vit")) and callable(loader("bert"))
