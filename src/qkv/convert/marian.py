"""Hugging Face Marian (OPUS-MT) translation checkpoints in and out of qkv's
:class:`~qkv.models.transformer.Transformer`.

The shape every converter shares (:mod:`qkv.convert.common`): :func:`from_pretrained`
reads a checkpoint folder (``config.json``, the weights, and the tokenizer files
``source.spm``, ``target.spm``, ``vocab.json``, ``target_vocab.json`` when the
vocabularies are separate), :func:`save_pretrained` writes the same layout back,
which ``transformers.MarianMTModel`` and ``MarianTokenizer`` open.

What Marian needs beyond the 2017 Transformer are options of
:class:`~qkv.models.transformer.TransformerConfig`, not a second model: embeddings
scaled by √d or not (``scale_embedding``), the sinusoids in halves rather than
interleaved (``sinusoid_layout="halves"``), the final logits bias (a buffer), the
activation of ``config.json`` (``swish`` is SiLU), the decoder starting with the pad
id (``bos_id = pad_id``), eos forced at the maximum length (``forced_eos``). Padding
is never generated (:mod:`qkv.decoding` never produces it). Tensor names go through
one :class:`~qkv.convert.common.NameMap` (:data:`NAMES`); whatever does not fit is
refused, every problem listed in one :class:`CheckpointError`.

Accepted without a qkv parameter (:data:`DERIVED_KEYS`): the positional tables older
checkpoints saved (they must equal the sinusoids qkv computes), and tied copies of
the embeddings (``model.encoder.embed_tokens.weight``, ``lm_head.weight``, ...),
which must equal what qkv ties them to.

Notation: i = layer index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from qkv.convert.common import (
    CheckpointError,
    NameMap,
    read_config,
    read_weights,
    state_problems,
    write_pretrained,
)
from qkv.data.sentencepiece import SentencePieceTokenizer
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.positional import positional_encoding

__all__ = [
    "NAMES",
    "CheckpointError",
    "MarianCheckpoint",
    "config_from_hf",
    "config_to_hf",
    "from_pretrained",
    "load_hf_state_dict",
    "model_from_pretrained",
    "name_map",
    "save_pretrained",
]

_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_ENCODER_LAYER = {
    **{f"self_attn.{p}": f"self_attn.{p}" for p in _ATTENTION},
    "self_attn_layer_norm": "self_attn_norm.norm",
    "fc1": "feed_forward.linear1",
    "fc2": "feed_forward.linear2",
    "final_layer_norm": "feed_forward_norm.norm",
}
_DECODER_LAYER = {
    **_ENCODER_LAYER,
    **{f"encoder_attn.{p}": f"cross_attn.{p}" for p in _ATTENTION},
    "encoder_attn_layer_norm": "cross_attn_norm.norm",
}

#: Hugging Face name -> qkv name; the embeddings as a checkpoint with separate ones
#: stores them (:func:`name_map` adapts them to shared and tied ones).
NAMES: dict[str, str] = {
    "model.encoder.embed_tokens.weight": "src_embed.embedding.weight",
    "model.decoder.embed_tokens.weight": "tgt_embed.embedding.weight",
    "lm_head.weight": "output_proj.weight",
    "final_logits_bias": "final_logits_bias",
    **{
        f"model.encoder.layers.{{i}}.{hf}.{p}": f"encoder.layers.{{i}}.{qkv}.{p}"
        for hf, qkv in _ENCODER_LAYER.items()
        for p in ("weight", "bias")
    },
    **{
        f"model.decoder.layers.{{i}}.{hf}.{p}": f"decoder.layers.{{i}}.{qkv}.{p}"
        for hf, qkv in _DECODER_LAYER.items()
        for p in ("weight", "bias")
    },
}
_SHARED = "model.shared.weight"
_POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")

#: Keys a checkpoint may hold that are no qkv parameter: the positional tables (must
#: equal qkv's sinusoids) and tied copies (must equal the tensor they are tied to).
DERIVED_KEYS = (*_POSITIONS, _SHARED, *list(NAMES)[:3])

_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}


class MarianCheckpoint(NamedTuple):
    """What :func:`from_pretrained` reads: the model (in eval mode), its tokenizer, and
    the languages ``tokenizer_config.json`` names (empty when it names none)."""

    model: Transformer
    tokenizer: SentencePieceTokenizer
    src_lang: str
    tgt_lang: str


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    """``config.json`` -> :class:`TransformerConfig`; refuses, all at once, what qkv's
    Transformer does not build. ``overrides`` replace fields afterwards (dropouts)."""
    problems = []
    if hf.get("model_type") != "marian":
        problems.append(f"model_type is {hf.get('model_type')!r}, not 'marian'")
    activation = hf.get("activation_function", "gelu")
    if activation not in _ACTIVATIONS:
        problems.append(f"activation_function {activation!r}; qkv has {sorted(_ACTIVATIONS)}")
    for a, b in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf.get(a, 16 if "heads" in a else 4096) != hf.get(b, 16 if "heads" in b else 4096):
            problems.append(f"{a} {hf.get(a)} differs from {b} {hf.get(b)}; qkv uses one")
    for flag in ("normalize_before", "normalize_embedding", "add_final_layer_norm"):
        if hf.get(flag):
            problems.append(f"{flag} is true; Marian's layout (post-norm, no extra norms) only")
    if hf.get("static_position_embeddings") is False:
        problems.append("static_position_embeddings is false; qkv reads sinusoidal positions")
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if hf.get(key):
            problems.append(f"{key} {hf[key]}; qkv has no layer drop")
    vocab_size = hf.get("vocab_size", 58101)
    share = bool(hf.get("share_encoder_decoder_embeddings", True))
    tgt_vocab = vocab_size if share else (hf.get("decoder_vocab_size") or vocab_size)
    pad = hf.get("pad_token_id", 58100)
    eos = hf.get("eos_token_id", 0)
    start = hf.get("decoder_start_token_id", pad)
    for name, value in (("pad_token_id", pad), ("eos_token_id", eos),
                        ("decoder_start_token_id", start)):  # fmt: skip
        if not isinstance(value, int) or not 0 <= value < min(vocab_size, tgt_vocab):
            problems.append(f"{name} {value!r} is not an id of the vocabulary")
    if problems:
        raise CheckpointError("unsupported Marian configuration: " + "; ".join(problems))
    forced = hf.get("forced_eos_token_id", eos)
    d_model = hf.get("d_model", 1024)
    values: dict[str, Any] = dict(
        src_vocab_size=vocab_size,
        tgt_vocab_size=tgt_vocab,
        d_model=d_model,
        num_heads=hf.get("encoder_attention_heads", 16),
        num_encoder_layers=hf.get("encoder_layers", 12),
        num_decoder_layers=hf.get("decoder_layers", 12),
        d_ff=hf.get("encoder_ffn_dim", 4096),
        dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.0),
        activation_dropout=hf.get("activation_dropout", 0.0),
        activation=_ACTIVATIONS[activation],
        norm_first=False,
        layer_norm_eps=1e-5,
        positional="sinusoidal",
        sinusoid_layout="halves",
        scale_embedding=bool(hf.get("scale_embedding", False)),
        max_len=hf.get("max_position_embeddings", 1024),
        share_embeddings=share,
        tie_output=bool(hf.get("tie_word_embeddings", True)),
        pad_id=pad,
        bos_id=start,
        eos_id=eos,
        final_logits_bias=True,
        forced_eos=forced is not None and forced == eos,
    )
    try:
        return TransformerConfig(**{**values, **overrides})
    except ValueError as error:
        raise CheckpointError(f"unsupported Marian configuration: {error}") from None


def config_to_hf(config: TransformerConfig) -> dict[str, Any]:
    """The ``config.json`` ``transformers`` needs to rebuild a model of ``config``;
    :class:`CheckpointError` when ``config`` is not a Marian layout."""
    c = config
    problems = []
    if c.positional != "sinusoidal" or c.sinusoid_layout != "halves":
        problems.append("Marian needs sinusoidal positions in halves (sinusoid_layout='halves')")
    if c.norm_first:
        problems.append("Marian is post-norm (norm_first=False)")
    if not c.final_logits_bias:
        problems.append("Marian has a final logits bias (final_logits_bias=True)")
    if c.layer_norm_eps != 1e-5:
        problems.append(f"Marian's LayerNorm epsilon is 1e-5, not {c.layer_norm_eps}")
    if problems:
        raise CheckpointError("not a Marian model: " + "; ".join(problems))
    activation = {"silu": "swish"}.get(c.activation, c.activation)
    return {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": c.src_vocab_size,
        "decoder_vocab_size": c.tgt_vocab_size,
        "share_encoder_decoder_embeddings": c.share_embeddings,
        "tie_word_embeddings": c.tie_output,
        "d_model": c.d_model,
        "encoder_layers": c.num_encoder_layers,
        "decoder_layers": c.num_decoder_layers,
        "encoder_attention_heads": c.num_heads,
        "decoder_attention_heads": c.num_heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff,
        "activation_function": activation,
        "dropout": c.dropout,
        "attention_dropout": c.attention_dropout,
        "activation_dropout": c.dropout if c.activation_dropout is None else c.activation_dropout,
        "max_position_embeddings": c.max_len,
        "scale_embedding": c.scale_embedding,
        "pad_token_id": c.pad_id,
        "eos_token_id": c.eos_id,
        "decoder_start_token_id": c.bos_id,
        "forced_eos_token_id": c.eos_id if c.forced_eos else None,
        "bad_words_ids": [[c.pad_id]],
        "is_encoder_decoder": True,
    }


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def name_map(config: TransformerConfig) -> NameMap:
    """HF name -> qkv name for a model of ``config``: with shared embeddings the one
    tensor is ``model.shared.weight``; a tied output projection has no name of its own."""
    templates = dict(NAMES)
    if config.share_embeddings:
        del templates["model.encoder.embed_tokens.weight"]
        del templates["model.decoder.embed_tokens.weight"]
        templates[_SHARED] = "src_embed.embedding.weight"
    if config.tie_output:
        del templates["lm_head.weight"]
    return NameMap(templates)


def _hf_names(model: Transformer) -> dict[str, str]:
    """:func:`name_map` written out for ``model`` (its encoder and decoder may differ
    in depth)."""
    c = model.config
    own = model.state_dict()
    names = name_map(c).expand(max(c.num_encoder_layers, c.num_decoder_layers))
    return {hf: qkv for hf, qkv in names.items() if qkv in own}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def model_from_pretrained(path: str | os.PathLike[str], **overrides: Any) -> Transformer:
    """The model of a Marian checkpoint folder (``config.json`` and the weights), in
    eval mode. ``overrides``: :class:`TransformerConfig` fields (dropouts, say)."""
    path = Path(path)
    model = Transformer(config_from_hf(read_config(path), **overrides))
    load_hf_state_dict(model, read_weights(path))
    return model.eval()


def from_pretrained(path: str | os.PathLike[str], **overrides: Any) -> MarianCheckpoint:
    """A Marian checkpoint folder: the model (:func:`model_from_pretrained`) and its
    SentencePiece tokenizer, whose vocabulary must match the model's.

    Raises:
        FileNotFoundError: a file is missing.
        CheckpointError: the configuration or the weights do not fit (every problem
            listed), or the tokenizer's vocabulary does not match the model.
    """
    path = Path(path)
    model = model_from_pretrained(path, **overrides)
    tokenizer = SentencePieceTokenizer.load(path)
    check_tokenizer(model.config, tokenizer, path)
    config = tokenizer.config or {}
    return MarianCheckpoint(
        model, tokenizer, str(config.get("source_lang") or ""), str(config.get("target_lang") or "")
    )


def check_tokenizer(
    config: TransformerConfig, tokenizer: SentencePieceTokenizer, where: str | Path
) -> None:
    """:class:`CheckpointError` listing how ``tokenizer`` disagrees with the model."""
    problems = []
    for side, size in (("source", config.src_vocab_size), ("target", config.tgt_vocab_size)):
        have = getattr(tokenizer, side).vocab_size
        if have > size:
            problems.append(f"the {side} vocabulary has {have} tokens, the model {size}")
    if tokenizer.pad_id != config.pad_id:
        problems.append(f"<pad> is {tokenizer.pad_id} in vocab.json, {config.pad_id} in config")
    if tokenizer.eos_id != config.eos_id:
        problems.append(f"</s> is {tokenizer.eos_id} in vocab.json, {config.eos_id} in config")
    if problems:
        raise CheckpointError(f"{where}: tokenizer does not fit the model: " + "; ".join(problems))


@torch.no_grad()
def load_hf_state_dict(model: Transformer, weights: dict[str, Tensor]) -> None:
    """Copy Hugging Face-named ``weights`` into ``model``, or raise :class:`CheckpointError`
    listing every problem and leave ``model`` untouched."""
    config = model.config
    names = _hf_names(model)
    own = model.state_dict()
    # The model's tensors by the one name the map gives each (tied ones share it).
    expected = {qkv: own[qkv] for qkv in names.values()}
    canonical = {t.data_ptr(): qkv for qkv, t in expected.items()}
    # The map and the model must agree exactly; a failure here is a bug in qkv.
    assert all(t.data_ptr() in canonical for t in own.values()), sorted(own)
    state: dict[str, Tensor] = {}
    problems: list[str] = []
    unknown = []
    derived: dict[str, Tensor] = {}
    for key, tensor in weights.items():
        if key in names:
            state[names[key]] = tensor
        elif key in DERIVED_KEYS:
            derived[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    # An older checkpoint's copies of tied tensors, keyed by what they are tied to.
    source_embed = _SHARED if config.share_embeddings else "model.encoder.embed_tokens.weight"
    target_embed = _SHARED if config.share_embeddings else "model.decoder.embed_tokens.weight"
    tied = {
        _SHARED: source_embed,
        "model.encoder.embed_tokens.weight": source_embed,
        "model.decoder.embed_tokens.weight": target_embed,
        "lm_head.weight": target_embed,
    }
    for key, tensor in derived.items():
        if key in _POSITIONS:
            table = positional_encoding(tensor.shape[0], tensor.shape[-1], layout="halves")
            if tensor.shape != (config.max_len, config.d_model) or not torch.allclose(
                tensor.float(), table, atol=1e-5
            ):
                problems.append(f"{key} is not the sinusoidal table qkv computes")
            continue
        original = tied[key]
        if original not in names:  # e.g. lm_head.weight of an untied model: named above
            continue
        if original not in weights and names[original] not in state:
            # The checkpoint kept only the copy: it is the tensor.
            state[names[original]] = tensor
        elif original in weights and not torch.equal(tensor, weights[original]):
            problems.append(f"{key} differs from {original}, to which qkv ties it")
    hf_of = {v: k for k, v in names.items()}
    if "final_logits_bias" in state:
        bias = state["final_logits_bias"]
        if bias.dim() == 2 and bias.shape[0] == 1:  # Hugging Face stores (1, V)
            state["final_logits_bias"] = bias[0]
    elif config.final_logits_bias:
        state["final_logits_bias"] = torch.zeros_like(expected["final_logits_bias"])
    problems += state_problems(state, expected, hf_of)
    if problems:
        raise CheckpointError("checkpoint does not fit: " + "; ".join(problems))
    # Every name of a tied tensor gets the same value (loading visits each name).
    model.load_state_dict({k: state[canonical[t.data_ptr()]] for k, t in own.items()})


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_pretrained(
    model: Any,
    path: str | os.PathLike[str],
    tokenizer: SentencePieceTokenizer | None = None,
    *,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> None:
    """Write a Marian checkpoint folder: ``config.json``, ``model.safetensors`` and,
    with the tokenizer, ``source.spm``, ``target.spm``, ``vocab.json`` (and
    ``target_vocab.json``) and ``tokenizer_config.json``.

    ``model``: a :class:`Transformer` of a Marian layout, or a translator (anything
    with ``.model`` and ``.tokenizer``, whose languages are then written too).
    ``transformers.MarianMTModel.from_pretrained(path)`` and
    ``MarianTokenizer.from_pretrained(path)`` open the result; so does
    :func:`from_pretrained`. Everything is checked before anything is written.
    """
    if not isinstance(model, Transformer):
        tokenizer = tokenizer or getattr(model, "tokenizer", None)
        src_lang = src_lang or getattr(model, "src_lang", None)
        tgt_lang = tgt_lang or getattr(model, "tgt_lang", None)
        model = getattr(model, "model", None)
    if not isinstance(model, Transformer):
        raise TypeError(f"expected a Transformer or a translator, got {type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, SentencePieceTokenizer):
        raise CheckpointError(
            f"a Marian folder needs a SentencePiece tokenizer, not a {type(tokenizer).__name__} "
            "(a model trained from scratch in qkv has a BPE one)"
        )
    config = model.config
    hf_config = config_to_hf(config)
    if tokenizer is not None:
        check_tokenizer(config, tokenizer, "save_pretrained")
    names = _hf_names(model)
    own = model.state_dict()
    tensors = {hf: own[qkv] for hf, qkv in names.items()}
    # Hugging Face's buffer is (1, V).
    tensors["final_logits_bias"] = tensors["final_logits_bias"][None, :]
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    write_pretrained(path, tensors, hf_config)
    if tokenizer is not None:
        languages = {"source_lang": src_lang, "target_lang": tgt_lang}
        extra = {k: v for k, v in languages.items() if v}
        to_save = SentencePieceTokenizer(
            tokenizer.source,
            tokenizer.target,
            joint=tokenizer.joint,
            config={**dict(tokenizer.config or {}), **extra},
        )
        to_save.save(path)
