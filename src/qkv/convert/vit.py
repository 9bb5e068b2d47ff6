"""Hugging Face ``ViTForImageClassification`` checkpoints in and out of qkv's
:class:`~qkv.models.vit.ViT`, without ``transformers`` at run time.

The shape every converter shares (:mod:`qkv.convert.common`): :func:`from_pretrained`
reads a checkpoint directory (``config.json`` and the weights), :func:`save_pretrained`
writes one that ``transformers.ViTForImageClassification.from_pretrained`` opens;
:func:`config_from_hf` / :func:`config_to_hf` translate ``config.json``; whatever does
not fit is refused, every problem listed in one :class:`CheckpointError`.
:func:`read_image_processor` and :func:`label_names` read what a classifier needs
besides the model: the pixel normalisation and the class names.

Every tensor has two Hugging Face names, hence two name maps of the same templates
(:class:`~qkv.convert.common.NameMap`):

- :data:`HF_TO_QKV`: the module names of ``transformers`` 5.x in memory (the
  ``state_dict()`` of a live model, as :func:`from_hf` reads it), e.g.
  ``vit.layers.{i}.attention.q_proj.weight``;
- :data:`HF_FILE_TO_QKV`: the names in checkpoint files, e.g.
  ``vit.encoder.layer.{i}.attention.attention.query.weight``. These are the names of
  ``transformers`` 4.x, and 5.x (5.23.0 is the test oracle) still writes them: it
  renames them on load and back on save, so that its files still open in 4.x.
  :func:`save_pretrained` writes them too.

:func:`load_hf_state_dict` takes either, but not a mixture: it reads a state dict with
the map that knows more of its keys, and anything that map does not know is an
unknown key.

The one tensor that changes layout: Hugging Face embeds patches with a
``Conv2d(c, d, kernel_size=p, stride=p)`` whose weight is ``(d, c, p, p)``; qkv's
:class:`~qkv.models.vit.PatchEmbedding` is an ``nn.Linear`` on patches flattened in
``(c, p, p)`` order, so its weight is the same numbers as ``(d, c·p·p)``.

Notation: d width, c channels, p patch side, i layer index.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from qkv.convert.common import (
    CheckpointError,
    NameMap,
    read_config,
    read_json,
    read_weights,
    write_pretrained,
)
from qkv.models.vit import ViT, ViTConfig

__all__ = [
    "HF_FILE_TO_QKV",
    "HF_TO_QKV",
    "CheckpointError",
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "from_pretrained",
    "hf_to_qkv_state_dict",
    "label_names",
    "load_hf_state_dict",
    "read_image_processor",
    "save_pretrained",
]

_OUTSIDE_LAYERS = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "position_embeddings",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embedding.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embedding.proj.bias",
    "vit.layernorm.weight": "encoder.norm.weight",  # the final LayerNorm
    "vit.layernorm.bias": "encoder.norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}

# Modules of layer {i}: (transformers 5.x in memory, checkpoint files, qkv); each has
# a weight and a bias.
_LAYER_MODULES = [
    ("layernorm_before", "layernorm_before", "self_attn_norm.norm"),
    ("attention.q_proj", "attention.attention.query", "self_attn.q_proj"),
    ("attention.k_proj", "attention.attention.key", "self_attn.k_proj"),
    ("attention.v_proj", "attention.attention.value", "self_attn.v_proj"),
    ("attention.o_proj", "attention.output.dense", "self_attn.out_proj"),
    ("layernorm_after", "layernorm_after", "feed_forward_norm.norm"),
    ("mlp.fc1", "intermediate.dense", "feed_forward.linear1"),
    ("mlp.fc2", "output.dense", "feed_forward.linear2"),
]


def _templates(layer_prefix: str, column: int) -> dict[str, str]:
    layers = {
        f"{layer_prefix}.{{i}}.{names[column]}.{p}": f"encoder.layers.{{i}}.{names[2]}.{p}"
        for names in _LAYER_MODULES
        for p in ("weight", "bias")
    }
    return {**_OUTSIDE_LAYERS, **layers}


#: transformers 5.x module name -> qkv name; ``{i}`` is the layer index.
HF_TO_QKV: dict[str, str] = _templates("vit.layers", 0)
#: Name in a checkpoint file (transformers 4.x, and 5.x on disk) -> qkv name.
HF_FILE_TO_QKV: dict[str, str] = _templates("vit.encoder.layer", 1)

_MODULE_NAMES = NameMap(HF_TO_QKV)
_FILE_NAMES = NameMap(HF_FILE_TO_QKV)

_PATCH_WEIGHT = "patch_embedding.proj.weight"
_ARCHITECTURE = "ViTForImageClassification"
_PREPROCESSOR_FILE = "preprocessor_config.json"

# config.json key -> ViTConfig field, with transformers' default for a missing key.
_CONFIG_KEYS: dict[str, tuple[str, Any]] = {
    "num_channels": ("in_channels", 3),
    "hidden_size": ("d_model", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("d_ff", 3072),
    "hidden_dropout_prob": ("dropout", 0.0),
    "attention_probs_dropout_prob": ("attention_dropout", 0.0),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
}


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def _as_dict(values: Any) -> dict[str, Any]:
    if isinstance(values, Mapping):
        return dict(values)
    to_dict = getattr(values, "to_dict", None)  # a transformers.ViTConfig
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"expected config.json as a dict, got {type(values).__name__}")


def _id2label(values: Mapping[str, Any]) -> list[str] | None:
    """The class names of ``id2label``, in class order; keys may be ints (a
    ``transformers`` config) or strings (``config.json``)."""
    id2label = values.get("id2label")
    if not id2label:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, TypeError, ValueError):  # not a dict, or a key not a number
        by_index = {}
    if not by_index or sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"id2label should map 0, 1, ... to class names, got {id2label!r}")
    return [by_index[i] for i in range(len(by_index))]


def config_from_hf(values: Any, **overrides: Any) -> ViTConfig:
    """``config.json`` (a dict, or a ``transformers.ViTConfig``) -> :class:`ViTConfig`.

    Refuses what qkv's ViT does not build (another model type or activation, no q/k/v
    bias, non-square images or patches), every problem in one :class:`CheckpointError`,
    rather than converting into a different model. Keys that only matter to other
    heads (``encoder_stride``, the pooler's) are ignored. ``overrides`` replace fields
    afterwards (say ``dropout=0.1`` for fine-tuning; Hugging Face's default is 0).
    """
    hf = _as_dict(values)
    problems = []
    if hf.get("model_type") != "vit":
        problems.append(f"model_type is {hf.get('model_type')!r}, not 'vit'")
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"qkv's ViT uses the exact (erf) GELU, got hidden_act={hf['hidden_act']!r}")
    if not hf.get("qkv_bias", True):
        problems.append(f"qkv's ViT has q/k/v biases, got qkv_bias={hf['qkv_bias']!r}")
    sizes: dict[str, int] = {}
    for key, default in (("image_size", 224), ("patch_size", 16)):
        value = hf.get(key, default)
        if isinstance(value, list | tuple):
            if len(set(value)) != 1:
                problems.append(f"qkv's ViT takes square {key}, got {key}={list(value)}")
                continue
            value = value[0]
        sizes[key] = value
    try:
        names = _id2label(hf)
    except CheckpointError as error:
        problems.append(str(error))
        names = None
    if problems:
        raise CheckpointError("unsupported ViT configuration: " + "; ".join(problems))
    fields = {field: hf.get(key, default) for key, (field, default) in _CONFIG_KEYS.items()}
    num_classes = len(names) if names else hf.get("num_labels", 2)
    try:
        return ViTConfig(
            **{**sizes, **fields, "num_classes": num_classes, "positional": "learned", **overrides}
        )
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config does not describe a ViT qkv builds: {error}") from None


def config_to_hf(model: ViT, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``config.json`` that ``transformers`` needs to rebuild ``model`` as a
    ``ViTForImageClassification``.

    ``id2label`` is always written, since that is how ``transformers`` learns the
    number of classes; without ``label_names`` the names are its own defaults
    (``LABEL_0``, ...).
    """
    c = model.config
    if c.representation_size is not None:
        raise CheckpointError(
            f"representation_size is {c.representation_size}: Hugging Face's "
            "ViTForImageClassification has no pre-logits layer"
        )
    if label_names is None:
        names = [f"LABEL_{i}" for i in range(c.num_classes)]
    else:
        names = [str(name) for name in label_names]
        if len(names) != c.num_classes:
            raise ValueError(f"{len(names)} label names for {c.num_classes} classes")
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be distinct (label2id), got {names}")
    hf: dict[str, Any] = {"architectures": [_ARCHITECTURE], "model_type": "vit"}
    hf.update(image_size=c.image_size, patch_size=c.patch_size)
    for key, (field, _) in _CONFIG_KEYS.items():
        hf[key] = getattr(c, field)
    hf.update(hidden_act="gelu", qkv_bias=True)
    hf["id2label"] = {str(i): name for i, name in enumerate(names)}
    hf["label2id"] = {name: i for i, name in enumerate(names)}
    return hf


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _name_map_of(hf_state_dict: Mapping[str, Tensor]) -> NameMap:
    """The map that knows more of the keys; file names when neither knows a layer key."""
    known = {
        names: sum(names.qkv_name(key) is not None for key in hf_state_dict)
        for names in (_FILE_NAMES, _MODULE_NAMES)
    }
    return max(known, key=known.__getitem__)  # max keeps the first of equals


def _unknown_keys_problem(unknown: list[str], names: NameMap) -> str:
    problem = (
        f"{len(unknown)} Hugging Face key(s) have no qkv name (ViTForImageClassification "
        f"names expected, as transformers writes or holds them): {unknown}"
    )
    other = _MODULE_NAMES if names is _FILE_NAMES else _FILE_NAMES
    if any(other.qkv_name(key) is not None for key in unknown):
        # A checkpoint has one naming or the other; a mixture is a broken conversion.
        problem += " (checkpoint-file and in-memory layer names mixed)"
    return problem


def hf_to_qkv_state_dict(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every tensor (either naming, see the module docstring) to its qkv name
    and reshape the patch weight ``(d, c, p, p)`` -> ``(d, c·p·p)``.

    Raises :class:`CheckpointError` listing every key the map does not know.
    """
    names = _name_map_of(hf_state_dict)
    unknown = sorted(key for key in hf_state_dict if names.qkv_name(key) is None)
    if unknown:
        raise CheckpointError(_unknown_keys_problem(unknown, names))
    converted = {}
    for key, tensor in hf_state_dict.items():
        name = names.qkv_name(key)
        assert name is not None  # checked above
        if name == _PATCH_WEIGHT:
            tensor = tensor.reshape(tensor.shape[0], -1)  # (d, c, p, p) -> (d, c·p·p)
        converted[name] = tensor
    return converted


def _hf_shape(config: ViTConfig, name: str, tensor: Tensor) -> tuple[int, ...]:
    """The shape that ``tensor``, qkv's ``name``, has in a Hugging Face checkpoint."""
    if name == _PATCH_WEIGHT:
        return (config.d_model, config.in_channels, config.patch_size, config.patch_size)
    return tuple(tensor.shape)


def load_hf_state_dict(model: ViT, hf_state_dict: Mapping[str, Tensor]) -> None:
    """Copy a ``ViTForImageClassification`` state dict (either naming) into ``model``.

    Every qkv weight must be given exactly once with the right shape; otherwise a
    :class:`CheckpointError` lists every unknown, missing and misshapen key, and
    ``model`` is left untouched.
    """
    names = _name_map_of(hf_state_dict)
    expected = model.state_dict()
    qkv_to_hf = {qkv: hf for hf, qkv in names.expand(model.config.num_layers).items()}
    unknown: list[str] = []
    given: dict[str, str] = {}  # qkv name -> checkpoint key
    for key in hf_state_dict:
        name = names.qkv_name(key)
        if name is None:
            unknown.append(key)
        else:
            given[name] = key
    problems = []
    if unknown:
        problems.append(_unknown_keys_problem(sorted(unknown), names))
    missing = sorted(name for name in expected if name not in given)
    if missing:
        # A pre-logits layer (representation_size) has no Hugging Face name.
        hf_missing = [qkv_to_hf[n] for n in missing if n in qkv_to_hf]
        problems.append(f"missing qkv keys {missing} (Hugging Face names {hf_missing})")
    extra = sorted(name for name in given if name not in expected)
    if extra:
        problems.append(
            f"keys the model does not have {extra} (given as {[given[n] for n in extra]})"
        )
    mismatched = []
    for name, key in sorted(given.items()):
        if name not in expected:
            continue
        shape, want = tuple(hf_state_dict[key].shape), _hf_shape(model.config, name, expected[name])
        if shape != want:
            mismatched.append(f"{key} -> {name}: model {want}, given {shape}")
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    if problems:
        raise CheckpointError("checkpoint does not fit this ViT: " + "; ".join(problems))
    model.load_state_dict(hf_to_qkv_state_dict(hf_state_dict), strict=True)


def _hf_state_dict(model: ViT) -> dict[str, Tensor]:
    """``model``'s weights under their checkpoint-file names and shapes."""
    c = model.config
    own = model.state_dict()
    # A sinusoidal table is a buffer outside the state dict; Hugging Face's ViT has
    # only learned positions, and the table's values there give the same model.
    own["position_embeddings"] = model.position_embeddings
    tensors = {}
    for hf, qkv in _FILE_NAMES.expand(c.num_layers).items():
        tensor = own[qkv]
        if qkv == _PATCH_WEIGHT:
            tensor = tensor.reshape(_hf_shape(c, qkv, tensor))  # (d, c·p·p) -> (d, c, p, p)
        tensors[hf] = tensor
    return tensors


# ---------------------------------------------------------------------------------------------
# Checkpoint directories
# ---------------------------------------------------------------------------------------------


def from_pretrained(directory: str | os.PathLike[str], **overrides: Any) -> ViT:
    """Load a Hugging Face ``ViTForImageClassification`` checkpoint directory.

    Args:
        directory: ``config.json`` and the weights (``model.safetensors``, sharded
            safetensors or ``pytorch_model.bin``), in the names ``transformers``
            writes or holds in memory.
        overrides: :class:`ViTConfig` fields to replace (dropouts, say).

    Returns the model in training mode, like a freshly built one; call ``.eval()``
    for inference. The class names are in :func:`label_names`, the pixel
    normalisation in :func:`read_image_processor`.

    Raises:
        CheckpointError: ``config.json`` not valid JSON or describing a model qkv
            does not build; unknown, missing or misshapen weights (every one listed).
    """
    model = ViT(config_from_hf(read_config(directory), **overrides))
    load_hf_state_dict(model, read_weights(directory))
    return model


def save_pretrained(
    model: ViT, directory: str | os.PathLike[str], *, label_names: Sequence[str] | None = None
) -> None:
    """Write ``config.json`` (:func:`config_to_hf`) and ``model.safetensors`` in the
    layout ``transformers`` writes, each file atomically.

    ``transformers.ViTForImageClassification.from_pretrained(directory)`` opens the
    result and computes the same logits; so does :func:`from_pretrained`. A model
    with 2-D sin/cos positions is written with its table as learned positions (the
    same model, read back with ``positional="learned"``).
    """
    config = config_to_hf(model, label_names)
    write_pretrained(directory, _hf_state_dict(model), config)


def label_names(directory: str | os.PathLike[str]) -> list[str] | None:
    """The class names in ``config.json``'s ``id2label``, in class order; ``None``
    when it has none."""
    return _id2label(read_config(directory))


def _channels(values: Any, channels: int, key: str, path: Path) -> list[float]:
    # Hugging Face accepts one number for every channel, or one per channel.
    if isinstance(values, int | float):
        return [float(values)] * channels
    if not isinstance(values, list | tuple) or len(values) not in (1, channels):
        raise CheckpointError(f"{path}: {key} should have {channels} values, got {values!r}")
    return [float(v) for v in values] * (channels if len(values) == 1 else 1)


def _square(size: Any, path: Path) -> int:
    if isinstance(size, list | tuple):
        size = size[0] if size else None
    if not isinstance(size, int) or size < 1:
        raise CheckpointError(f"{path}: no usable image size, got {size!r}")
    return size


def read_image_processor(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """How the checkpoint's images are prepared, from ``preprocessor_config.json``.

    Returns ``{"mean": [...], "std": [...], "size": int, "resample": int,
    "do_normalize": bool}``. ``mean`` and ``std`` (one value per channel) are in
    pixel units, 0–255: ``(pixels - mean) / std`` is what the model saw, everything
    Hugging Face does after resizing folded in. It multiplies the pixels by
    ``rescale_factor`` r (when ``do_rescale``), then subtracts ``image_mean`` and
    divides by ``image_std`` (when ``do_normalize``); since
    ``(x·r - m) / s = (x - m/r) / (s/r)``, the pixel-unit values are ``m/r`` and
    ``s/r`` (``0`` and ``1/r`` without normalisation). ``size`` is the height
    images are resized to, ``resample`` the PIL filter number it uses.

    Without the file: Hugging Face's ViT defaults (mean and std 0.5 after rescaling
    by 1/255, so 127.5 pixel units; bilinear), and the model's own ``image_size``.
    """
    path = Path(directory)
    config = read_config(path) if (path / "config.json").is_file() else {}
    channels = int(config.get("num_channels", 3))
    file = path / _PREPROCESSOR_FILE
    if not file.is_file():
        # No Hugging Face pipeline to follow: ViTImageProcessor's defaults, and the
        # size the model takes (the processor's default 224 may not be it).
        return {
            "mean": [127.5] * channels,
            "std": [127.5] * channels,
            "size": _square(config.get("image_size", 224), path / "config.json"),
            "resample": 2,
            "do_normalize": True,
        }
    pre = read_json(file)
    r = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    do_normalize = bool(pre.get("do_normalize", True))
    if do_normalize:
        mean = [m / r for m in _channels(pre.get("image_mean", 0.5), channels, "image_mean", file)]
        std = [s / r for s in _channels(pre.get("image_std", 0.5), channels, "image_std", file)]
    else:
        mean, std = [0.0] * channels, [1.0 / r] * channels
    size = pre.get("size", 224)
    if isinstance(size, Mapping):
        size = size.get("height", size.get("shortest_edge"))
    return {
        "mean": mean,
        "std": std,
        "size": _square(size, file),
        "resample": int(pre.get("resample", 2)),
        "do_normalize": do_normalize,
    }


def from_hf(hf_model: Any) -> ViT:
    """A qkv :class:`ViT` with the configuration and weights of a live
    ``transformers.ViTForImageClassification``, in the same train/eval mode."""
    model = ViT(config_from_hf(hf_model.config))
    load_hf_state_dict(model, hf_model.state_dict())
    return model.train(hf_model.training)
