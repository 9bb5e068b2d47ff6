"""ViT: parameter counts, patch embedding = strided convolution, parity with Hugging
Face through the name map, checkpoint folders in and out (read and opened by
``transformers``), position embeddings (learned, 2-D sin/cos, interpolated), every
error message, the IDX loader and augmentation, and a tiny ViT that learns
scikit-learn's digits.

The Hugging Face oracle is ``transformers`` 5.23.0 (its ViT names differ from 4.x).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.testing import assert_close

from qkv.convert.vit import (
    HF_FILE_TO_QKV,
    HF_TO_QKV,
    CheckpointError,
    config_from_hf,
    config_to_hf,
    from_hf,
    from_pretrained,
    hf_to_qkv_state_dict,
    label_names,
    load_hf_state_dict,
    read_image_processor,
    save_pretrained,
)
from qkv.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ImageSet,
    RandomCropFlip,
    image_batches,
    load_digits,
    load_fashion_mnist,
    normalization_stats,
    normalize,
    read_idx,
)
from qkv.models.vit import (
    PatchEmbedding,
    ViT,
    ViTConfig,
    sinusoidal_2d_position_embeddings,
)

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and it does not collapse when
    other jobs share the two cores (OpenMP threads spin-waiting on a busy machine
    made a digits training step 10× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> ViTConfig:
    """Three channels, 16 px, 4 px patches (4 × 4 grid), width 32, 2 layers, 4 heads."""
    sizes = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, d_model=32)
    sizes |= dict(num_layers=2, num_heads=4, d_ff=64, dropout=0.0)
    return ViTConfig(**{**sizes, **overrides})


def expected_parameters(c: ViTConfig) -> int:
    """Counted by hand from the paper's description, independently of the model code."""
    d, p = c.d_model, c.patch_size
    patch = c.in_channels * p * p * d + d
    tokens = d + (1 + c.num_patches) * d  # class token + learned positions
    attention = 4 * (d * d + d)
    feed_forward = d * c.d_ff + c.d_ff + c.d_ff * d + d
    layer = attention + feed_forward + 2 * 2 * d  # two LayerNorms
    head = d * c.num_classes + c.num_classes
    return patch + tokens + c.num_layers * layer + 2 * d + head


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- configuration -----------------------------------------------------------


def test_b16_has_86_567_656_parameters():
    config = ViTConfig.b16()
    assert (config.image_size, config.patch_size, config.num_classes) == (224, 16, 1000)
    assert (config.d_model, config.num_layers, config.num_heads, config.d_ff) == (768, 12, 12, 3072)
    with torch.device("meta"):  # no 350 MB of real weights
        model = ViT(config)
    assert count(model) == 86_567_656
    assert expected_parameters(config) == 86_567_656


@pytest.mark.parametrize(
    "preset", [ViTConfig.fashion_tiny, ViTConfig.fashion_small, ViTConfig.digits]
)
def test_small_presets_parameter_counts(preset):
    config = preset()
    assert count(ViT(config)) == expected_parameters(config)
    assert config.in_channels == 1 and config.num_classes == 10


def test_presets_take_overrides_and_round_trip_through_dict():
    config = ViTConfig.fashion_tiny(num_layers=2, positional="sinusoidal")
    assert config.num_layers == 2 and config.d_model == 128
    assert ViTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown ViTConfig fields \['hidden_size'\]"):
        ViTConfig.from_dict({**config.to_dict(), "hidden_size": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(image_size=28, patch_size=5), r"patch_size \(5\) must divide image_size \(28\)"),
        (dict(d_model=30, num_heads=4), r"num_heads \(4\) must divide d_model \(30\)"),
        (dict(d_model=30, num_heads=3, positional="sinusoidal"), r"divisible by 4, got 30"),
        (dict(positional="rotary"), r"positional must be 'learned' or 'sinusoidal', got 'rotary'"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(num_layers=0), r"num_layers must be positive, got 0"),
        (dict(in_channels=0), r"in_channels must be positive, got 0"),
        (dict(representation_size=0), r"representation_size must be positive or None, got 0"),
        (dict(init="xavier"), r"init must be 'jax' or 'trunc_normal', got 'xavier'"),
    ],
)
def test_config_rejects_bad_values_with_the_values_in_the_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# --- patch embedding ----------------------------------------------------------


def test_patch_embedding_equals_strided_convolution():
    torch.manual_seed(0)
    c, p, d = 3, 4, 24
    conv = nn.Conv2d(c, d, kernel_size=p, stride=p)
    embed = PatchEmbedding(image_size=16, patch_size=p, in_channels=c, d_model=d)
    with torch.no_grad():
        embed.proj.weight.copy_(conv.weight.reshape(d, c * p * p))  # (d, c, p, p) -> (d, c·p·p)
        embed.proj.bias.copy_(conv.bias)
    images = torch.randn(2, c, 16, 16)
    expected = conv(images).flatten(2).transpose(1, 2)  # (b, d, g, g) -> (b, N, d), row by row
    assert_close(embed(images), expected, **TOL)


def test_patch_embedding_flattens_each_patch_in_channel_row_column_order():
    embed = PatchEmbedding(image_size=4, patch_size=2, in_channels=2, d_model=8)
    images = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    with torch.no_grad():
        embed.proj.weight.copy_(torch.eye(8))
        embed.proj.bias.zero_()
    patches = embed(images)  # identity projection: the flattened patches themselves
    # Patch (0, 1): rows 0-1, columns 2-3, channel 0 then channel 1.
    assert patches[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    # Patch (1, 0) is token 2: rows 2-3, columns 0-1.
    assert patches[0, 2].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]


# --- parity with Hugging Face ---------------------------------------------------


def hf_model():
    """A small random ``transformers.ViTForImageClassification`` in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=5,
    )
    config._attn_implementation = "eager"  # returns attention weights to compare
    model = transformers.ViTForImageClassification(config).eval()
    # Its initial LayerNorms are 1/0 and its biases 0: noise on every tensor, so a
    # swapped weight and bias or a dropped bias cannot pass unnoticed.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_name_map_covers_every_hugging_face_tensor():
    hf = hf_model()
    converted = hf_to_qkv_state_dict(hf.state_dict())
    assert set(converted) == set(ViT(config_from_hf(hf.config)).state_dict())
    assert len(HF_TO_QKV) == 24  # 8 outside the layers + 16 per layer


def test_logits_equal_hugging_face_on_copied_weights():
    hf = hf_model()
    model = from_hf(hf)
    assert not model.training
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = hf(images, output_attentions=True)
        hidden = hf.vit(images).last_hidden_state
        ours = model(images, need_weights=True)
    assert_close(ours.logits, expected.logits, **TOL)
    assert_close(ours.last_hidden_state, hidden, **TOL)
    assert ours.attentions is not None and len(ours.attentions) == 2
    for mine, theirs in zip(ours.attentions, expected.attentions, strict=True):
        assert_close(mine, theirs, **TOL)  # (b, h, 1 + N, 1 + N)


def test_interpolated_positions_equal_hugging_face_interpolate_pos_encoding():
    hf = hf_model()
    model = from_hf(hf)
    class_slot = model.position_embeddings[:, 0].clone()
    model.interpolate_position_embeddings(24)
    assert model.config.image_size == 24
    assert model.position_embeddings.shape == (1, 1 + 36, 32)
    assert torch.equal(model.position_embeddings[:, 0], class_slot)
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        expected = hf(images, interpolate_pos_encoding=True).logits
        assert_close(model(images).logits, expected, **TOL)
    with pytest.raises(ValueError, match=r"expected 24×24 images"):
        model(torch.randn(2, 3, 16, 16))


def test_config_from_hf_refuses_what_qkv_does_not_build():
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ValueError, match=r"got hidden_act='relu'"):
        config_from_hf(transformers.ViTConfig(hidden_act="relu"))
    with pytest.raises(ValueError, match=r"got qkv_bias=False"):
        config_from_hf(transformers.ViTConfig(qkv_bias=False))


def test_loading_refuses_unknown_missing_and_misshapen_keys():
    hf = hf_model()
    model = ViT(config_from_hf(hf.config))
    state = dict(hf.state_dict())
    with pytest.raises(ValueError, match=r"no qkv name .*'vit\.pooler\.dense\.weight'"):
        load_hf_state_dict(model, {**state, "vit.pooler.dense.weight": torch.zeros(1)})
    # A 4.x name is not silently accepted.
    old = dict(state)
    old["vit.encoder.layer.0.attention.attention.query.weight"] = old.pop(
        "vit.layers.0.attention.q_proj.weight"
    )
    with pytest.raises(ValueError, match=r"vit\.encoder\.layer\.0\.attention\.attention\.query"):
        load_hf_state_dict(model, old)
    missing = {k: v for k, v in state.items() if k != "vit.layernorm.bias"}
    with pytest.raises(ValueError, match=r"missing qkv keys \['encoder\.norm\.bias'\]"):
        load_hf_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"keys the model does not have \['encoder\.layers\.2\."):
        load_hf_state_dict(model, {**state, "vit.layers.2.mlp.fc1.bias": torch.zeros(64)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = {**state, "classifier.weight": torch.zeros(7, 32), "classifier.bias": torch.zeros(7)}
    with pytest.raises(ValueError, match=r"head\.weight: model \(5, 32\), given \(7, 32\)"):
        load_hf_state_dict(model, wrong)
    for name, tensor in model.state_dict().items():  # untouched after a refusal
        assert torch.equal(tensor, before[name])


# --- checkpoint folders ---------------------------------------------------------


def noisy_vit(**overrides) -> ViT:
    """A tiny qkv ViT in eval mode, noise on every tensor (the zero head and the 1/0
    LayerNorms would hide a swapped or dropped tensor)."""
    torch.manual_seed(1)
    model = ViT(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_save_pretrained_opens_in_transformers_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = noisy_vit()
    save_pretrained(model, tmp_path, label_names=["a", "b", "c", "d", "e"])
    hf, info = transformers.ViTForImageClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or misshapen keys
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert_close(hf.eval()(images).logits, model(images).logits, **TOL)
    assert hf.config.id2label == dict(enumerate("abcde"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"]
    assert (config["model_type"], config["hidden_act"], config["qkv_bias"]) == ("vit", "gelu", True)
    assert config["layer_norm_eps"] == 1e-6 and config["label2id"]["e"] == 4
    # The tensor names are those transformers itself writes to a file.
    hf.save_pretrained(tmp_path / "by-transformers")
    ours = load_file(tmp_path / "model.safetensors")
    theirs = load_file(tmp_path / "by-transformers" / "model.safetensors")
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_a_sinusoidal_vit_saves_as_learned_positions_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = noisy_vit(positional="sinusoidal")
    save_pretrained(model, tmp_path)
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    again = from_pretrained(tmp_path).eval()
    assert again.config.positional == "learned"
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(hf(images).logits, model(images).logits, **TOL)
        assert_close(again(images).logits, model(images).logits, rtol=0, atol=0)
    assert label_names(tmp_path) == [f"LABEL_{i}" for i in range(5)]  # transformers' default
    with pytest.raises(CheckpointError, match=r"representation_size is 16: .*no pre-logits"):
        save_pretrained(ViT(tiny_config(representation_size=16)), tmp_path)
    with pytest.raises(ValueError, match=r"2 label names for 5 classes"):
        config_to_hf(model, ["x", "y"])


def test_qkv_to_folder_to_qkv_is_exact(tmp_path):
    model = noisy_vit(dropout=0.1, layer_norm_eps=1e-5, in_channels=1)
    save_pretrained(model, tmp_path, label_names=list("vwxyz"))
    again = from_pretrained(tmp_path)
    assert again.config == model.config
    assert again.training  # like a freshly built model
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name
    assert label_names(tmp_path) == list("vwxyz")
    assert from_pretrained(tmp_path, dropout=0.0).config.dropout == 0.0  # an override
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left nothing behind


def test_from_pretrained_reads_a_folder_written_by_transformers(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "files")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = hf(images).logits
        assert_close(from_pretrained(tmp_path / "files").eval()(images).logits, expected, **TOL)
    # The in-memory names (transformers 5.x modules) in a file load too.
    hf.config.save_pretrained(tmp_path / "modules")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(state, tmp_path / "modules" / "model.safetensors")
    with torch.no_grad():
        assert_close(from_pretrained(tmp_path / "modules").eval()(images).logits, expected, **TOL)
    assert len(HF_FILE_TO_QKV) == len(HF_TO_QKV) == 24
    assert set(HF_FILE_TO_QKV.values()) == set(HF_TO_QKV.values())


def test_a_bad_folder_lists_a_wrong_shape_an_unknown_and_a_missing_key_at_once(tmp_path):
    hf_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["classifier.weight"] = torch.zeros(7, 32)
    tensors["vit.pooler.dense.bias"] = torch.zeros(32)
    del tensors["vit.encoder.layer.1.output.dense.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        from_pretrained(tmp_path)
    message = str(error.value)
    assert "have no qkv name" in message and "['vit.pooler.dense.bias']" in message
    assert (
        "missing qkv keys ['encoder.layers.1.feed_forward.linear2.bias'] "
        "(Hugging Face names ['vit.encoder.layer.1.output.dense.bias'])"
    ) in message
    assert "classifier.weight -> head.weight: model (5, 32), given (7, 32)" in message
    # A patch weight flattened already is not the (d, c, p, p) of a checkpoint.
    del tensors["vit.pooler.dense.bias"]
    tensors["vit.encoder.layer.1.output.dense.bias"] = torch.zeros(32)
    tensors["classifier.weight"] = torch.zeros(5, 32)
    patch = "vit.embeddings.patch_embeddings.projection.weight"
    tensors[patch] = tensors[patch].reshape(32, -1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model \(32, 3, 4, 4\), given \(32, 48\)"):
        from_pretrained(tmp_path)


def test_config_from_hf_takes_config_json_and_lists_every_problem(tmp_path):
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    from_file = json.loads((tmp_path / "config.json").read_text())
    assert config_from_hf(from_file) == config_from_hf(hf.config)
    assert config_from_hf({**from_file, "encoder_stride": 3}).num_classes == 5
    assert config_from_hf({**from_file, "image_size": [16, 16]}).image_size == 16
    bad = {**from_file, "hidden_act": "gelu_new", "qkv_bias": False, "patch_size": [4, 2]}
    with pytest.raises(CheckpointError) as error:
        config_from_hf(bad)
    message = str(error.value)
    assert "got hidden_act='gelu_new'" in message and "got qkv_bias=False" in message
    assert "square patch_size, got patch_size=[4, 2]" in message
    with pytest.raises(CheckpointError, match=r"model_type is 'deit', not 'vit'"):
        config_from_hf({**from_file, "model_type": "deit"})
    with pytest.raises(CheckpointError, match=r"patch_size \(5\) must divide image_size"):
        config_from_hf({**from_file, "patch_size": 5})
    (tmp_path / "config.json").write_text('{"model_type": "vit",')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        from_pretrained(tmp_path)


def test_read_image_processor_gives_what_transformers_feeds_the_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    # The PIL processor: the default one needs torchvision, which qkv does not install.
    processor_class = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    processor = processor_class(image_mean=mean, image_std=std, size={"height": 16, "width": 16})
    processor.save_pretrained(tmp_path)
    found = read_image_processor(tmp_path)
    assert (found["size"], found["resample"], found["do_normalize"]) == (16, 2, True)
    assert_close(torch.tensor(found["mean"]), 255 * torch.tensor(mean), rtol=1e-6, atol=0)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    expected = processor(images=pixels, do_resize=False, return_tensors="pt")["pixel_values"][0]
    image = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)  # (c, H, W), 0-255
    m, sd = (torch.tensor(found[k])[:, None, None] for k in ("mean", "std"))
    ours = (image - m) / sd
    assert_close(ours, expected, **TOL)

    # Without normalisation only the rescaling remains; without the file, ViT's defaults.
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "rescale_factor": 0.5, "size": {"height": 8}})
    )
    assert read_image_processor(tmp_path) == {
        "mean": [0.0] * 3, "std": [2.0] * 3, "size": 8, "resample": 2, "do_normalize": False
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").unlink()
    save_pretrained(noisy_vit(in_channels=1), tmp_path)
    assert read_image_processor(tmp_path) == {
        "mean": [127.5], "std": [127.5], "size": 16, "resample": 2, "do_normalize": True
    }  # fmt: skip


# --- the model ----------------------------------------------------------------


def test_forward_is_forward_features_then_forward_head():
    torch.manual_seed(0)
    model = ViT(tiny_config()).eval()
    nn.init.normal_(model.head.weight)  # the zero head would make every logit 0
    images = torch.randn(2, 3, 16, 16)
    features = model.forward_features(images)
    assert features.shape == (2, 1 + 16, 32)
    logits = model.forward_head(features)
    assert logits.shape == (2, 5)
    out = model(images)
    assert_close(out.logits, logits, rtol=0, atol=0)
    assert out.attentions is None
    # The plain attention path (weights built explicitly) gives the same logits.
    for layer in model.encoder.layers:
        layer.self_attn.fused = False
    assert_close(model(images).logits, logits, **TOL)


def test_initialisation_follows_the_paper_jax_code():
    torch.manual_seed(0)
    model = ViT(ViTConfig.fashion_small())  # init="jax", 4 px patches: fan_in 16
    layer = model.encoder.layers[0]
    for linear in (layer.self_attn.q_proj, layer.feed_forward.linear1):  # Xavier uniform
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(linear.bias) == 0
    patch = model.patch_embedding.proj.weight  # LeCun normal: variance 1 / fan_in = 1/16
    assert patch.abs().max() <= 2 * 0.25 / 0.8796 + 1e-6
    assert 0.2 < patch.std() < 0.3
    assert torch.count_nonzero(model.cls_token) == 0
    assert 0.015 < model.position_embeddings.std() < 0.025
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    norm = layer.self_attn_norm.norm
    assert torch.equal(norm.weight, torch.ones(128)) and torch.equal(norm.bias, torch.zeros(128))
    logits = model(torch.randn(2, 1, 28, 28)).logits
    assert torch.equal(logits, torch.zeros(2, 10))  # the loss starts at log 10


def test_initialisation_trunc_normal_as_timm_and_hugging_face():
    torch.manual_seed(0)
    model = ViT(ViTConfig.fashion_tiny(init="trunc_normal"))
    weight = model.encoder.layers[0].feed_forward.linear1.weight  # 256 × 128
    assert weight.abs().max() <= 0.04  # truncated at two standard deviations
    assert 0.014 < weight.std() < 0.02  # std of N(0, 0.02) cut at ±2σ is 0.0176
    for tensor in (model.cls_token, model.position_embeddings, model.patch_embedding.proj.weight):
        assert tensor.abs().max() <= 0.04 and tensor.std() > 0.01
    assert torch.count_nonzero(model.head.weight) == 0


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = ViT(tiny_config(representation_size=16))
    nn.init.normal_(model.head.weight, std=0.02)  # with the zero head nothing flows back
    F.cross_entropy(model(torch.randn(2, 3, 16, 16)).logits, torch.tensor([0, 3])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 16, 16), r"images must have 4 dims \(batch, 3, 16, 16\), got 3 dims \(3, 16, 16\)"),
        ((2, 1, 16, 16), r"expected 3 channel\(s\) \(batch, 3, 16, 16\), got 1 channel\(s\)"),
        ((2, 3, 32, 32), r"expected 16×16 images \(batch, 3, 16, 16\), got 32×32"),
        ((2, 3, 16, 12), r"expected 16×16 images \(batch, 3, 16, 16\), got 16×12"),
    ],
)
def test_forward_rejects_wrong_images_naming_expected_and_given(shape, message):
    model = ViT(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_forward_rejects_integer_pixels_and_bad_interpolation_sizes():
    model = ViT(tiny_config())
    with pytest.raises(ValueError, match=r"must be floating point .* got torch\.uint8"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"patch_size \(4\) must divide the new image size \(18\)"):
        model.interpolate_position_embeddings(18)
    with pytest.raises(ValueError, match=r"patch_size \(5\) must divide image_size \(16\)"):
        PatchEmbedding(image_size=16, patch_size=5, in_channels=3, d_model=8)


def test_interpolating_to_the_same_size_is_the_identity():
    torch.manual_seed(0)
    model = ViT(tiny_config()).eval()
    nn.init.normal_(model.head.weight)
    images = torch.randn(2, 3, 16, 16)
    before_table = model.position_embeddings.detach().clone()
    before_logits = model(images).logits
    model.interpolate_position_embeddings(16)
    assert_close(model.position_embeddings.detach(), before_table, rtol=0, atol=1e-6)
    assert_close(model(images).logits, before_logits, **TOL)


def test_interpolating_to_another_size_keeps_the_class_slot_and_runs():
    torch.manual_seed(0)
    model = ViT(tiny_config())
    class_slot = model.position_embeddings[:, :1].detach().clone()
    model.interpolate_position_embeddings(32)
    assert model.position_embeddings.shape == (1, 1 + 64, 32)
    assert torch.equal(model.position_embeddings[:, :1], class_slot)
    assert model.position_embeddings.requires_grad
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5)
    # A smooth (here: linear) table stays smooth: corners map to corners.
    model.interpolate_position_embeddings(16)
    assert model.position_embeddings.shape == (1, 1 + 16, 32)


def test_sinusoidal_2d_values_by_hand():
    table = sinusoidal_2d_position_embeddings(3, 8)  # 3 × 3 patches, width 8
    assert table.shape == (1, 10, 8)
    assert torch.equal(table[0, 0], torch.zeros(8))  # the class token has no place
    # Width d/2 = 4 per axis: frequencies 1 and 1/100; patch (row 1, column 2) is token 6.
    r, s = 1.0, 2.0
    row = [math.sin(r), math.cos(r), math.sin(r / 100), math.cos(r / 100)]
    column = [math.sin(s), math.cos(s), math.sin(s / 100), math.cos(s / 100)]
    expected = row + column
    assert_close(table[0, 1 + 1 * 3 + 2], torch.tensor(expected), rtol=0, atol=1e-6)
    grid = table[0, 1:].reshape(3, 3, 8)
    assert torch.equal(grid[1, 0, :4], grid[1, 2, :4])  # same row, same first half
    assert torch.equal(grid[0, 2, 4:], grid[2, 2, 4:])  # same column, same second half


def test_sinusoidal_option_is_fixed_and_rebuilt_for_another_size():
    model = ViT(tiny_config(positional="sinusoidal"))
    assert "position_embeddings" not in model.state_dict()  # a function of the config
    assert not any(name == "position_embeddings" for name, _ in model.named_parameters())
    assert count(model) == expected_parameters(model.config) - (1 + 16) * 32
    assert torch.equal(model.position_embeddings, sinusoidal_2d_position_embeddings(4, 32))
    model.interpolate_position_embeddings(24)
    assert torch.equal(model.position_embeddings, sinusoidal_2d_position_embeddings(6, 32))
    assert model(torch.randn(1, 3, 24, 24)).logits.shape == (1, 5)


def test_need_weights_returns_rows_that_sum_to_one():
    model = ViT(tiny_config()).eval()
    out = model(torch.randn(2, 3, 16, 16), need_weights=[-1])
    assert out.attentions is not None and out.attentions[0] is None
    weights = out.attentions[1]
    assert weights.shape == (2, 4, 17, 17)
    assert_close(weights.sum(-1), torch.ones(2, 4, 17), **TOL)


# --- IDX files, Fashion-MNIST, digits, augmentation ------------------------------


def write_idx(path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_read_idx_reads_what_was_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    values = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    write_idx(tmp_path / "b", values, type_code=0x0C)  # big-endian int32, plain file
    assert np.array_equal(read_idx(tmp_path / "b"), values)


def test_read_idx_rejects_corrupt_and_short_files(tmp_path):
    (tmp_path / "magic").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match=r"not an IDX file: magic bytes 504b0304"):
        read_idx(tmp_path / "magic")
    write_idx(tmp_path / "full", np.zeros((4, 2, 2), dtype=np.uint8))
    raw = (tmp_path / "full").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(
        ValueError,
        match=r"shape \(4, 2, 2\) of uint8 \(32 bytes in all\), file has 29 bytes: truncated",
    ):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match=r"trailing data"):
        read_idx(tmp_path / "long")
    (tmp_path / "tiny").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match=r"2 bytes, too short for an IDX header"):
        read_idx(tmp_path / "tiny")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match=r"bad\.gz: cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_loader_on_files_written_by_the_test(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
        )
        labels = np.arange(n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    train = load_fashion_mnist("train", tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5] and train.labels.dtype == torch.int64
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert len(load_fashion_mnist("test", tmp_path)) == 3
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train'\], got 'val'"):
        load_fashion_mnist("val", tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels up to 10"):
        load_fashion_mnist("test", tmp_path)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    for directory in (tmp_path, tmp_path / "nowhere"):
        how = r"apt-get install dataset-fashion-mnist.*zalandoresearch/fashion-mnist"
        with pytest.raises(FileNotFoundError, match=how):
            load_fashion_mnist("train", directory)


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.classes == FASHION_MNIST_CLASSES
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))  # balanced
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    mean, std = normalization_stats(train.images)
    assert_close(mean, torch.tensor([72.94]), rtol=0, atol=0.01)  # 0.2860 × 255
    assert_close(std, torch.tensor([90.02]), rtol=0, atol=0.01)  # 0.3530 × 255


def test_normalisation_uses_train_statistics():
    images = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    mean, std = normalization_stats(images)
    assert_close(mean, torch.tensor([3.0])) and assert_close(
        std, torch.tensor([math.sqrt(80 / 15)])
    )
    normalized = normalize(images, mean, std)
    assert normalized.dtype == torch.float32
    assert_close(normalized.mean(), torch.tensor(0.0)) and assert_close(
        normalized.std(), torch.tensor(1.0)
    )


def test_augmentation_crops_windows_of_the_padded_image_and_flips():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 2, 6, 6), dtype=torch.uint8)
    augment = RandomCropFlip(padding=2, flip_p=0.5, generator=generator)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    for image, result in zip(padded, out, strict=True):
        windows = [image[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(result, w) for w in windows)
    assert not torch.equal(out, images)  # 16 draws of 50: some moved
    flip_only = RandomCropFlip(padding=0, flip_p=1.0)
    assert torch.equal(flip_only(images.float()), images.float().flip(-1))
    assert torch.equal(flip_only(images[0]), images[0].flip(-1))  # one (c, H, W) image
    assert torch.equal(flip_only.eval()(images), images)  # off at evaluation


def test_image_batches_depend_only_on_seed_and_epoch():
    images = torch.arange(10 * 16, dtype=torch.uint8).reshape(10, 1, 4, 4)
    data = ImageSet(images, torch.arange(10), tuple("abcdefghij"))
    stats = dict(mean=torch.tensor([1.0]), std=torch.tensor([2.0]))
    augment = RandomCropFlip(padding=1)

    def epoch(number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(image_batches(data, 4, **stats, epoch=number, augment=augment))

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert [len(labels) for _, labels in first] == [4, 4, 2]
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(10))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in second]))
    plain = list(image_batches(data, 10, **stats, shuffle=False))
    assert_close(plain[0][0], (images.float() - 1.0) / 2.0)


def test_tiny_vit_learns_sklearn_digits():
    """Digits: 1,437 training and 360 test images (stratified, seeded). Eight seeds of
    this recipe gave 96.4–98.6% test accuracy, about 7 s each on one busy core; the
    bar leaves room for another machine's rounding."""
    pytest.importorskip("sklearn")
    train, test = load_digits("train"), load_digits("test")
    assert (len(train), len(test)) == (1437, 360) and train.images.shape[1:] == (1, 8, 8)
    mean, std = normalization_stats(train.images)
    x_train, x_test = normalize(train.images, mean, std), normalize(test.images, mean, std)

    torch.manual_seed(0)
    config = ViTConfig.digits()
    model = ViT(config)
    epochs, batch_size, lr = 8, 32, 2e-3
    steps = epochs * math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.15
    )
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(batch_size):
            loss = F.cross_entropy(model(x_train[batch]).logits, train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).logits.argmax(-1) == test.labels).float().mean().item()
    print(f"digits test accuracy {accuracy:.3f}")
    assert accuracy >= 0.93, f"test accuracy {accuracy:.3f}"


def test_config_is_a_frozen_dataclass():
    config = ViTConfig.digits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 3  # type: ignore[misc]
