"""Hugging Face BERT, RoBERTa and XLM-RoBERTa checkpoints in and out of qkv's
:mod:`qkv.models.bert`.

The shape every converter shares (:mod:`qkv.convert.common`): :func:`from_pretrained`
reads a checkpoint directory (``config.json`` and the weights: ``model.safetensors``,
a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``),
:func:`save_pretrained` writes one. Loading maps ``config.json`` to
:class:`~qkv.models.bert.BertConfig` and every tensor name through one
:class:`~qkv.convert.common.NameMap` built from :data:`BACKBONE_NAMES`,
:data:`LAYER_NAMES` and :data:`HEAD_NAMES` (:func:`name_map`; saving runs it
backwards). Whatever does not fit is refused, all of it listed in one
:class:`CheckpointError`: unknown keys, missing keys, shapes that differ,
architectures qkv does not build.

Two kinds of checkpoint key are accepted without a qkv parameter:
- buffers and tied copies (:data:`DERIVED_KEYS`): ``embeddings.position_ids``, and
  the MLM decoder, which must equal the word embeddings it is tied to;
- weights of a head that is not being loaded (:data:`OTHER_HEADS`, for example the
  MLM head when loading a classifier), and the pooler of a checkpoint loaded into a
  model without one (the token classifier, the MLM head): dropped, and logged.

Parts of the model the checkpoint has none of — the task head and the pooler of a
checkpoint that was saved without them — start from BERT's initialisation and
are logged at WARNING level: that is the fine-tuning step "load, add a task head".
A part that is only partly present is an error.

RoBERTa and XLM-RoBERTa (``model_type`` ``roberta``, ``xlm-roberta``) are the same
model with three :class:`~qkv.models.bert.BertConfig` options set
(``position_offset_by_pad``, ``classifier_head="dense"``, ``model_type``) and other
names around the same backbone names (:data:`NAMINGS`): the backbone under
``roberta.``, the MLM head ``lm_head.dense/layer_norm/decoder/bias``, the sequence
classifier ``classifier.dense`` and ``classifier.out_proj``.

BERT's names are the same in ``transformers`` 4.x and 5.x (the all-MiniLM-L6-v2
checkpoint was written by 4.8.2); the tests use 5.23.0 as the oracle.

Notation: i = layer index; "HF name" = without the ``bert.`` (``roberta.``) prefix that
Hugging Face's heads put before the backbone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from qkv.convert.common import (
    CheckpointError,
    NameMap,
    read_config,
    read_weights,
    state_problems,
    write_pretrained,
)
from qkv.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

__all__ = [
    "BACKBONE_NAMES",
    "DERIVED_KEYS",
    "HEAD_NAMES",
    "LAYER_NAMES",
    "MODEL_TYPES",
    "NAMINGS",
    "CheckpointError",
    "Naming",
    "config_from_hf",
    "config_to_hf",
    "from_pretrained",
    "hf_to_qkv_names",
    "load_hf_state_dict",
    "name_map",
    "save_pretrained",
]

log = logging.getLogger(__name__)

Head = Literal["mlm", "classification", "token_classification"]
AnyBert = BertModel | BertForMaskedLM | BertForSequenceClassification | BertForTokenClassification

# ---------------------------------------------------------------------------------------------
# The name map: Hugging Face name -> qkv name.
# ---------------------------------------------------------------------------------------------

#: Backbone parameters outside the layers (HF name -> qkv name in :class:`BertModel`).
BACKBONE_NAMES = {
    "embeddings.word_embeddings.weight": "embeddings.token.embedding.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.embedding.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.segment.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
}
_POOLER = ("pooler.dense.weight", "pooler.dense.bias")

# Modules of one layer (HF -> qkv), each with a weight and a bias.
_LAYER_MODULES = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_norm.norm",
    "intermediate.dense": "feed_forward.linear1",
    "output.dense": "feed_forward.linear2",
    "output.LayerNorm": "feed_forward_norm.norm",
}

#: Parameters of layer ``{i}`` (HF name template -> qkv name template in :class:`BertModel`).
LAYER_NAMES = {
    f"encoder.layer.{{i}}.{hf}.{p}": f"encoder.layers.{{i}}.{qkv}.{p}"
    for hf, qkv in _LAYER_MODULES.items()
    for p in ("weight", "bias")
}

#: Head parameters (full HF name -> qkv name in the head model).
HEAD_NAMES: dict[str, dict[str, str]] = {
    "mlm": {
        "cls.predictions.transform.dense.weight": "transform.weight",
        "cls.predictions.transform.dense.bias": "transform.bias",
        "cls.predictions.transform.LayerNorm.weight": "transform_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "transform_norm.bias",
        "cls.predictions.bias": "decoder_bias",
    },
    "classification": {
        "classifier.weight": "classifier.weight",
        "classifier.bias": "classifier.bias",
    },
    "token_classification": {
        "classifier.weight": "classifier.weight",
        "classifier.bias": "classifier.bias",
    },
}

#: Checkpoint keys that are not parameters: non-persistent buffers older
#: ``transformers`` versions saved, and the MLM decoder tied to other weights
#: (key -> the HF name it must equal, or ``None`` for a buffer).
DERIVED_KEYS: dict[str, str | None] = {
    "embeddings.position_ids": None,
    "embeddings.token_type_ids": None,
    "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}

#: Prefixes of heads that may sit in a checkpoint beside the one being loaded.
OTHER_HEADS = ("cls.predictions.", "cls.seq_relationship.", "classifier.", "qa_outputs.")

#: RoBERTa's head names (XLM-RoBERTa's are the same); the backbone's are BERT's.
ROBERTA_HEAD_NAMES: dict[str, dict[str, str]] = {
    "mlm": {
        "lm_head.dense.weight": "transform.weight",
        "lm_head.dense.bias": "transform.bias",
        "lm_head.layer_norm.weight": "transform_norm.weight",
        "lm_head.layer_norm.bias": "transform_norm.bias",
        "lm_head.bias": "decoder_bias",
    },
    "classification": {
        f"classifier.{layer}.{p}": f"classifier.{layer}.{p}"
        for layer in ("dense", "out_proj")
        for p in ("weight", "bias")
    },
    "token_classification": HEAD_NAMES["token_classification"],
}


@dataclass(frozen=True)
class Naming:
    """How one Hugging Face family names what is around the shared backbone names."""

    model_type: str
    prefix: str  # before the backbone names in a checkpoint with a head
    architecture: str  # "Bert": BertModel, BertForMaskedLM, ...
    heads: dict[str, dict[str, str]]  # head -> HF name -> qkv name
    derived: dict[str, str | None]  # see DERIVED_KEYS
    other_heads: tuple[str, ...]  # see OTHER_HEADS
    defaults: dict[str, Any]  # config.json values Hugging Face assumes when absent
    # The BertConfig options this family fixes (a checkpoint of the family is always so).
    options: dict[str, Any]


_ROBERTA_DERIVED: dict[str, str | None] = {
    "embeddings.position_ids": None,
    "embeddings.token_type_ids": None,
    "lm_head.decoder.weight": "embeddings.word_embeddings.weight",
    "lm_head.decoder.bias": "lm_head.bias",
}
_ROBERTA_OPTIONS = {"position_offset_by_pad": True, "classifier_head": "dense"}

#: ``model_type`` -> its naming.
NAMINGS: dict[str, Naming] = {
    "bert": Naming(
        "bert",
        "bert.",
        "Bert",
        HEAD_NAMES,
        DERIVED_KEYS,
        OTHER_HEADS,
        {"vocab_size": 30522, "pad_token_id": 0},
        {"position_offset_by_pad": False, "classifier_head": "pooler"},
    ),
    "roberta": Naming(
        "roberta",
        "roberta.",
        "Roberta",
        ROBERTA_HEAD_NAMES,
        _ROBERTA_DERIVED,
        ("lm_head.", "classifier.", "qa_outputs."),
        {"vocab_size": 50265, "pad_token_id": 1},
        _ROBERTA_OPTIONS,
    ),
    "xlm-roberta": Naming(
        "xlm-roberta",
        "roberta.",
        "XLMRoberta",
        ROBERTA_HEAD_NAMES,
        _ROBERTA_DERIVED,
        ("lm_head.", "classifier.", "qa_outputs."),
        {"vocab_size": 30522, "pad_token_id": 1},
        _ROBERTA_OPTIONS,
    ),
}
#: The ``model_type`` values this module reads and writes.
MODEL_TYPES = tuple(NAMINGS)

_MODELS: dict[Head | None, type[AnyBert]] = {
    None: BertModel,
    "mlm": BertForMaskedLM,
    "classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
}
# Hugging Face's class name, after the family's architecture prefix.
_ARCHITECTURES = {
    BertModel: "Model",
    BertForMaskedLM: "ForMaskedLM",
    BertForSequenceClassification: "ForSequenceClassification",
    BertForTokenClassification: "ForTokenClassification",
}

# config.json key -> BertConfig field, with Hugging Face's default for a missing key.
_CONFIG_KEYS: dict[str, tuple[str, Any]] = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("d_model", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("d_ff", 3072),
    "max_position_embeddings": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "hidden_dropout_prob": ("dropout", 0.1),
    "attention_probs_dropout_prob": ("attention_dropout", 0.1),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "initializer_range": ("init_std", 0.02),
    "pad_token_id": ("pad_id", 0),
}


def _normalise(key: str, prefix: str = "bert.") -> str:
    """HF name as in :data:`BACKBONE_NAMES`: no ``bert.`` (``prefix``), and the TF-era
    LayerNorm names ``gamma``/``beta`` (old converted checkpoints) as ``weight``/``bias``."""
    key = key.removeprefix(prefix)
    if "LayerNorm." in key:
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight")
        key = key.replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def name_map(head: Head | None = None, *, pooler: bool = True, model_type: str = "bert") -> NameMap:
    """The name map of one model: HF name (no ``bert.``/``roberta.`` prefix) -> qkv
    parameter name; ``model_type`` picks the head names (:data:`NAMINGS`).

    Backbone names get qkv's ``bert.`` prefix when there is a head, as the heads
    hold their backbone in ``self.bert``.
    """
    prefix = "" if head is None else "bert."
    backbone = {**BACKBONE_NAMES, **LAYER_NAMES}
    templates = {hf: prefix + qkv for hf, qkv in backbone.items() if pooler or hf not in _POOLER}
    if head is not None:
        templates.update(NAMINGS[model_type].heads[head])
    return NameMap(templates)


def hf_to_qkv_names(
    num_layers: int, head: Head | None = None, *, pooler: bool = True, model_type: str = "bert"
) -> dict[str, str]:
    """:func:`name_map` written out for a model of ``num_layers`` layers."""
    return name_map(head, pooler=pooler, model_type=model_type).expand(num_layers)


def _head_of(model: nn.Module) -> Head | None:
    for head, cls in _MODELS.items():
        if type(model) is cls:
            return head
    raise TypeError(f"expected one of qkv's BERT models, got {type(model).__name__}")


def _backbone(model: AnyBert) -> BertModel:
    return model if isinstance(model, BertModel) else model.bert


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def _family_problems(config: BertConfig) -> list[str]:
    """How ``config`` differs from what its ``model_type`` always is (:data:`NAMINGS`):
    a RoBERTa without its positions, or a BERT with RoBERTa's head, has no
    Hugging Face class to go to."""
    naming = NAMINGS[config.model_type]
    return [
        f"{field} is {getattr(config, field)!r}; a {config.model_type!r} model has {value!r}"
        for field, value in naming.options.items()
        if getattr(config, field) != value
    ]


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> BertConfig:
    """``config.json`` -> :class:`BertConfig`; refuses what qkv's BERT does not build.

    ``model_type`` ``bert``, ``roberta`` or ``xlm-roberta`` (the last two set the
    options :data:`NAMINGS` lists). ``overrides`` replace fields afterwards (say
    ``attention_dropout=0.0``).
    """
    problems = []
    model_type = hf.get("model_type")
    if model_type not in NAMINGS:
        problems.append(f"model_type is {model_type!r}, not 'bert', 'roberta' or 'xlm-roberta'")
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(
            f"hidden_act is {hf['hidden_act']!r}; qkv's BERT uses the exact (erf) 'gelu'"
        )
    if hf.get("position_embedding_type", "absolute") not in (None, "absolute"):
        problems.append(
            f"position_embedding_type is {hf['position_embedding_type']!r}; "
            "only 'absolute' (learned) positions are supported"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            problems.append(f"{flag} is true; qkv's BERT is an encoder only")
    if "embedding_size" in hf and hf["embedding_size"] != hf.get("hidden_size"):
        problems.append(f"embedding_size {hf['embedding_size']} differs from hidden_size")
    if problems:
        raise CheckpointError("unsupported BERT configuration: " + "; ".join(problems))
    naming = NAMINGS[str(model_type)]
    defaults = {
        key: naming.defaults.get(key, default) for key, (_, default) in _CONFIG_KEYS.items()
    }
    values = {field: hf.get(key, defaults[key]) for key, (field, _) in _CONFIG_KEYS.items()}
    if values["pad_id"] is None:
        values["pad_id"] = defaults["pad_token_id"]
    config = BertConfig(**{**values, **naming.options, "model_type": model_type, **overrides})
    problems = _family_problems(config)
    if problems:
        raise CheckpointError("unsupported overrides: " + "; ".join(problems))
    return config


def config_to_hf(model: AnyBert) -> dict[str, Any]:
    """The ``config.json`` Hugging Face needs to rebuild ``model``."""
    c = model.config
    problems = _family_problems(c)
    if problems:
        raise ValueError("cannot write a Hugging Face config: " + "; ".join(problems))
    naming = NAMINGS[c.model_type]
    architecture = naming.architecture + _ARCHITECTURES[type(model)]
    hf: dict[str, Any] = {"architectures": [architecture], "model_type": c.model_type}
    for key, (field, _) in _CONFIG_KEYS.items():
        hf[key] = getattr(c, field)
    hf.update(hidden_act="gelu", position_embedding_type="absolute", tie_word_embeddings=True)
    if isinstance(model, BertForSequenceClassification | BertForTokenClassification):
        hf["id2label"] = {str(i): name for i, name in enumerate(model.label_names)}
        hf["label2id"] = {name: i for i, name in enumerate(model.label_names)}
        hf["classifier_dropout"] = model.classifier_dropout
    return hf


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _num_labels(hf: dict[str, Any], num_labels: int | None) -> tuple[int, list[str] | None]:
    id2label = hf.get("id2label")
    names = [id2label[str(i)] for i in range(len(id2label))] if id2label else None
    if num_labels is None:
        return (len(names), names) if names else (hf.get("num_labels", 2), None)
    return num_labels, names if names and len(names) == num_labels else None


def _map_state(
    weights: dict[str, Tensor], names: dict[str, str], head: Head | None, naming: Naming
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename checkpoint tensors to qkv names; returns them and the problems found."""
    state: dict[str, Tensor] = {}
    problems: list[str] = []
    normalised: dict[str, Tensor] = {}
    for key, tensor in weights.items():
        name = _normalise(key, naming.prefix)
        if name in normalised:
            problems.append(
                f"duplicate key {key!r} (with and without the {naming.prefix!r} prefix)"
            )
        normalised[name] = tensor
    own_head = tuple(naming.heads[head]) if head is not None else ()
    unknown, dropped = [], []
    for name, tensor in normalised.items():
        if name in names:
            state[names[name]] = tensor
        elif name in naming.derived:
            # A tied copy must equal what qkv ties it to, or the model would differ.
            tied_to = naming.derived[name]
            if (
                head == "mlm"
                and tied_to in normalised
                and not torch.equal(tensor, normalised[tied_to])
            ):
                problems.append(f"{name} differs from {tied_to}; qkv ties the MLM decoder to it")
        elif (name.startswith(naming.other_heads) and name not in own_head) or name in _POOLER:
            # A pooler reaches here only when the model has none (the token classifier
            # and the MLM head read every position, not [CLS]): unused, as in Hugging Face.
            dropped.append(name)
        else:
            unknown.append(name)
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    if dropped:
        log.info("dropped checkpoint weights the model does not use: %s", sorted(dropped))
    return state, problems


def from_pretrained(
    path: str | os.PathLike[str],
    head: Head | None = None,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    **overrides: Any,
) -> AnyBert:
    """Load a Hugging Face BERT, RoBERTa or XLM-RoBERTa checkpoint directory into a
    qkv model.

    Args:
        path: directory with ``config.json`` and the weights.
        head: ``None`` (:class:`BertModel`), ``"mlm"``, ``"classification"`` or
            ``"token_classification"``.
        num_labels, label_names: for the classification heads; default from the
            checkpoint's ``id2label``.
        overrides: :class:`BertConfig` fields to replace (dropouts, say).

    Returns the model in training mode, like a freshly built one; call ``.eval()``
    for inference.

    Raises:
        CheckpointError: unsupported configuration; unknown, missing or
            misshapen weights (every one listed).
    """
    if head not in _MODELS:
        raise ValueError(f"head must be one of {list(_MODELS)}, got {head!r}")
    path = Path(path)
    hf = read_config(path)
    config = config_from_hf(hf, **overrides)
    if head in ("classification", "token_classification"):
        n, names_from_file = _num_labels(hf, num_labels)
        model: AnyBert = _MODELS[head](config, n, label_names=label_names or names_from_file)
    else:
        model = _MODELS[head](config)
    load_hf_state_dict(model, read_weights(path))
    return model


@torch.no_grad()
def load_hf_state_dict(model: AnyBert, weights: dict[str, Tensor]) -> None:
    """Copy Hugging Face-named ``weights`` into ``model``, or raise :class:`CheckpointError`
    listing every problem and leave ``model`` untouched."""
    head = _head_of(model)
    has_pooler = _backbone(model).pooler is not None
    naming = NAMINGS[model.config.model_type]
    names = hf_to_qkv_names(
        model.config.num_layers, head, pooler=has_pooler, model_type=naming.model_type
    )
    own = model.state_dict()
    # The map and the model must agree exactly; a failure here is a bug in qkv.
    assert set(names.values()) == set(own), sorted(set(names.values()) ^ set(own))
    state, problems = _map_state(weights, names, head, naming)

    # A part the checkpoint has none of starts fresh; a part it has some of must be whole.
    fresh_groups = {"pooler": [names[hf] for hf in _POOLER if hf in names]}
    if head is not None:
        fresh_groups[head] = list(naming.heads[head].values())
    fresh = []
    for group, members in fresh_groups.items():
        if members and not any(m in state for m in members):
            fresh.append(group)
            state.update({m: own[m] for m in members})
    problems += state_problems(state, own, {v: k for k, v in names.items()})
    if problems:
        raise CheckpointError("checkpoint does not fit: " + "; ".join(problems))
    if fresh:
        log.warning("newly initialised (not in the checkpoint): %s", ", ".join(fresh))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_pretrained(model: AnyBert, path: str | os.PathLike[str]) -> None:
    """Write ``config.json`` and ``model.safetensors`` in Hugging Face's format, named
    as ``model.config.model_type`` says (``bert``, ``roberta``, ``xlm-roberta``).

    ``transformers.BertModel.from_pretrained(path)`` (or the class named in
    ``architectures``: ``RobertaForSequenceClassification``, ...) opens the result; so
    does :func:`from_pretrained`. The tied MLM decoder is not written, as Hugging Face
    does not write it either.
    """
    head = _head_of(model)
    hf_config = config_to_hf(model)  # first: refuses a config no Hugging Face class reads
    naming = NAMINGS[model.config.model_type]
    names = hf_to_qkv_names(
        model.config.num_layers,
        head,
        pooler=_backbone(model).pooler is not None,
        model_type=naming.model_type,
    )
    head_keys = set() if head is None else set(naming.heads[head])

    def hf_name(hf: str) -> str:
        # Hugging Face's heads keep their backbone under "bert." ("roberta."), as qkv's do.
        return hf if head is None or hf in head_keys else f"{naming.prefix}{hf}"

    own = model.state_dict()
    tensors = {hf_name(hf): own[qkv] for hf, qkv in names.items()}
    write_pretrained(path, tensors, hf_config)
