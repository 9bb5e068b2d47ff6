"""BERT (Devlin et al. 2019): the Transformer's encoder with three input embeddings,
a pooler, and task heads, built on qkv's own :class:`~qkv.layers.EncoderLayer`.

- :class:`BertConfig`: sizes and dropouts, with the presets of the BERT miniatures
  (Turc et al. 2019: ``tiny``, ``mini``, ``small``) and BERT-base.
- :class:`BertEmbeddings`: token + segment + learned position, LayerNorm, dropout
  (section 3, figure 2 of the paper).
- :class:`BertModel`: embeddings, a post-norm encoder with GELU, and the pooler
  ``tanh(W h_[CLS] + b)``.
- Heads: :class:`BertForMaskedLM` (section 3.1, task 1; output tied to the word
  embeddings), :class:`BertForSequenceClassification` (on the pooled ``[CLS]``),
  :class:`BertForTokenClassification` (on every position).

RoBERTa and XLM-RoBERTa (Liu et al. 2019; Conneau et al. 2020) are the same model with
three :class:`BertConfig` options: ``position_offset_by_pad`` (fairseq's positions,
:func:`padding_offset_positions`), ``classifier_head="dense"``
(:class:`DenseClassificationHead` on the first token, no pooler) and ``model_type``;
``type_vocab_size=1`` and ``layer_norm_eps=1e-5`` are plain sizes.

Hugging Face checkpoints load and save through :mod:`qkv.convert.bert`; this file
knows nothing of their names.

``attention_mask`` is a padding mask in the sense of :mod:`qkv.masks`: ``(b, L)``,
``True``/1 = real token (the same polarity as Hugging Face's ``attention_mask``).

Notation:
    b   batch size
    L   sequence length (tokens, with [CLS] and [SEP])
    d   model width (``d_model``, Hugging Face ``hidden_size``)
    V   vocabulary size
    n   number of masked positions in the batch
    C   number of labels
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import ConfigDict
from qkv.dropout import Dropout
from qkv.embedding import TokenEmbedding, check_token_dtype, check_token_ids
from qkv.layers import Encoder, EncoderLayer
from qkv.losses import IGNORE_INDEX, cross_entropy
from qkv.outputs import ModelOutput, export_output
from qkv.positional import LearnedPositionalEmbedding

__all__ = [
    "IGNORE_INDEX",
    "BertConfig",
    "BertEmbeddings",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertHeadOutput",
    "BertModel",
    "BertOutput",
    "DenseClassificationHead",
    "init_bert_weights",
    "padding_offset_positions",
]


@dataclass(frozen=True)
class BertConfig(ConfigDict):
    """Sizes and switches of BERT; the defaults are BERT-base (uncased vocabulary).

    Hugging Face names in brackets; :mod:`qkv.convert.bert` maps ``config.json``.
    """

    vocab_size: int = 30522  # WordPiece vocabulary of bert-base-uncased
    d_model: int = 768  # [hidden_size]
    num_layers: int = 12  # [num_hidden_layers]
    num_heads: int = 12  # [num_attention_heads]
    d_ff: int = 3072  # [intermediate_size], 4 × d_model in every published size
    max_position_embeddings: int = 512  # longest input; one learned vector per position
    type_vocab_size: int = 2  # segments: sentence A and sentence B
    dropout: float = 0.1  # [hidden_dropout_prob]: embeddings and every sublayer output
    # [attention_probs_dropout_prob] The paper's reference code and Hugging Face use
    # 0.1, and so do we: it is BERT's recipe, and from_pretrained takes whatever the
    # checkpoint says anyway. The cost: with a nonzero value the fused CPU kernel
    # falls back to its math path while training, which builds the L × L weights
    # (benchmarks/RESULTS.md, "Measurements behind the defaults", has the cost).
    # Inference is unaffected (dropout is off in eval mode).
    # Pass 0.0 to pretrain from scratch faster, above all on long sequences.
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12  # the reference TF code's value, not torch's 1e-5
    init_std: float = 0.02  # [initializer_range], see init_bert_weights
    pad_id: int = 0  # [PAD] in the BERT vocabularies

    # RoBERTa and XLM-RoBERTa (Liu et al. 2019) are this model with three options
    # changed; the defaults are BERT's.
    # Position ids as fairseq counts them: padding tokens get position pad_id, the
    # real tokens pad_id + 1, pad_id + 2, ... (counted over the real tokens only), so
    # max_position_embeddings includes pad_id + 1 rows no real token reaches (514 for
    # RoBERTa's 512 tokens; see max_length). False: position i for token i (BERT).
    position_offset_by_pad: bool = False
    # The sequence classifier's head. "pooler": BERT's, dropout and one linear layer on
    # the pooled [CLS] state, tanh(W h_[CLS] + b). "dense": RoBERTa's, no pooler:
    # dropout, dense d -> d, tanh, dropout, linear d -> C, on the first token's state.
    classifier_head: Literal["pooler", "dense"] = "pooler"
    # The Hugging Face family whose names the converter writes (qkv.convert.bert); the
    # model itself is the same for all three.
    model_type: Literal["bert", "roberta", "xlm-roberta"] = "bert"

    # The fused attention kernel when no weights are asked for; False: the explicit
    # matmul-softmax-matmul path (see MultiHeadAttention).
    fused_attention: bool = True

    def __post_init__(self) -> None:
        self.check(
            positive=(
                "vocab_size", "d_model", "num_layers", "num_heads", "d_ff",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "init_std",
            ),
            probabilities=("dropout", "attention_dropout"),
            heads=("num_heads", "d_model"),
        )  # fmt: skip
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id ({self.pad_id}) must be in [0, vocab_size={self.vocab_size})")
        if self.max_length < 1:
            raise ValueError(
                f"max_position_embeddings ({self.max_position_embeddings}) leaves no position "
                f"for a token after the pad_id + 1 = {self.pad_id + 1} that "
                "position_offset_by_pad reserves"
            )

    @property
    def max_length(self) -> int:
        """The longest input, in tokens: ``max_position_embeddings``, less the
        ``pad_id + 1`` positions no real token takes with ``position_offset_by_pad``."""
        offset = self.pad_id + 1 if self.position_offset_by_pad else 0
        return self.max_position_embeddings - offset

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """The configuration of a named size: ``tiny``, ``mini``, ``small`` or ``base``."""
        sizes = {"tiny": cls.tiny, "mini": cls.mini, "small": cls.small, "base": cls.base}
        if name not in sizes:
            raise ValueError(f"unknown BERT preset {name!r}; choose from {sorted(sizes)}")
        return sizes[name](**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> BertConfig:
        """BERT-Tiny: 2 layers, 128 wide, 2 heads, feed-forward 512 (4.4M parameters)."""
        return cls(**{**dict(num_layers=2, d_model=128, num_heads=2, d_ff=512), **overrides})

    @classmethod
    def mini(cls, **overrides: Any) -> BertConfig:
        """BERT-Mini: 4 layers, 256 wide, 4 heads, feed-forward 1024 (11.2M parameters)."""
        return cls(**{**dict(num_layers=4, d_model=256, num_heads=4, d_ff=1024), **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> BertConfig:
        """BERT-Small: 4 layers, 512 wide, 8 heads, feed-forward 2048 (28.8M parameters)."""
        return cls(**{**dict(num_layers=4, d_model=512, num_heads=8, d_ff=2048), **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> BertConfig:
        """BERT-base: 12 layers, 768 wide, 12 heads, feed-forward 3072 (109.5M parameters)."""
        return cls(**overrides)


@torch.no_grad()
def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation, for ``module`` and everything inside it.

    Every linear and embedding matrix ~ N(0, std²) with std = 0.02, biases zero,
    LayerNorm scale one and shift zero, as Hugging Face does. (The reference TF
    code draws from a normal truncated at 2 std; the difference is immaterial.)
    The padding row of an embedding starts at zero, like ``nn.Embedding`` does.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def padding_offset_positions(input_ids: Tensor, pad_id: int) -> Tensor:
    """RoBERTa's position ids (fairseq's ``make_positions``): ``pad_id`` for a padding
    token, ``pad_id + k`` for the ``k``-th real token (from 1). Computed from the ids,
    not from an attention mask, as Hugging Face does; no host sync.

    Shape: ``(b, L)`` -> ``(b, L)`` int64.
    """
    real = (input_ids != pad_id).long()  # (b, L)
    return torch.cumsum(real, dim=1) * real + pad_id  # (b, L)


class BertEmbeddings(nn.Module):
    """``LayerNorm(token(ids) + segment(token_type_ids) + position(0..L-1))``, then dropout;
    with ``position_offset_by_pad`` (RoBERTa) the positions are
    :func:`padding_offset_positions` instead of ``0..L-1``.

    Shape: input_ids ``(b, L)``, token_type_ids ``(b, L)`` or ``None`` (all
    sentence A) -> ``(b, L, d)``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config
        # BERT does not scale token embeddings by sqrt(d): the LayerNorm that
        # follows sets the magnitude.
        self.token = TokenEmbedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.segment = nn.Embedding(c.type_vocab_size, c.d_model)
        self.position = LearnedPositionalEmbedding(c.d_model, c.max_position_embeddings)
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.dropout)
        self.pad_id = c.pad_id
        self.position_offset_by_pad = c.position_offset_by_pad

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, *, validate: bool = False
    ) -> Tensor:
        """``validate``: check that every id is in its vocabulary (reads the values)."""
        x = self.token(input_ids, validate=validate)  # (b, L, d)
        if token_type_ids is None:
            x = x + self.segment.weight[0]  # every token in segment A; saves a gather
        else:
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(token_type_ids.shape)}"
                )
            if validate:
                check_token_ids(token_type_ids, self.segment.num_embeddings, "token_type_ids")
            else:
                check_token_dtype(token_type_ids, "token_type_ids")
            x = x + self.segment(token_type_ids)  # (b, L, d)
        # Added in the order Hugging Face adds them, so float rounding agrees too.
        if self.position_offset_by_pad:
            positions = padding_offset_positions(input_ids, self.pad_id)  # (b, L)
            x = x + self.position.embedding(positions)  # (b, L, d)
        else:
            x = self.position(x)  # (b, L, d)
        return self.dropout(self.norm(x))  # (b, L, d)


@export_output
@dataclass
class BertOutput:
    """What :class:`BertModel` returns.

    ``last_hidden_state`` ``(b, L, d)``; ``pooled_output`` ``(b, d)`` (``None``
    without a pooler); ``attentions[i]`` ``(b, h, L, L)`` for the layers asked for.
    """

    last_hidden_state: Tensor
    pooled_output: Tensor | None = None
    attentions: tuple[Tensor | None, ...] | None = None


@export_output
@dataclass(kw_only=True)
class BertHeadOutput(ModelOutput):
    """What a head returns (:class:`~qkv.outputs.ModelOutput`): ``logits``, ``loss``
    and ``num_targets`` (when labels are given, else ``None``), and the backbone's
    :class:`BertOutput` (hidden states, weights)."""

    bert: BertOutput


def _padding_mask(
    attention_mask: Tensor | None, input_ids: Tensor, pad_id: int, *, validate: bool = False
) -> Tensor:
    """The ``(b, L)`` boolean key padding mask.

    Always a mask, even when nothing is padded: finding that out reads the values, which
    waits for the device and breaks ``torch.compile`` graphs. A floating-point mask is
    always checked to be 0/1 (reading its values): an additive mask (0 / -inf) means the
    opposite and would otherwise be read silently the wrong way round. Boolean and
    integer masks, what tokenizers return, are checked only with ``validate``.
    """
    if attention_mask is None:
        return input_ids != pad_id
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    # Tokenizers return 0/1 integers (True/1 = real token); anything else is
    # probably an additive mask (0 / -inf) of the opposite meaning.
    if (
        (validate or attention_mask.is_floating_point())
        and attention_mask.dtype != torch.bool
        and not ((attention_mask == 0) | (attention_mask == 1)).all()
    ):
        raise ValueError(
            "attention_mask must be boolean or 0/1 (1 = real token), got values "
            f"{attention_mask.unique()[:8].tolist()}"
        )
    return attention_mask.bool()


class BertModel(nn.Module):
    """BERT's body: embeddings, ``num_layers`` post-norm GELU encoder layers, pooler.

    Args:
        config: sizes and dropouts.
        pooler: add the pooler ``tanh(Linear(h_[CLS]))`` (the masked-LM and token
            heads do without one, as in Hugging Face).
    """

    def __init__(self, config: BertConfig, *, pooler: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c)
        layer = EncoderLayer(
            c.d_model,
            c.num_heads,
            c.d_ff,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            # BERT has no dropout between the two feed-forward linears, only after
            # the second, in the residual.
            activation_dropout=0.0,
            activation="gelu",  # exact erf GELU, Hugging Face's "gelu"
            norm_first=False,  # BERT is post-norm, like the 2017 Transformer
            layer_norm_eps=c.layer_norm_eps,
            fused_attention=c.fused_attention,
        )
        self.encoder = Encoder(layer, c.num_layers, final_norm=False)
        self.pooler = nn.Linear(c.d_model, c.d_model) if pooler else None
        init_bert_weights(self, c.init_std)

    def no_weight_decay(self) -> set[str]:
        """Parameters a trainer should not decay beyond the 1-D ones (biases and
        LayerNorms, which :func:`qkv.train.optim.parameter_groups` spares anyway):
        none; BERT's released code decays every matrix, embeddings included."""
        return set()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> BertOutput:
        """Encode a batch.

        Args:
            input_ids: token ids.
            attention_mask: ``True``/1 = real token; default ``input_ids != pad_id``.
            token_type_ids: segment of each token (0 = sentence A, 1 = B); default 0.
            need_weights: attention weights of every layer (``True``) or of the
                listed layer indices.
            validate: check the values of the inputs: ids inside their vocabularies,
                ``attention_mask`` boolean or 0/1. Reading values waits for the device
                and breaks ``torch.compile`` graphs, so it is off by default; shapes and
                dtypes are always checked.

        Shape:
            input_ids, attention_mask, token_type_ids ``(b, L)``, ``L`` at most
            ``config.max_length`` -> last_hidden_state ``(b, L, d)``,
            pooled_output ``(b, d)``, attentions ``(b, h, L, L)`` per layer.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_length:
            offset = self.config.max_position_embeddings - self.config.max_length
            room = f", less {offset} offset by the padding id" if offset else ""
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}{room}); truncate the input"
            )
        mask = _padding_mask(attention_mask, input_ids, self.config.pad_id, validate=validate)
        x = self.embeddings(input_ids, token_type_ids, validate=validate)  # (b, L, d)
        encoded = self.encoder(x, key_padding_mask=mask, need_weights=need_weights)
        hidden = encoded.last_hidden_state  # (b, L, d)
        # The pooler reads [CLS], the first token; section 3 of the paper uses its
        # final state as the aggregate representation for classification.
        pooled = None if self.pooler is None else torch.tanh(self.pooler(hidden[:, 0]))  # (b, d)
        return BertOutput(hidden, pooled, encoded.attentions)


def _head_output(
    logits: Tensor, labels: Tensor | None, label_smoothing: float, bert: BertOutput
) -> BertHeadOutput:
    if labels is None:
        return BertHeadOutput(logits=logits, bert=bert)
    loss, count = cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return BertHeadOutput(logits=logits, loss=loss, num_targets=count, bert=bert)


class BertForMaskedLM(nn.Module):
    """BERT with the masked-language-model head of pretraining (section 3.1).

    ``logits = LayerNorm(gelu(W h + b)) Eᵀ + bias``, where ``E`` is the word
    embedding matrix itself (tied: the decoder is not a second parameter).

    Projecting onto the vocabulary is the most expensive step (``d × V`` per
    position, V = 30,522); with ``masked_positions`` only the ~15% masked
    positions are projected, which is most of the cost of an MLM training step.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, pooler=False)
        self.transform = nn.Linear(config.d_model, config.d_model)
        self.transform_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_bert_weights(self.transform, config.init_std)
        init_bert_weights(self.transform_norm, config.init_std)

    def no_weight_decay(self) -> set[str]:
        return {f"bert.{name}" for name in self.bert.no_weight_decay()}

    @property
    def decoder_weight(self) -> nn.Parameter:
        """The output projection: the word embeddings, ``(V, d)``."""
        return self.bert.embeddings.token.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        masked_positions: Tensor | None = None,
        label_smoothing: float = 0.0,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> BertHeadOutput:
        """Vocabulary logits, at every position or at the masked ones only.

        Args:
            labels: the original token at each masked position, ``-100`` elsewhere;
                ``(b, L)``, or ``(n,)`` already selected by ``masked_positions``.
            masked_positions: boolean ``(b, L)``, ``True`` = predict this position.
                ``None`` projects every position (Hugging Face's behaviour). Selecting
                them gives a shape that depends on the values (``n``), so a compiled
                or exported model should leave it out.
            validate: check the values of the inputs (:meth:`BertModel.forward`).

        Shape:
            logits ``(b, L, V)``; with ``masked_positions``, ``(n, V)`` in row-major
            order of the ``True`` entries. loss: mean cross-entropy over labels
            that are not ``-100`` (:mod:`qkv.losses`).
        """
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            need_weights=need_weights,
            validate=validate,
        )
        hidden = out.last_hidden_state  # (b, L, d)
        if masked_positions is not None:
            if masked_positions.dtype != torch.bool or masked_positions.shape != input_ids.shape:
                raise ValueError(
                    f"masked_positions must be a boolean tensor of shape {tuple(input_ids.shape)}, "
                    f"got {masked_positions.dtype} {tuple(masked_positions.shape)}"
                )
            hidden = hidden[masked_positions]  # (n, d)
            if labels is not None and labels.shape == masked_positions.shape:
                labels = labels[masked_positions]  # (n,)
        h = self.transform_norm(F.gelu(self.transform(hidden)))  # (..., d)
        logits = F.linear(h, self.decoder_weight, self.decoder_bias)  # (..., V)
        return _head_output(logits, labels, label_smoothing, out)


def _label_names(num_labels: int, label_names: Sequence[str] | None) -> tuple[str, ...]:
    if label_names is None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        return tuple(f"LABEL_{i}" for i in range(num_labels))
    if len(label_names) != num_labels:
        raise ValueError(f"got {len(label_names)} label_names for num_labels={num_labels}")
    return tuple(label_names)


class DenseClassificationHead(nn.Module):
    """RoBERTa's sequence-classification head after its first dropout: dense ``d -> d``,
    tanh, dropout, linear ``d -> C`` (``dense`` and ``out_proj``, Hugging Face's names).

    Shape: ``(..., d)`` -> ``(..., C)``.
    """

    def __init__(self, d_model: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(d_model, num_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class _BertClassifier(nn.Module):
    """What the sequence and token classifiers share: the body, the label names, and the
    head of the paper's fine-tuning (section 4): dropout, then one linear layer to ``C``
    labels, initialised like the rest of BERT. Parameter names follow Hugging Face's
    (``bert.``, ``classifier.``), so one checkpoint map serves both.

    Args:
        num_labels: number of classes ``C``.
        label_names: a name per class (default ``LABEL_0`` …); saved with the model.
        classifier_dropout: dropout before the classifier; default ``config.dropout``.
    """

    def uses_pooler(self, config: BertConfig) -> bool:
        """Whether the body needs its pooler (the sequence classifier with BERT's head)."""
        return False

    def build_head(self, config: BertConfig, num_labels: int, dropout: float) -> nn.Module:
        """The layers after the first dropout: one linear layer to ``C`` labels."""
        return nn.Linear(config.d_model, num_labels)

    def __init__(
        self,
        config: BertConfig,
        num_labels: int = 2,
        *,
        label_names: Sequence[str] | None = None,
        classifier_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.label_names = _label_names(num_labels, label_names)
        self.num_labels = num_labels
        self.classifier_dropout = classifier_dropout
        self.bert = BertModel(config, pooler=self.uses_pooler(config))
        p = config.dropout if classifier_dropout is None else classifier_dropout
        self.dropout = Dropout(p)
        self.classifier = self.build_head(config, num_labels, p)
        init_bert_weights(self.classifier, config.init_std)

    def no_weight_decay(self) -> set[str]:
        return {f"bert.{name}" for name in self.bert.no_weight_decay()}

    def classify(self, hidden: Tensor) -> Tensor:
        """Shape: ``(..., d)`` -> ``(..., C)``."""
        return self.classifier(self.dropout(hidden))

    forward_head = classify  # timm's name: features -> logits

    def head_input(self, out: BertOutput) -> Tensor:
        """What the head reads of the body's output."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        need_weights: bool | Sequence[int] = False,
        validate: bool = False,
    ) -> BertHeadOutput:
        """Logits of every class; with ``labels``, the mean cross-entropy (labels
        ``-100`` carry no loss); ``validate``: see :meth:`BertModel.forward`. Shapes:
        see the subclass."""
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            need_weights=need_weights,
            validate=validate,
        )
        logits = self.classify(self.head_input(out))  # (b, C) or (b, L, C)
        return _head_output(logits, labels, label_smoothing, out)


class BertForSequenceClassification(_BertClassifier):
    """One label per sequence from the pooled ``[CLS]`` state: dropout, then linear; or,
    with ``config.classifier_head == "dense"`` (RoBERTa), from the first token's state
    through :class:`DenseClassificationHead`, without a pooler. Arguments:
    :class:`_BertClassifier`. Shape: inputs ``(b, L)``, labels ``(b,)`` class indices
    -> logits ``(b, C)``."""

    def uses_pooler(self, config: BertConfig) -> bool:
        return config.classifier_head == "pooler"

    def build_head(self, config: BertConfig, num_labels: int, dropout: float) -> nn.Module:
        if config.classifier_head == "dense":
            return DenseClassificationHead(config.d_model, num_labels, dropout)
        return nn.Linear(config.d_model, num_labels)

    def head_input(self, out: BertOutput) -> Tensor:
        if out.pooled_output is None:  # the dense head reads the first token itself
            return out.last_hidden_state[:, 0]  # (b, d)
        return out.pooled_output  # (b, d)


class BertForTokenClassification(_BertClassifier):
    """One label per token (tagging, named entities): dropout, then linear, at every
    position; no pooler. Arguments: :class:`_BertClassifier`. Shape: inputs ``(b, L)``,
    labels ``(b, L)`` (``-100`` = no loss, e.g. padding or word-piece continuations)
    -> logits ``(b, L, C)``."""

    def head_input(self, out: BertOutput) -> Tensor:
        return out.last_hidden_state  # (b, L, d)
