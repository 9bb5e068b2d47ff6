"""Attention weights of one forward pass, with the tokens they belong to.

Every model of qkv takes ``need_weights``: ``True`` for every layer or a list of
layer indices. The layers asked for run the plain path and return their weights;
the others keep the fused kernel, which never builds the ``q × k`` matrix. This
module only asks and sorts what comes back: nothing is hooked, nothing is stored on
a module, and the model's train/eval mode is left as it is.

- :class:`AttentionMap`: one kind of attention (``"encoder"`` self-attention,
  ``"decoder"`` masked self-attention, ``"cross"`` encoder–decoder attention) for one
  input, in the layers captured, padding removed, tokens on both axes.
- :func:`capture_seq2seq`, :func:`capture_bert`, :func:`capture_vit`: a batch of
  ids or images in, one ``{kind: AttentionMap}`` per example out.
- :func:`translator_attention`, :func:`bert_attention`: the same from text, with the
  tokenizer's pieces as labels (the translator translates first, then reads its own
  output back with teacher forcing).
- :func:`attention_rollout`: Abnar & Zuidema (2020), "Quantifying Attention Flow in
  Transformers", section 3: average the heads, add the identity for the residual
  connection, renormalise the rows, multiply through the layers.

Notation:
    b   batch size
    n   layers captured
    L   layers of the stack (``num_layers``)
    h   heads
    q   query positions (rows); k key positions (columns)
    g   patches per side of a ViT image
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from qkv.data.padding import pad_ids

if TYPE_CHECKING:  # for types only: capturing needs nothing of a model but its forward
    from tokenizers import Tokenizer

    from qkv.data.bpe import BPETokenizer
    from qkv.models.bert import BertModel
    from qkv.models.transformer import Transformer
    from qkv.models.vit import ViT
    from qkv.tasks.translation import Translator

__all__ = [
    "KINDS",
    "AttentionMap",
    "Kind",
    "attention_rollout",
    "bert_attention",
    "capture_bert",
    "capture_seq2seq",
    "capture_vit",
    "patch_labels",
    "translator_attention",
]

logger = logging.getLogger(__name__)

Kind = Literal["encoder", "decoder", "cross"]
KINDS: tuple[Kind, ...] = ("encoder", "decoder", "cross")
Maps = dict[Kind, "AttentionMap"]


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare
class AttentionMap:
    """The weights of one kind of attention for one input.

    ``weights[i, j]`` is head ``j`` of model layer ``layers[i]``; its row ``r`` is
    how query ``queries[r]`` spreads its attention over ``keys`` (it sums to 1).
    Padding is not in it. ``grid_size`` is set for ViT: keys ``1 ..`` are the
    patches of a ``g × g`` grid, row by row, after the class token.

    Shape: weights ``(n, h, q, k)``.
    """

    kind: Kind
    layers: tuple[int, ...]
    num_layers: int
    weights: Tensor
    queries: tuple[str, ...]
    keys: tuple[str, ...]
    grid_size: int | None = None

    def __post_init__(self) -> None:
        n, q, k = len(self.layers), len(self.queries), len(self.keys)
        if self.weights.dim() != 4 or (n, q, k) != (
            self.weights.shape[0],
            self.weights.shape[2],
            self.weights.shape[3],
        ):
            raise ValueError(
                f"weights must have shape (layers={n}, heads, queries={q}, keys={k}), "
                f"got {tuple(self.weights.shape)}"
            )
        if any(not 0 <= i < self.num_layers for i in self.layers):
            raise ValueError(f"layers {self.layers} out of range for {self.num_layers} layers")

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    def layer(self, index: int) -> Tensor:
        """Weights of model layer ``index`` (negative counts from the last layer of
        the stack). Shape: ``(h, q, k)``."""
        wanted = index + self.num_layers if index < 0 else index
        if wanted not in self.layers:
            raise KeyError(
                f"layer {index} was not captured; captured {list(self.layers)} of {self.num_layers}"
            )
        return self.weights[self.layers.index(wanted)]


def _need_weights_arg(layers: Sequence[int] | None) -> bool | list[int]:
    """The models' ``need_weights`` for ``layers`` (``None``: every layer)."""
    return True if layers is None else list(layers)


def _check_training(model: nn.Module) -> None:
    if model.training:
        # Not switched here: the caller owns the module's state.
        logger.warning("model is in training mode: dropout makes the captured weights random")


def _labels(tokens: Sequence[Sequence[str]] | None, ids: Tensor) -> list[list[str]]:
    """Per-example labels of every (padded) position; default: the ids themselves."""
    if tokens is None:
        return [[str(i) for i in row] for row in ids.tolist()]
    if len(tokens) != ids.shape[0] or any(len(t) != ids.shape[1] for t in tokens):
        raise ValueError(
            f"tokens must give one label per position of ids {tuple(ids.shape)}, got "
            f"{[len(t) for t in tokens]} labels for {len(tokens)} examples"
        )
    return [list(t) for t in tokens]


def _maps_per_example(
    kind: Kind,
    per_layer: Sequence[Tensor | None] | None,
    query_mask: Tensor,
    key_mask: Tensor,
    query_tokens: list[list[str]],
    key_tokens: list[list[str]],
    grid_size: int | None = None,
) -> list[AttentionMap]:
    """One :class:`AttentionMap` per example, padding removed, from a stack's per-layer
    weights ``(b, h, q, k)`` (``None`` for layers not asked for); masks ``(b, q)`` and
    ``(b, k)``, ``True`` = real token."""
    if per_layer is None:
        raise ValueError(f"the model returned no {kind} attention weights")
    layers = tuple(i for i, w in enumerate(per_layer) if w is not None)
    stacked = torch.stack([per_layer[i] for i in layers], dim=1)  # (b, n, h, q, k)
    maps = []
    for b in range(stacked.shape[0]):
        # Boolean indexing, not a slice: padding may sit anywhere (left or right).
        rows, cols = query_mask[b], key_mask[b]
        weights = stacked[b][:, :, rows][:, :, :, cols].detach().float().cpu()  # (n, h, q', k')
        maps.append(
            AttentionMap(
                kind,
                layers,
                len(per_layer),
                weights,
                tuple(t for t, real in zip(query_tokens[b], rows.tolist(), strict=True) if real),
                tuple(t for t, real in zip(key_tokens[b], cols.tolist(), strict=True) if real),
                grid_size,
            )
        )
    return maps


@torch.no_grad()
def capture_seq2seq(
    model: Transformer,
    src_ids: Tensor,
    tgt_ids: Tensor,
    *,
    layers: Sequence[int] | None = None,
    decoder_layers: Sequence[int] | None = None,
    src_tokens: Sequence[Sequence[str]] | None = None,
    tgt_tokens: Sequence[Sequence[str]] | None = None,
    out_tokens: Sequence[Sequence[str]] | None = None,
) -> list[Maps]:
    """Encoder, decoder and cross-attention weights of one teacher-forced pass.

    Args:
        model: the encoder–decoder Transformer (put it in eval mode first).
        src_ids: source ids, padded with ``config.pad_id``.
        tgt_ids: decoder inputs (bos, then the target), padded likewise.
        layers: encoder layers to capture (default all); the rest run fused.
        decoder_layers: decoder layers (default: ``layers``); each gives both its
            self- and its cross-attention.
        src_tokens, tgt_tokens: a label per position of ``src_ids``, ``tgt_ids``.
        out_tokens: a label per decoder position for the rows (queries): what that
            position predicts, e.g. the target followed by eos, so that the row of
            "dog" shows where the model looked while producing "dog". Default:
            ``tgt_tokens``.

    Shape: src_ids ``(b, k)``, tgt_ids ``(b, q)``. Returns ``b`` dicts with keys
    ``"encoder"`` ``(n, h, k', k')``, ``"decoder"`` ``(n, h, q', q')`` and ``"cross"``
    ``(n, h, q', k')``, primes = real (unpadded) lengths.
    """
    _check_training(model)
    pad = model.config.pad_id
    src_mask, tgt_mask = src_ids != pad, tgt_ids != pad  # (b, k), (b, q)
    if model.config.bos_id == pad:  # Marian starts the decoder with its pad id: a real token
        tgt_mask[:, 0] = True
    decoder_layers = layers if decoder_layers is None else decoder_layers
    encoded = model.encode(
        src_ids, src_key_padding_mask=src_mask, need_weights=_need_weights_arg(layers)
    )
    decoded = model.decode(
        tgt_ids,
        encoded.last_hidden_state,
        memory_key_padding_mask=src_mask,
        tgt_key_padding_mask=tgt_mask,
        need_weights=_need_weights_arg(decoder_layers),
    )
    src_labels = _labels(src_tokens, src_ids)
    tgt_labels = _labels(tgt_tokens, tgt_ids)
    out_labels = tgt_labels if out_tokens is None else _labels(out_tokens, tgt_ids)
    encoder = _maps_per_example(
        "encoder", encoded.attentions, src_mask, src_mask, src_labels, src_labels
    )
    decoder = _maps_per_example(
        "decoder", decoded.self_attentions, tgt_mask, tgt_mask, out_labels, tgt_labels
    )
    cross = _maps_per_example(
        "cross", decoded.cross_attentions, tgt_mask, src_mask, out_labels, src_labels
    )
    return [
        {"encoder": e, "decoder": d, "cross": c}
        for e, d, c in zip(encoder, decoder, cross, strict=True)
    ]


@torch.no_grad()
def capture_bert(
    model: BertModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
) -> list[Maps]:
    """Self-attention weights of BERT's encoder (for a head model pass ``model.bert``).

    ``attention_mask``: ``True``/1 = real token, default ``input_ids != pad_id``.

    Shape: ``(b, L)`` inputs -> ``b`` dicts ``{"encoder": (n, h, L', L')}``.
    """
    _check_training(model)
    mask = input_ids != model.config.pad_id if attention_mask is None else attention_mask.bool()
    out = model(input_ids, mask, token_type_ids, need_weights=_need_weights_arg(layers))
    labels = _labels(tokens, input_ids)
    return [
        {"encoder": m}
        for m in _maps_per_example("encoder", out.attentions, mask, mask, labels, labels)
    ]


def patch_labels(grid_size: int) -> list[str]:
    """Token labels of a ViT: ``[CLS]`` then ``row,col`` of each patch, row by row."""
    return ["[CLS]"] + [f"{r},{c}" for r in range(grid_size) for c in range(grid_size)]


@torch.no_grad()
def capture_vit(model: ViT, images: Tensor, *, layers: Sequence[int] | None = None) -> list[Maps]:
    """Self-attention weights of a ViT over its class token and patches.

    Shape: images ``(b, c, H, W)`` -> ``b`` dicts ``{"encoder": (n, h, 1 + g², 1 + g²)}``.
    """
    _check_training(model)
    out = model.encode(images, need_weights=_need_weights_arg(layers))
    g = model.config.grid_size
    mask = torch.ones(images.shape[0], 1 + g * g, dtype=torch.bool)  # images have no padding
    labels = [patch_labels(g)] * images.shape[0]
    maps = _maps_per_example("encoder", out.attentions, mask, mask, labels, labels, grid_size=g)
    return [{"encoder": m} for m in maps]


def attention_rollout(weights: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) through consecutive layers.

    Each layer's heads are averaged, the identity is added (the residual connection
    carries every token's own state forward, which raw attention ignores) and the
    rows are renormalised: ``Â_l = (mean_h A_l + I) / 2``. The rollout is
    ``Â_n ⋯ Â_2 Â_1``: row ``r`` says how much of each input token reaches position
    ``r`` after the last layer. Pass the weights of every layer from the first, as
    :class:`AttentionMap` holds them after capturing all layers.

    Shape: ``(..., n, h, t, t)`` -> ``(..., t, t)``; rows sum to 1.
    """
    if weights.dim() < 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(
            f"rollout needs self-attention weights (..., layers, heads, t, t), "
            f"got {tuple(weights.shape)}"
        )
    t = weights.shape[-1]
    eye = torch.eye(t, dtype=weights.dtype, device=weights.device)
    per_layer = weights.mean(dim=-3) + eye  # (..., n, t, t)
    per_layer = per_layer / per_layer.sum(dim=-1, keepdim=True)
    rollout = per_layer[..., 0, :, :]  # (..., t, t)
    for i in range(1, per_layer.shape[-3]):
        rollout = per_layer[..., i, :, :] @ rollout  # later layers act on earlier mixtures
    return rollout


def translator_attention(
    translator: Translator,
    sentences: str | Sequence[str],
    *,
    targets: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    beam_size: int = 4,
) -> list[Maps]:
    """Attention of a trained translator on source sentences and their translations.

    Without ``targets`` the translator translates first (beam search, greedy when
    ``beam_size == 1``); then one teacher-forced pass over its own output captures
    the weights. Decoder rows are labelled with the token each position produces
    (the translation, then ``<eos>``), columns with the decoder inputs (``<bos>``,
    then the translation). One dict per sentence, as :func:`capture_seq2seq`.
    """
    from qkv.decoding import beam_search, greedy_decode

    sentences = [sentences] if isinstance(sentences, str) else list(sentences)
    model, tok = translator.model, translator.tokenizer
    pad = model.config.pad_id
    # The model's own ids: qkv's BPE ones, or Marian's (decoder start = pad id).
    bos, eos = model.config.bos_id, model.config.eos_id
    device = translator.device
    max_len = model.config.max_len
    src_rows = [tok.source.encode(s, add_eos=True)[:max_len] for s in sentences]
    src = pad_ids(src_rows, pad).to(device)  # (b, k)
    if targets is None:
        if beam_size == 1:
            result = greedy_decode(model, src, bos_id=bos, eos_id=eos)
        else:
            result = beam_search(
                model, src, bos_id=bos, eos_id=eos, beam_size=beam_size, style=translator.search
            )
        out_rows = [list(t)[: max_len - 1] for t in result.tokens]
    else:
        targets = [targets] if isinstance(targets, str) else list(targets)
        if len(targets) != len(sentences):
            raise ValueError(f"got {len(targets)} targets for {len(sentences)} sentences")
        out_rows = [tok.target.encode(t)[: max_len - 1] for t in targets]
    tgt = pad_ids([[bos, *r] for r in out_rows], pad).to(device)  # (b, q)
    produced = pad_ids([[*r, eos] for r in out_rows], pad)  # (b, q): what each position predicts

    def pieces(ids: Tensor, vocabulary: BPETokenizer) -> list[list[str]]:
        return [[vocabulary.id_to_token(i) or "?" for i in row] for row in ids.tolist()]

    return capture_seq2seq(
        model,
        src,
        tgt,
        layers=layers,
        src_tokens=pieces(src, tok.source),
        tgt_tokens=pieces(tgt, tok.target),
        out_tokens=pieces(produced, tok.target),
    )


def bert_attention(
    model: BertModel,
    tokenizer: Tokenizer,
    texts: str | Sequence[str],
    *,
    layers: Sequence[int] | None = None,
) -> list[Maps]:
    """BERT's attention on texts, labelled with the WordPiece tokens (``[CLS]`` and
    ``[SEP]`` included). ``tokenizer``: the checkpoint's ``tokenizer.json`` loaded with
    ``tokenizers.Tokenizer.from_file``. Several texts run as one padded batch."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    pad = model.config.pad_id
    # The tokenizer's own mask, not ids != pad: a tokenizer set to pad already has
    # the padding in ids; appended positions are padding too.
    mask = pad_ids([e.attention_mask for e in encodings], 0, width=width).bool()
    tokens = [e.tokens + ["[PAD]"] * (width - len(e.tokens)) for e in encodings]
    device = next(model.parameters()).device
    return capture_bert(
        model,
        pad_ids([e.ids for e in encodings], pad, width=width).to(device),
        mask.to(device),
        pad_ids([e.type_ids for e in encodings], 0, width=width).to(device),
        layers=layers,
        tokens=tokens,
    )
