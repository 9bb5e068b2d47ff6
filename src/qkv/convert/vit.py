"""Hugging Face ``ViTForImageClassification`` -> qkv :class:`~qkv.models.vit.ViT`.

One name map (:data:`HF_TO_QKV`), one config translation (:func:`config_from_hf`) and
one copy (:func:`load_hf_state_dict`) that refuses unknown keys, missing keys and
shape mismatches instead of loading half a model.

The names are those of ``transformers`` **5.23.0** (the test oracle; pinned here on
purpose). 4.x used other names for the same tensors, e.g.
``vit.encoder.layer.{i}.attention.attention.query.weight`` for today's
``vit.layers.{i}.attention.q_proj.weight``; a 4.x checkpoint fails loudly with
"unknown keys" rather than loading wrongly.

The one tensor that changes layout: Hugging Face embeds patches with a
``Conv2d(c, d, kernel_size=p, stride=p)`` whose weight is ``(d, c, p, p)``; qkv's
:class:`~qkv.models.vit.PatchEmbedding` is an ``nn.Linear`` on patches flattened in
``(c, p, p)`` order, so its weight is the same numbers as ``(d, c·p·p)``.

Notation: d width, c channels, p patch side, i layer index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from qkv.models.vit import ViT, ViTConfig

__all__ = ["HF_TO_QKV", "config_from_hf", "from_hf", "hf_to_qkv_state_dict", "load_hf_state_dict"]

# Hugging Face (transformers 5.23.0) name -> qkv name; "{i}" is the layer index.
HF_TO_QKV: dict[str, str] = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "position_embeddings",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embedding.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embedding.proj.bias",
    "vit.layers.{i}.layernorm_before.weight": "encoder.layers.{i}.self_attn_norm.norm.weight",
    "vit.layers.{i}.layernorm_before.bias": "encoder.layers.{i}.self_attn_norm.norm.bias",
    "vit.layers.{i}.attention.q_proj.weight": "encoder.layers.{i}.self_attn.q_proj.weight",
    "vit.layers.{i}.attention.q_proj.bias": "encoder.layers.{i}.self_attn.q_proj.bias",
    "vit.layers.{i}.attention.k_proj.weight": "encoder.layers.{i}.self_attn.k_proj.weight",
    "vit.layers.{i}.attention.k_proj.bias": "encoder.layers.{i}.self_attn.k_proj.bias",
    "vit.layers.{i}.attention.v_proj.weight": "encoder.layers.{i}.self_attn.v_proj.weight",
    "vit.layers.{i}.attention.v_proj.bias": "encoder.layers.{i}.self_attn.v_proj.bias",
    "vit.layers.{i}.attention.o_proj.weight": "encoder.layers.{i}.self_attn.out_proj.weight",
    "vit.layers.{i}.attention.o_proj.bias": "encoder.layers.{i}.self_attn.out_proj.bias",
    "vit.layers.{i}.layernorm_after.weight": "encoder.layers.{i}.feed_forward_norm.norm.weight",
    "vit.layers.{i}.layernorm_after.bias": "encoder.layers.{i}.feed_forward_norm.norm.bias",
    "vit.layers.{i}.mlp.fc1.weight": "encoder.layers.{i}.feed_forward.linear1.weight",
    "vit.layers.{i}.mlp.fc1.bias": "encoder.layers.{i}.feed_forward.linear1.bias",
    "vit.layers.{i}.mlp.fc2.weight": "encoder.layers.{i}.feed_forward.linear2.weight",
    "vit.layers.{i}.mlp.fc2.bias": "encoder.layers.{i}.feed_forward.linear2.bias",
    "vit.layernorm.weight": "encoder.norm.weight",  # the final LayerNorm
    "vit.layernorm.bias": "encoder.norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}

_PATCH_WEIGHT = "vit.embeddings.patch_embeddings.projection.weight"


def _qkv_name(hf_name: str) -> str | None:
    """The qkv name of one Hugging Face tensor, or ``None`` if the map has no entry."""
    if hf_name in HF_TO_QKV:
        return HF_TO_QKV[hf_name]
    match = re.fullmatch(r"vit\.layers\.(\d+)\.(.+)", hf_name)
    if match is None:
        return None
    target = HF_TO_QKV.get(f"vit.layers.{{i}}.{match.group(2)}")
    return None if target is None else target.format(i=match.group(1))


def config_from_hf(hf_config: Any) -> ViTConfig:
    """A :class:`ViTConfig` for the model a ``transformers.ViTConfig`` describes.

    Refuses what qkv's ViT does not build (another activation, no q/k/v bias,
    non-square images or patches) rather than converting into a different model.
    """
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"qkv's ViT uses exact GELU; got hidden_act={hf_config.hidden_act!r}")
    if not hf_config.qkv_bias:
        raise ValueError("qkv's ViT has q/k/v biases; got qkv_bias=False")
    sizes = {}
    for name in ("image_size", "patch_size"):
        value = getattr(hf_config, name)
        if isinstance(value, list | tuple):
            if len(set(value)) != 1:
                raise ValueError(f"qkv's ViT takes square {name}; got {value}")
            value = value[0]
        sizes[name] = int(value)
    return ViTConfig(
        **sizes,
        in_channels=hf_config.num_channels,
        num_classes=hf_config.num_labels,
        d_model=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        d_ff=hf_config.intermediate_size,
        dropout=hf_config.hidden_dropout_prob,
        attention_dropout=hf_config.attention_probs_dropout_prob,
        layer_norm_eps=hf_config.layer_norm_eps,
        positional="learned",
    )


def hf_to_qkv_state_dict(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every tensor through :data:`HF_TO_QKV` and reshape the patch weight.

    Raises ``ValueError`` listing every Hugging Face key the map does not know.
    """
    unknown = sorted(name for name in hf_state_dict if _qkv_name(name) is None)
    if unknown:
        raise ValueError(
            f"{len(unknown)} Hugging Face key(s) have no qkv name (transformers 5.23 "
            f"ViTForImageClassification names expected): {unknown[:10]}"
        )
    converted = {}
    for name, tensor in hf_state_dict.items():
        if name == _PATCH_WEIGHT:
            tensor = tensor.reshape(tensor.shape[0], -1)  # (d, c, p, p) -> (d, c·p·p)
        converted[_qkv_name(name)] = tensor  # type: ignore[index]
    return converted


def load_hf_state_dict(model: ViT, hf_state_dict: Mapping[str, Tensor]) -> None:
    """Copy a ``ViTForImageClassification`` state dict into ``model``, in place.

    Every qkv weight must be given exactly once with the right shape; anything else
    (unknown, missing or misshapen keys) raises ``ValueError`` and leaves
    ``model`` untouched.
    """
    converted = hf_to_qkv_state_dict(hf_state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    if missing or extra:
        raise ValueError(
            f"state dict does not fit this ViT: missing qkv keys {missing[:10]}, "
            f"keys the model does not have {extra[:10]}"
        )
    misshapen = [
        f"{name}: model {tuple(expected[name].shape)}, given {tuple(tensor.shape)}"
        for name, tensor in converted.items()
        if tensor.shape != expected[name].shape
    ]
    if misshapen:
        raise ValueError(f"shape mismatch: {'; '.join(misshapen[:10])}")
    model.load_state_dict(converted, strict=True)


def from_hf(hf_model: Any) -> ViT:
    """A qkv :class:`ViT` with the configuration and weights of a
    ``transformers.ViTForImageClassification``, in the same train/eval mode."""
    model = ViT(config_from_hf(hf_model.config))
    load_hf_state_dict(model, hf_model.state_dict())
    return model.train(hf_model.training)
