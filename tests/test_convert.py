"""What the checkpoint converters share (``qkv.convert.common``): the name map, one
error class, reading config.json and the weights, the problem list, atomic writing."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

import qkv.bert
import qkv.convert
import qkv.convert.bert
import qkv.convert.vit
from qkv.convert.common import (
    CheckpointError,
    NameMap,
    read_config,
    read_weights,
    state_problems,
    write_pretrained,
)

TEMPLATES = {
    "emb.weight": "embedding.weight",
    "blocks.{i}.fc.weight": "layers.{i}.linear.weight",
    "blocks.{i}.fc.bias": "layers.{i}.linear.bias",
    "head.{i}.weight": "head.weight_{i}",  # the index need not sit in the same place
}


def test_name_map_expands_templates_for_a_number_of_layers():
    names = NameMap(TEMPLATES)
    assert len(names) == 4
    assert names.expand(2) == {
        "emb.weight": "embedding.weight",
        "blocks.0.fc.weight": "layers.0.linear.weight",
        "blocks.1.fc.weight": "layers.1.linear.weight",
        "blocks.0.fc.bias": "layers.0.linear.bias",
        "blocks.1.fc.bias": "layers.1.linear.bias",
        "head.0.weight": "head.weight_0",
        "head.1.weight": "head.weight_1",
    }
    assert names.expand(0) == {"emb.weight": "embedding.weight"}


def test_name_map_translates_one_name_whatever_its_layer_index():
    names = NameMap(TEMPLATES)
    assert names.qkv_name("emb.weight") == "embedding.weight"
    assert names.qkv_name("blocks.17.fc.bias") == "layers.17.linear.bias"
    for unknown in ("blocks.x.fc.bias", "blocks.1.fc.bias.extra", "blocks..fc.bias", "emb"):
        assert names.qkv_name(unknown) is None, unknown
    # Dots are literal, not "any character".
    assert names.qkv_name("blocks.1Xfc.bias") is None
    with pytest.raises(ValueError, match=r"\{i\} on one side only"):
        NameMap({"blocks.{i}.fc.weight": "linear.weight"})


def test_one_error_class_everywhere_and_it_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    for module in (qkv.convert, qkv.convert.bert, qkv.convert.vit, qkv.bert):
        assert module.CheckpointError is CheckpointError, module.__name__


def test_read_config_names_the_file_of_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json in"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert",')
    for read in (read_config, qkv.convert.bert.from_pretrained, qkv.convert.vit.from_pretrained):
        with pytest.raises(
            CheckpointError, match=re.escape(f"{tmp_path / 'config.json'}: not valid JSON")
        ):
            read(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object, got list"):
        read_config(tmp_path)


def test_state_problems_lists_missing_extra_and_misshapen_keys():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    state = {"b": torch.zeros(4, 3), "c": torch.zeros(1), "z": torch.zeros(1)}
    assert state_problems(state, expected) == [
        "missing keys ['a']",
        "keys the model does not have ['z']",
        "shape mismatches [b: checkpoint (4, 3), model (3, 4)]",
    ]
    assert state_problems(state, expected, {"a": "hf.a", "b": "hf.b"})[::2] == [
        "missing keys ['hf.a']",
        "shape mismatches [hf.b: checkpoint (4, 3), model (3, 4)]",
    ]
    assert state_problems(expected, expected) == []


def test_write_pretrained_then_read_weights(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2)}  # one not contiguous
    write_pretrained(tmp_path / "out", tensors, {"model_type": "x"})
    assert read_config(tmp_path / "out") == {"model_type": "x"}
    loaded = read_weights(tmp_path / "out")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_read_weights_reads_shards_and_pytorch_model_bin(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert sorted(read_weights(tmp_path)) == ["a", "b"]

    (tmp_path / "bin").mkdir()
    torch.save({"c": torch.ones(1)}, tmp_path / "bin" / "pytorch_model.bin")
    assert list(read_weights(tmp_path / "bin")) == ["c"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no weights in .*empty"):
        read_weights(tmp_path / "empty")
