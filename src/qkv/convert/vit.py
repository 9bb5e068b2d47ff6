"""Hugging Face ``ViTForImageClassification`` checkpoints in and out of qkv's
:class:`~qkv.models.vit.ViT`, without ``transformers`` at run time.

The shape every converter shares (:mod:`qkv.convert.common`): :func:`from_pretrained`
reads a checkpoint directory (``config.json`` and the weights), :func:`save_pretrained`
writes one that ``transformers.ViTForImageClassification.from_pretrained`` opens;
:func:`config_from_hf` / :func:`config_to_hf` translate ``config.json``; whatever does
not fit is refused, every problem listed in one :class:`CheckpointError`.
:func:`load_image_processor` and :func:`label_names` read what a classifier needs
besides the model: how image files become its input (``preprocessor_config.json``, as an
:class:`ImageProcessor` that follows ``transformers``' PIL image processors; this is what
``qkv vit classify`` and ``qkv attention`` use on such a folder) and the class names;
:func:`read_image_processor` summarises the normalisation alone.

timm's ``VisionTransformer`` weights come in through one more name map,
:data:`TIMM_TO_QKV` (:func:`from_timm_state_dict`, :func:`from_timm` for a file or a Hub
folder) and go back out with :func:`to_timm_state_dict` and :func:`timm_config`.

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

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
    "RESAMPLE_FILTERS",
    "TIMM_TO_QKV",
    "CheckpointError",
    "ImageProcessor",
    "config_from_hf",
    "config_from_timm",
    "config_to_hf",
    "from_hf",
    "from_pretrained",
    "from_timm",
    "from_timm_state_dict",
    "hf_to_qkv_state_dict",
    "image_processor_from_dict",
    "label_names",
    "load_hf_state_dict",
    "load_image_processor",
    "read_image_processor",
    "save_pretrained",
    "timm_config",
    "timm_to_qkv_state_dict",
    "to_timm_state_dict",
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
    model: ViT,
    directory: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    processor: ImageProcessor | None = None,
) -> None:
    """Write ``config.json`` (:func:`config_to_hf`) and ``model.safetensors`` in the
    layout ``transformers`` writes, and with ``processor`` its
    ``preprocessor_config.json`` (:meth:`ImageProcessor.to_dict`), each file atomically.

    ``transformers.ViTForImageClassification.from_pretrained(directory)`` opens the
    result and computes the same logits; so does :func:`from_pretrained`. A model
    with 2-D sin/cos positions is written with its table as learned positions (the
    same model, read back with ``positional="learned"``).
    """
    config = config_to_hf(model, label_names)
    files = {_PREPROCESSOR_FILE: processor.to_dict()} if processor is not None else None
    write_pretrained(directory, _hf_state_dict(model), config, json_files=files)


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


# ---------------------------------------------------------------------------------------------
# The image processor: preprocessor_config.json applied to image files
# ---------------------------------------------------------------------------------------------

#: PIL's filter numbers, as ``resample`` holds them.
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# The processors whose settings qkv follows, by image_processor_type (or the older
# feature_extractor_type) without a "Fast"/"Pil" suffix, with their defaults for a
# missing key: (size, resample, do_center_crop, crop_size). ConvNeXT's also resizes its
# own way (crop_pct).
_PROCESSOR_DEFAULTS: dict[str, tuple[Any, int, bool, Any]] = {
    "ViT": ({"height": 224, "width": 224}, 2, False, None),
    "DeiT": ({"height": 256, "width": 256}, 3, True, {"height": 224, "width": 224}),
    "Beit": ({"height": 224, "width": 224}, 3, False, {"height": 224, "width": 224}),
    "ConvNext": ({"shortest_edge": 384}, 3, False, None),
}
# Settings applied (the rest of the file must be among these or _IGNORED_SETTINGS).
_APPLIED_SETTINGS = {
    "do_resize", "size", "resample", "default_to_square", "do_center_crop", "crop_size",
    "crop_pct", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
    "do_convert_rgb", "do_pad",
}  # fmt: skip
# Names and settings that do not change a classifier's input (labels of segmentation maps).
_IGNORED_SETTINGS = {
    "image_processor_type", "feature_extractor_type", "processor_class", "_processor_class",
    "do_reduce_labels", "reduce_labels",
}  # fmt: skip


@dataclass(frozen=True)
class ImageProcessor:
    """How a Hugging Face checkpoint's images are prepared (``preprocessor_config.json``),
    in the order of ``transformers``' PIL image processors: convert the mode, resize
    (PIL, filter ``resample``), cut out the centre, then ``(pixels - mean) / std``.

    ``mean`` and ``std`` are in pixel units, 0–255, the rescaling folded in (see
    :func:`read_image_processor`). Build one with :func:`load_image_processor` or
    :func:`image_processor_from_dict`.
    """

    channels: int  # the model's: 1 grey ("L"), 3 colour ("RGB")
    image_size: int  # the model's input side S
    # (height, width) to resize to; ("shortest", s): shorter side to s, the ratio kept;
    # None: no resizing.
    resize: tuple[int, int] | tuple[str, int] | None
    resample: int  # a PIL filter number (RESAMPLE_FILTERS)
    crop: tuple[int, int] | None  # (height, width) of the centre cut out, or None
    mean: tuple[float, ...]  # (c,) pixel units
    std: tuple[float, ...]  # (c,) pixel units
    # Where the centre crop starts when the margin is odd: "floor" as transformers
    # ((h - crop) // 2), "round" as torchvision's CenterCrop, which timm uses
    # (round((h - crop) / 2), halves to even).
    crop_rounding: str = "floor"
    # Transparent pixels laid over white (transformers), or the colour they hold kept
    # (timm's loaders: a plain conversion to RGB).
    over_white: bool = True

    def prepare(self, picture: Any, name: str = "image") -> np.ndarray:
        """A ``PIL.Image.Image`` as the model's input, before normalisation.

        Colour models get RGB and grey ones "L"; transparency is laid over white first
        (``transformers``' ``convert_to_rgb``; without ``do_convert_rgb`` its processors
        refuse grey and transparent images for a colour model, this converts them the
        same way). ``name`` is what an error calls the image.

        Shape: ``uint8`` ``(c, S, S)``, values 0–255.
        """
        from qkv.data.image_folder import to_mode

        picture = to_mode(picture, self.channels, over_white=self.over_white)
        if self.resize is not None:
            picture = picture.resize(self._resized_size(picture), resample=self.resample)
        pixels = np.asarray(picture, dtype=np.uint8).reshape(picture.height, picture.width, -1)
        pixels = pixels.transpose(2, 0, 1)  # (c, h, w)
        if self.crop is not None:
            pixels = _centre_crop(pixels, *self.crop, rounding=self.crop_rounding)
        if pixels.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{name}: prepared to {pixels.shape[2]}×{pixels.shape[1]} pixels, the model "
                f"takes {self.image_size}×{self.image_size} (preprocessor_config.json resizes "
                "or crops to another size)"
            )
        return np.ascontiguousarray(pixels)

    def _resized_size(self, picture: Any) -> tuple[int, int]:
        """(width, height) for PIL."""
        assert self.resize is not None
        if self.resize[0] != "shortest":
            height, width = self.resize
            return int(width), int(height)
        from qkv.data.image_folder import shorter_side_to

        return shorter_side_to(picture.size, int(self.resize[1]))

    def read(self, path: str | os.PathLike[str]) -> np.ndarray:
        """An image file as the model's input, before normalisation (:meth:`prepare`).

        Raises ``ValueError`` naming the file when it is not a readable image and
        ``FileNotFoundError`` when it does not exist.

        Shape: ``uint8`` ``(c, S, S)``, values 0–255.
        """
        from qkv.data.image_folder import decode_image

        return self.prepare(decode_image(path), str(path))

    def normalize(self, pixels: Tensor) -> Tensor:
        """``(pixels - mean) / std`` in float32.

        Shape: ``(..., c, H, W)`` -> same.
        """
        from qkv.data.images import normalize

        return normalize(pixels, torch.tensor(self.mean), torch.tensor(self.std))

    def to_dict(self) -> dict[str, Any]:
        """This processor as a ``preprocessor_config.json`` that ``transformers``' image
        processors (and :func:`image_processor_from_dict`) read back as the same steps.

        The shorter side resized to the crop's side and the centre cut out is ConvNeXT's
        processor with ``crop_pct`` 1 below 384 pixels (the one that does this since
        transformers 4), ``DeiTImageProcessor`` otherwise; without a crop,
        ``ViTImageProcessor``.
        """
        if self.crop_rounding != "floor" or not self.over_white:
            raise CheckpointError(
                "timm's way of reading images (torchvision's centre crop, transparency "
                "dropped) has no preprocessor_config.json that transformers reads the same"
            )
        size: dict[str, int] | None = None
        if self.resize is not None:
            if self.resize[0] == "shortest":
                size = {"shortest_edge": int(self.resize[1])}
            else:
                size = {"height": int(self.resize[0]), "width": int(self.resize[1])}
        values: dict[str, Any] = {"image_processor_type": "ViTImageProcessor"}
        if self.crop is not None:
            values["image_processor_type"] = "DeiTImageProcessor"
            edge = size and size.get("shortest_edge")
            if edge is not None and self.crop == (edge, edge) and edge < 384:
                values = {"image_processor_type": "ConvNextImageProcessor", "crop_pct": 1.0}
            else:
                crop = {"height": self.crop[0], "width": self.crop[1]}
                values.update(do_center_crop=True, crop_size=crop)
        values.update(do_resize=size is not None, resample=self.resample)
        if size is not None:
            values["size"] = size
        return {
            **values,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [m / 255 for m in self.mean],
            "image_std": [s / 255 for s in self.std],
            # A colour model takes grey and transparent images as RGB, as qkv reads them.
            "do_convert_rgb": self.channels == 3,
        }

    def pixel_values(self, path: str | os.PathLike[str]) -> Tensor:
        """An image file as ``transformers``' processor gives it to the model.

        Shape: ``(c, S, S)`` float32.
        """
        return self.normalize(torch.from_numpy(self.read(path)))


def _centre_crop(
    pixels: np.ndarray, height: int, width: int, *, rounding: str = "floor"
) -> np.ndarray:
    """The centre ``height × width`` of ``(c, h, w)`` pixels; an image smaller than that
    is first padded with zeros around it (``transformers``' ``center_crop``).
    ``rounding``: see :attr:`ImageProcessor.crop_rounding`.

    Shape: ``(c, h, w)`` -> ``(c, height, width)``.
    """
    h, w = pixels.shape[1:]
    top, left = (h - height) // 2, (w - width) // 2
    if rounding == "round" and top >= 0 and left >= 0:
        top, left = round((h - height) / 2), round((w - width) / 2)
    if top >= 0 and left >= 0:
        return pixels[:, top : top + height, left : left + width]
    new_h, new_w = max(height, h), max(width, w)
    padded = np.zeros((pixels.shape[0], new_h, new_w), dtype=pixels.dtype)
    pad_top, pad_left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)  # ceil
    padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[:, top : top + height, left : left + width]  # now top, left >= 0


def _size_setting(
    value: Any, key: str, square: bool, problems: list[str]
) -> tuple[int, int] | tuple[str, int] | None:
    """A ``size`` or ``crop_size`` setting as (height, width) or ("shortest", s); an int
    is a square when ``square`` (``default_to_square``), else the shorter side."""
    if isinstance(value, list | tuple):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
            return int(value[0]), int(value[1])
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value) if square else ("shortest", value)
    if isinstance(value, Mapping):
        keys = {k for k, v in value.items() if v is not None}
        sides = [value.get(k) for k in sorted(keys)]
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides):
            if keys == {"height", "width"}:
                return int(value["height"]), int(value["width"])
            if keys == {"shortest_edge"}:
                return ("shortest", int(value["shortest_edge"]))
    problems.append(
        f"{key} {value!r} is not a size qkv applies ({{'height', 'width'}}, "
        "{'shortest_edge'} or a positive int)"
    )
    return None


def image_processor_from_dict(
    values: Mapping[str, Any],
    *,
    channels: int = 3,
    image_size: int = 224,
    source: str = _PREPROCESSOR_FILE,
) -> ImageProcessor:
    """The :class:`ImageProcessor` of a ``preprocessor_config.json`` (a dict), for a model
    taking ``channels × image_size × image_size`` images.

    Follows ``transformers``' PIL processors of ViT, DeiT, BEiT and ConvNeXT (``resample``,
    ``size`` as height/width or ``shortest_edge``, ``do_center_crop`` and ``crop_size``,
    ConvNeXT's ``crop_pct``, ``do_rescale``/``rescale_factor``, ``do_normalize``/
    ``image_mean``/``image_std``; a missing key takes that processor's default). Anything
    else, or settings that give images of another size than the model's, is refused:
    every problem in one :class:`CheckpointError` naming ``source``.
    """
    problems: list[str] = []
    unknown = sorted(set(values) - _APPLIED_SETTINGS - _IGNORED_SETTINGS)
    if unknown:
        problems.append(f"unknown setting(s) {', '.join(unknown)}")
    kind = str(values.get("image_processor_type") or values.get("feature_extractor_type") or "ViT")
    family = kind.removesuffix("Fast").removesuffix("Pil")
    family = family.removesuffix("ImageProcessor").removesuffix("FeatureExtractor")
    if family not in _PROCESSOR_DEFAULTS:
        known = ", ".join(f"{name}ImageProcessor" for name in _PROCESSOR_DEFAULTS)
        problems.append(f"image_processor_type {kind!r} is not one qkv follows ({known})")
        family = "ViT"
    size_default, resample_default, crop_default, crop_size_default = _PROCESSOR_DEFAULTS[family]
    square = bool(values.get("default_to_square", family != "ConvNext"))

    resample = values.get("resample", resample_default)
    if isinstance(resample, bool) or resample not in RESAMPLE_FILTERS:
        problems.append(f"resample {resample!r} is not a PIL filter number (0-5)")
        resample = 2
    resize: tuple[int, int] | tuple[str, int] | None = None
    if values.get("do_resize", True):
        resize = _size_setting(values.get("size", size_default), "size", square, problems)
    crop: tuple[int, int] | None = None
    if values.get("do_center_crop", crop_default):
        crop_size = values.get("crop_size", crop_size_default)
        found = _size_setting(crop_size, "crop_size", True, problems)
        if found is not None and found[0] == "shortest":
            problems.append("crop_size must give a height and a width")
        elif found is not None:
            crop = (int(found[0]), int(found[1]))
    if "crop_pct" in values and family != "ConvNext":
        problems.append(f"crop_pct is a ConvNeXT setting, and the processor is {kind!r}")
    if family == "ConvNext" and resize is not None:
        # ConvNeXT: below 384 px, the shorter side to s / crop_pct and the centre s × s
        # cut out (before any crop_size crop); from 384 px, squashed to s × s.
        if resize[0] != "shortest":
            problems.append("ConvNeXT's processor resizes by size.shortest_edge")
        else:
            edge, crop_pct = int(resize[1]), values.get("crop_pct", 224 / 256)
            if not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
                problems.append(f"crop_pct {crop_pct!r} should be in (0, 1]")
            elif edge < 384:
                if crop is not None:
                    problems.append("ConvNeXT's crop_pct crop followed by a crop_size crop")
                resize, crop = ("shortest", int(edge / crop_pct)), (edge, edge)
            else:
                resize = (edge, edge)
    if values.get("do_pad"):
        problems.append("do_pad is true (qkv does not pad images)")

    scale = 1.0
    if values.get("do_rescale", True):
        scale = values.get("rescale_factor", 1 / 255)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
            problems.append(f"rescale_factor {scale!r} should be a positive number")
            scale = 1 / 255
    mean, std = [0.0] * channels, [1.0 / scale] * channels
    if values.get("do_normalize", True):
        path = Path(source)
        try:
            m = _channels(values.get("image_mean", 0.5), channels, "image_mean", path)
            s = _channels(values.get("image_std", 0.5), channels, "image_std", path)
        except CheckpointError as error:
            problems.append(str(error).removeprefix(f"{path}: "))
        else:
            if any(v <= 0 for v in s):
                problems.append(f"image_std {s} has a value <= 0")
            mean, std = [v / scale for v in m], [v / scale for v in s]

    # The size of what comes out, where the settings fix it.
    out = crop if crop is not None else resize if resize and resize[0] != "shortest" else None
    if out is not None and tuple(out) != (image_size, image_size):
        problems.append(
            f"gives {out[1]}×{out[0]} images (width×height), the model takes "
            f"{image_size}×{image_size}"
        )
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    return ImageProcessor(
        channels, image_size, resize, int(resample), crop, tuple(mean), tuple(std)
    )


def load_image_processor(directory: str | os.PathLike[str]) -> ImageProcessor:
    """The :class:`ImageProcessor` of a Hugging Face ViT folder: its
    ``preprocessor_config.json`` (:func:`image_processor_from_dict`) for the model of its
    ``config.json``. Without the file, ``ViTImageProcessor``'s defaults (both sides
    resized bilinearly to the model's ``image_size``; mean and std 0.5 after rescaling
    by 1/255).

    This is how ``qkv vit classify`` and ``qkv attention`` read image files for such a
    folder.
    """
    path = Path(directory)
    config = read_config(path) if (path / "config.json").is_file() else {}
    channels = config.get("num_channels", 3)
    if channels not in (1, 3):
        raise CheckpointError(f"{path / 'config.json'}: num_channels {channels!r}, not 1 or 3")
    image_size = _square(config.get("image_size", 224), path / "config.json")
    file = path / _PREPROCESSOR_FILE
    values: Mapping[str, Any] = read_json(file) if file.is_file() else {}
    if not values:
        values = {"size": {"height": image_size, "width": image_size}}
    return image_processor_from_dict(
        values, channels=channels, image_size=image_size, source=str(file)
    )


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------

# timm's VisionTransformer names -> qkv names, layer {i}: the same modules as the Hugging
# Face maps, except that timm fuses q, k and v into one projection (attn.qkv, rows q then
# k then v), which the loader splits: its qkv-side name is no tensor of qkv's.
_TIMM_LAYER_MODULES = {
    "norm1": "self_attn_norm.norm",
    "attn.qkv": "self_attn.qkv",  # split into self_attn.{q,k,v}_proj
    "attn.proj": "self_attn.out_proj",
    "norm2": "feed_forward_norm.norm",
    "mlp.fc1": "feed_forward.linear1",
    "mlp.fc2": "feed_forward.linear2",
}
_TIMM_OUTSIDE_LAYERS = {
    "cls_token": "cls_token",
    "pos_embed": "position_embeddings",
    "patch_embed.proj.weight": _PATCH_WEIGHT,
    "patch_embed.proj.bias": "patch_embedding.proj.bias",
    "norm.weight": "encoder.norm.weight",
    "norm.bias": "encoder.norm.bias",
    # The tanh pre-logits layer of timm's older checkpoints (representation_size).
    "pre_logits.fc.weight": "pre_logits.0.weight",
    "pre_logits.fc.bias": "pre_logits.0.bias",
    "head.weight": "head.weight",
    "head.bias": "head.bias",
}
#: timm ``VisionTransformer`` name -> qkv name; ``{i}`` is the layer index.
TIMM_TO_QKV: dict[str, str] = {
    **_TIMM_OUTSIDE_LAYERS,
    **{
        f"blocks.{{i}}.{timm}.{p}": f"encoder.layers.{{i}}.{qkv}.{p}"
        for timm, qkv in _TIMM_LAYER_MODULES.items()
        for p in ("weight", "bias")
    },
}
_TIMM_NAMES = NameMap(TIMM_TO_QKV)
# Tensors that have a qkv form though not a name of their own: layer scale (folded into
# the projection before it), the norm after pooling (for the class token, the final norm).
_LAYER_SCALE = re.compile(r"blocks\.(\d+)\.(ls[12]\.gamma|gamma_[12])$")
# Biases a timm model may leave out (qkv_bias=False, proj_bias=False): zeros in qkv.
_OPTIONAL_BIASES = re.compile(r"(blocks\.\d+\.attn\.(qkv|proj)|patch_embed\.proj)\.bias$")
# What a timm ViT may have that qkv's does not, and what it is.
_TIMM_UNSUPPORTED = {
    "reg_token": "register tokens (reg_tokens)",
    "norm_pre.": "LayerNorm before the blocks (pre_norm)",
    "attn_pool.": "attention pooling (global_pool='map')",
    "patch_embed.norm.": "norm in the patch embedding",
    ".q_norm.": "q/k normalisation (qk_norm)",
    ".k_norm.": "q/k normalisation (qk_norm)",
    ".attn.norm.": "norm inside attention (scale_attn_norm)",
    ".mlp.norm.": "norm inside the MLP (scale_mlp_norm)",
    ".attn.gate.": "gated attention",
}
# The heads of timm's named sizes (vit_base_patch16_224 and the like): (width, heads).
_TIMM_SIZES = {
    "tiny": (192, 3), "small": (384, 6), "medium": (512, 8), "base": (768, 12),
    "large": (1024, 16), "huge": (1280, 16), "giant": (1408, 16), "gigantic": (1664, 16),
}  # fmt: skip
_TIMM_EPS = 1e-6  # timm's LayerNorm


# timm's data configuration (pretrained_cfg), as its evaluation transform applies it.
_TIMM_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_TIMM_DEFAULTS = {
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),  # ImageNet's, timm's IMAGENET_DEFAULT_MEAN
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


def timm_image_processor(
    config: Mapping[str, Any], *, channels: int, image_size: int, source: str = "config.json"
) -> ImageProcessor:
    """How timm reads image files for the model of its Hub ``config.json``: its
    ``pretrained_cfg`` as ``timm.data.create_transform`` applies it for evaluation (the
    shorter side resized to ``floor(input size / crop_pct)`` with ``interpolation``, the
    centre cut out as torchvision's ``CenterCrop`` cuts it, then ``(x / 255 - mean) /
    std``). A missing key takes timm's default; a ``crop_mode`` other than ``center``, a
    ``crop_border_pixels`` or an ``input_size`` other than the model's is refused, every
    problem in one :class:`CheckpointError` naming ``source``.
    """
    cfg = {**_TIMM_DEFAULTS, **dict(config.get("pretrained_cfg") or {})}
    problems = []
    size = cfg.get("input_size") or [channels, image_size, image_size]
    if list(size) != [channels, image_size, image_size]:
        problems.append(
            f"input_size {list(size)}, the model takes {[channels, image_size, image_size]}"
        )
    if cfg.get("crop_mode") not in (None, "center"):
        problems.append(f"crop_mode {cfg['crop_mode']!r} (qkv follows timm's 'center')")
    if cfg.get("crop_border_pixels"):
        problems.append("crop_border_pixels is set (qkv does not trim borders)")
    interpolation = cfg["interpolation"] or _TIMM_DEFAULTS["interpolation"]
    filter_number = _TIMM_FILTERS.get(str(interpolation))
    if filter_number is None:
        problems.append(
            f"interpolation {cfg['interpolation']!r} is not one of {list(_TIMM_FILTERS)}"
        )
    crop_pct = cfg["crop_pct"] or _TIMM_DEFAULTS["crop_pct"]
    if not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
        problems.append(f"crop_pct {crop_pct!r} should be in (0, 1]")
        crop_pct = 1.0
    path = Path(source)
    try:
        mean = _channels(list(cfg["mean"]), channels, "mean", path)
        std = _channels(list(cfg["std"]), channels, "std", path)
    except CheckpointError as error:
        problems.append(str(error).removeprefix(f"{path}: "))
        mean, std = [0.5] * channels, [0.5] * channels
    if any(v <= 0 for v in std):
        problems.append(f"std {std} has a value <= 0")
    if problems:
        raise CheckpointError(f"{source}: pretrained_cfg: " + "; ".join(problems))
    return ImageProcessor(
        channels=channels,
        image_size=image_size,
        resize=("shortest", math.floor(image_size / crop_pct)),
        resample=int(filter_number or 0),
        crop=(image_size, image_size),
        mean=tuple(255.0 * m for m in mean),
        std=tuple(255.0 * v for v in std),
        crop_rounding="round",
        over_white=False,
    )


def is_timm_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` is the one timm writes to the Hub (an ``architecture``,
    no ``model_type``)."""
    return "architecture" in config and "model_type" not in config


def _unsupported_problem(state_dict: Mapping[str, Tensor]) -> list[str]:
    found = {what for key in state_dict for part, what in _TIMM_UNSUPPORTED.items() if part in key}
    return [f"qkv's ViT cannot represent: {', '.join(sorted(found))}"] if found else []


def _timm_layers(state_dict: Mapping[str, Tensor]) -> int:
    indices = [int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def _timm_heads(architecture: Any, width: int) -> int | None:
    found = re.match(r"(?:vit|deit3?)_([a-z]+)_", str(architecture or ""))
    if found and _TIMM_SIZES.get(found.group(1), (None,))[0] == width:
        return _TIMM_SIZES[found.group(1)][1]
    return None


def config_from_timm(
    state_dict: Mapping[str, Tensor], values: Mapping[str, Any] | None = None, **overrides: Any
) -> tuple[ViTConfig, bool]:
    """The :class:`ViTConfig` of a timm ViT state dict, and whether its position table
    leaves out the class token (``no_embed_class``).

    Sizes come from the tensors' shapes where they can (width, depth, patch size,
    channels, image size, feed-forward width, classes); the number of heads from
    ``values`` (timm's ``VisionTransformer`` arguments, or the ``config.json`` timm writes
    to the Hugging Face Hub: ``model_args``, ``architecture``) or ``overrides``
    (``num_heads=``). Every problem in one :class:`CheckpointError`.
    """
    values = dict(values or {})
    args = {**values, **dict(values.get("model_args") or {})}
    # Tensors qkv cannot represent are listed with the other weight problems
    # (timm_to_qkv_state_dict); the sizes are found around them.
    problems = []
    pool = args.get("global_pool", "token")
    if pool not in ("token", None):
        problems.append(
            f"global_pool {pool!r}: qkv's ViT classifies from the class token ('token')"
        )
    if args.get("class_token", True) is False:
        problems.append("class_token is false: qkv's ViT has a class token")
    if "cls_token" not in state_dict:
        problems.append("no cls_token: qkv's ViT has a class token")
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    width = shapes.get("cls_token", (0,))[-1]
    patch = shapes.get("patch_embed.proj.weight")
    if patch is None or len(patch) not in (2, 4):
        problems.append(f"patch_embed.proj.weight should be (d, c, p, p), got {patch}")
        patch_size, channels = 1, 3
    elif len(patch) == 4:
        if patch[2] != patch[3]:
            problems.append(f"qkv's ViT takes square patches, got {patch[2]}×{patch[3]}")
        channels, patch_size = patch[1], patch[2]
    else:  # timm's oldest checkpoints: (d, c·p·p)
        channels = int(args.get("in_chans", overrides.get("in_channels", 3)))
        patch_size = round((patch[1] / channels) ** 0.5)
    table = shapes.get("pos_embed")
    no_embed_class, grid = False, 0
    if table is None or len(table) != 3:
        problems.append(f"pos_embed should be (1, 1 + N, d), got {table}")
    else:
        registers = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
        length = table[1] - registers
        grid = round(length**0.5)
        no_embed_class = bool(args.get("no_embed_class", grid * grid == length))
        n = length if no_embed_class else length - 1
        grid = round(max(n, 0) ** 0.5)
        if grid * grid != n or n == 0:
            problems.append(f"pos_embed has {table[1]} rows, not a square grid of patches (+1)")
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    head = shapes.get("head.weight")
    if head is None:
        problems.append("no head.weight: qkv's ViT has a classification head (num_classes > 0)")
    heads = overrides.pop("num_heads", None) or args.get("num_heads")
    heads = heads or _timm_heads(values.get("architecture"), width)
    if heads is None:
        problems.append(
            "the number of heads is not in the weights: pass num_heads= (or a timm "
            "config.json with model_args or a vit_<size>_... architecture)"
        )
    if problems:
        raise CheckpointError("unsupported timm ViT: " + "; ".join(problems))
    pre_logits = shapes.get("pre_logits.fc.weight")
    fields: dict[str, Any] = {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": channels,
        "num_classes": head[0] if head else 1,
        "d_model": width,
        "num_layers": _timm_layers(state_dict),
        "num_heads": int(heads),  # type: ignore[arg-type]
        "d_ff": fc1[0] if fc1 else 4 * width,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "layer_norm_eps": _TIMM_EPS,
        "positional": "learned",
        "representation_size": pre_logits[0] if pre_logits else None,
        "init": "trunc_normal",
    }
    try:
        return ViTConfig(**{**fields, **overrides}), no_embed_class
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"timm weights do not describe a ViT qkv builds: {error}") from None


def timm_to_qkv_state_dict(
    state_dict: Mapping[str, Tensor],
    config: ViTConfig,
    *,
    no_embed_class: bool = False,
    expected: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """A timm ViT state dict under qkv's names and shapes, for a model of ``config``.

    The fused ``attn.qkv`` is split into q, k and v; layer scale (``ls1``/``ls2``, or the
    older ``gamma_1``/``gamma_2``) is folded into ``attn.proj`` and ``mlp.fc2``; a
    position table without the class token's row (``no_embed_class``) gets a zero row
    (the class token then has no position, as in timm); biases timm leaves out
    (``qkv_bias=False``, ``proj_bias=False``) become zeros; ``fc_norm`` after class-token
    pooling is the final norm. Whatever qkv's ViT cannot represent, unknown, missing and
    misshapen tensors: every one listed in one :class:`CheckpointError`. ``expected``:
    the state dict of the model to load into (by default one of ``config`` is built on
    the meta device, for its names and shapes).
    """
    if expected is None:
        with torch.device("meta"):
            expected = ViT(config).state_dict()
    own = expected
    d = config.d_model
    state = {k: v for k, v in state_dict.items()}
    problems = _unsupported_problem(state)
    if "fc_norm.weight" in state:
        if "norm.weight" in state:
            problems.append("both norm and fc_norm: two final norms")
        else:  # per-token LayerNorm: after pooling the class token = before
            state["norm.weight"] = state.pop("fc_norm.weight")
            state["norm.bias"] = state.pop("fc_norm.bias", torch.zeros(d))
    scales = {}
    for key in [k for k in state if _LAYER_SCALE.match(k)]:
        i, name = _LAYER_SCALE.match(key).groups()  # type: ignore[union-attr]
        scales[(int(i), "attn.proj" if name in ("ls1.gamma", "gamma_1") else "mlp.fc2")] = (
            state.pop(key)
        )
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        name = _TIMM_NAMES.qkv_name(key)
        if name is None:
            if not any(part in key for part in _TIMM_UNSUPPORTED):
                unknown.append(key)
            continue
        converted[name] = tensor
    if unknown:
        problems.append(f"{len(unknown)} timm key(s) have no qkv name: {sorted(unknown)}")
    for i in range(config.num_layers):
        for bias in (f"blocks.{i}.attn.qkv.bias", f"blocks.{i}.attn.proj.bias"):
            name = _TIMM_NAMES.qkv_name(bias)
            if name not in converted and f"blocks.{i}.attn.qkv.weight" in state:
                rows = 3 * d if "qkv" in bias else d
                converted[name] = torch.zeros(rows)  # type: ignore[index]
    if "patch_embedding.proj.bias" not in converted and "patch_embed.proj.weight" in state:
        converted["patch_embedding.proj.bias"] = torch.zeros(d)
    # Shapes, in timm's layout, before any tensor is changed.
    qkv_to_timm = {qkv: timm for timm, qkv in _TIMM_NAMES.expand(config.num_layers).items()}
    expected_shapes = {}
    for name, tensor in own.items():
        expected_shapes[name] = tuple(tensor.shape)
    expected_shapes[_PATCH_WEIGHT] = (d, config.in_channels, config.patch_size, config.patch_size)
    n = config.num_patches + (0 if no_embed_class else 1)
    expected_shapes["position_embeddings"] = (1, n, d)
    for i in range(config.num_layers):
        for p, shape in (("weight", (3 * d, d)), ("bias", (3 * d,))):
            expected_shapes[f"encoder.layers.{i}.self_attn.qkv.{p}"] = shape
            for part in "qkv":
                expected_shapes.pop(f"encoder.layers.{i}.self_attn.{part}_proj.{p}")
    missing = sorted(qkv_to_timm.get(n, n) for n in expected_shapes if n not in converted)
    if missing:
        problems.append(f"missing timm keys {missing}")
    extra = sorted(qkv_to_timm.get(n, n) for n in converted if n not in expected_shapes)
    if extra:
        problems.append(f"keys of layers or layers the model does not have {extra}")
    mismatched = []
    for name, tensor in sorted(converted.items()):
        want = expected_shapes.get(name)
        shape = tuple(tensor.shape)
        if name == _PATCH_WEIGHT and len(shape) == 2:
            want = (d, config.in_channels * config.patch_size**2)
        if want is not None and shape != want:
            mismatched.append(f"{qkv_to_timm.get(name, name)}: model {want}, given {shape}")
    for (i, module), gamma in sorted(scales.items()):
        if tuple(gamma.shape) != (d,) or i >= config.num_layers:
            given = tuple(gamma.shape)
            mismatched.append(f"layer scale of blocks.{i}.{module}: want ({d},), given {given}")
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    if problems:
        raise CheckpointError("timm weights do not fit this ViT: " + "; ".join(problems))

    out = {}
    for name, tensor in converted.items():
        if name == _PATCH_WEIGHT:
            tensor = tensor.reshape(d, -1)  # (d, c, p, p) -> (d, c·p·p)
        elif name == "position_embeddings" and no_embed_class:
            tensor = torch.cat([tensor.new_zeros(1, 1, d), tensor], dim=1)  # (1, 1 + N, d)
        elif name.endswith("self_attn.qkv.weight") or name.endswith("self_attn.qkv.bias"):
            prefix, p = name.rsplit(".qkv.", 1)
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{part}_proj.{p}"] = chunk
            continue
        out[name] = tensor
    for (i, module), gamma in scales.items():
        # x + γ ⊙ (W h + b) = x + (diag(γ) W) h + γ ⊙ b
        qkv_module = "self_attn.out_proj" if module == "attn.proj" else "feed_forward.linear2"
        prefix = f"encoder.layers.{i}.{qkv_module}"
        out[f"{prefix}.weight"] = gamma[:, None].float() * out[f"{prefix}.weight"].float()
        out[f"{prefix}.bias"] = gamma.float() * out[f"{prefix}.bias"].float()
    return out


def from_timm_state_dict(
    state_dict: Mapping[str, Tensor],
    config: ViTConfig | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ViT:
    """A qkv :class:`ViT` with the weights of a timm ``VisionTransformer`` state dict.

    Args:
        state_dict: timm's names (``blocks.{i}.attn.qkv.weight``, ...); a checkpoint
            that wraps them in ``"model"`` or ``"state_dict"`` is unwrapped, as timm's
            ``checkpoint_filter_fn`` does.
        config: a :class:`ViTConfig` to load into, or timm's settings (the keyword
            arguments of ``VisionTransformer``, or the ``config.json`` timm writes to the
            Hub), from which and the tensors' shapes the sizes are found
            (:func:`config_from_timm`).
        overrides: :class:`ViTConfig` fields (``num_heads=`` when nothing else says it).

    What qkv's ViT cannot represent (average pooling, register tokens, a norm before
    the blocks, q/k norms) and unknown, missing or misshapen tensors are refused, every
    one listed in one :class:`CheckpointError`. Returns the model in training mode.
    """
    for wrapper in ("model", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            state_dict = inner
    if isinstance(config, ViTConfig):
        pos = state_dict.get("pos_embed")
        no_embed_class = pos is not None and pos.shape[1] == config.num_patches
        model_config = dataclasses.replace(config, **overrides) if overrides else config
    else:
        model_config, no_embed_class = config_from_timm(state_dict, config, **overrides)
    model = ViT(model_config)
    weights = timm_to_qkv_state_dict(
        state_dict, model_config, no_embed_class=no_embed_class, expected=model.state_dict()
    )
    model.load_state_dict(weights, strict=True)
    return model


def timm_config(config: ViTConfig | ViT) -> dict[str, Any]:
    """The keyword arguments of timm's ``VisionTransformer`` for qkv's ``config``:
    ``timm.models.vision_transformer.VisionTransformer(**timm_config(model))`` then
    loads :func:`to_timm_state_dict` ``(model)`` strictly.

    timm's LayerNorms use eps 1e-6 whatever qkv's ``layer_norm_eps`` (Hugging Face's
    1e-12 changes the outputs by far less than float32's rounding of them matters).
    """
    c = config.config if isinstance(config, ViT) else config
    if c.representation_size is not None:
        raise CheckpointError(
            f"representation_size is {c.representation_size}: timm's VisionTransformer "
            "has no pre-logits layer"
        )
    return {
        "img_size": c.image_size,
        "patch_size": c.patch_size,
        "in_chans": c.in_channels,
        "num_classes": c.num_classes,
        "global_pool": "token",
        "embed_dim": c.d_model,
        "depth": c.num_layers,
        "num_heads": c.num_heads,
        "mlp_ratio": c.d_ff / c.d_model,
        "qkv_bias": True,
        "class_token": True,
        "no_embed_class": False,
    }


def to_timm_state_dict(model: ViT) -> dict[str, Tensor]:
    """``model``'s weights under timm's names and shapes (q, k and v fused into
    ``attn.qkv``; the patch weight as a convolution's ``(d, c, p, p)``), for a
    ``VisionTransformer`` built with :func:`timm_config`."""
    c = model.config
    timm_config(c)  # refuses what timm cannot hold
    own = model.state_dict()
    own["position_embeddings"] = model.position_embeddings  # a buffer when sinusoidal
    out = {}
    for timm, qkv in _TIMM_NAMES.expand(c.num_layers).items():
        if qkv.startswith("pre_logits."):
            continue
        if ".self_attn.qkv." in qkv:
            prefix, p = qkv.rsplit(".qkv.", 1)
            out[timm] = torch.cat([own[f"{prefix}.{part}_proj.{p}"] for part in "qkv"])
            continue
        tensor = own[qkv]
        if qkv == _PATCH_WEIGHT:
            tensor = tensor.reshape(c.d_model, c.in_channels, c.patch_size, c.patch_size)
        out[timm] = tensor
    return {k: v.detach().clone() for k, v in out.items()}


_TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def from_timm(path: str | os.PathLike[str], **overrides: Any) -> ViT:
    """A timm ViT checkpoint: a file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read
    with ``weights_only=True``), or a folder as timm writes it to the Hugging Face Hub
    (``model.safetensors`` or ``pytorch_model.bin``, and ``config.json`` with
    ``architecture``, ``model_args``, ...). A ``config.json`` beside a file is read too
    when it is timm's (it has an ``architecture``). Sizes as in :func:`config_from_timm`;
    ``overrides`` are :class:`ViTConfig` fields (``num_heads=``).

    Raises ``FileNotFoundError`` without the file or weights, :class:`CheckpointError`
    for a file that is not a checkpoint or weights that do not fit.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [folder / name for name in _TIMM_WEIGHT_FILES if (folder / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"no weights in {path}: expected {' or '.join(_TIMM_WEIGHT_FILES[:2])}"
            )
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        config = read_config(folder)
        if "architecture" not in config:
            config = {}  # a Hugging Face config.json, not timm's
    if path.suffix == ".safetensors":
        from qkv.convert.common import _load_safetensors

        state = _load_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and format errors alike
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return from_timm_state_dict(state, config, **overrides)
