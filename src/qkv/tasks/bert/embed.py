"""Sentence embeddings from a BERT body (or a RoBERTa, XLM-RoBERTa one), pooled as the
checkpoint's sentence-transformers files say (all-MiniLM-L6-v2: mean over the real tokens,
then L2-normalised).

A sentence-transformers folder lists its steps in ``modules.json``: the Transformer (the
BERT in the folder itself), a Pooling module whose ``config.json`` says how token states
become one vector (``pooling_mode_mean_tokens``, ``pooling_mode_cls_token``,
``pooling_mode_max_tokens``), and optionally a Normalize module. :func:`read_pooling`
reads them; a step qkv does not compute (a Dense layer, weighted-mean or last-token
pooling, several modes at once) is refused rather than skipped, since skipping it would
give vectors that look right and are not. A plain BERT folder, without ``modules.json``,
is mean-pooled and not normalised, as sentence-transformers treats one.

Notation: b batch size, L sequence length, d model width, n number of sentences.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.compile import compile_model
from qkv.convert.bert import from_pretrained
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.models.bert import BertModel
from qkv.tasks.bert.common import checkpoint_dir, minilm_path, model_device

__all__ = [
    "POOLING_MODES",
    "PoolingSpec",
    "SentenceEncoder",
    "cosine_similarities",
    "mean_pool",
    "nearest",
    "pool",
    "read_pooling",
]

log = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max")

#: A Pooling config's flag -> the mode qkv computes (None: one it does not).
_POOLING_FLAGS: dict[str, str | None] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None,
    "pooling_mode_lasttoken": None,
}
_MODULES = ("Transformer", "Pooling", "Normalize")
#: Warnings about truncated sentences shown one by one; the rest are counted.
_TRUNCATION_WARNINGS = 5


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the hidden states of the real tokens (``[CLS]``/``[SEP]`` included, padding
    not), the pooling all-MiniLM-L6-v2 was trained with.

    Shape: hidden ``(b, L, d)``, attention_mask ``(b, L)`` -> ``(b, d)``.
    """
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (b, d)


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """One vector per sentence: ``mean`` (:func:`mean_pool`), ``cls`` (the first token's
    state) or ``max`` (each feature's largest value over the real tokens).

    Shape: hidden ``(b, L, d)``, attention_mask ``(b, L)`` bool -> ``(b, d)``.
    """
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return hidden[:, 0]  # (b, d)
    if mode == "max":
        # Every sentence has real tokens ([CLS] at least), so no row is all -inf.
        padded = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        return padded.amax(dim=1)  # (b, d)
    raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {mode!r}")


def cosine_similarities(embeddings: Tensor) -> Tensor:
    """Shape: ``(b, d)`` -> ``(b, b)`` cosine similarity of every pair."""
    unit = F.normalize(embeddings, dim=-1)
    return unit @ unit.T


def nearest(query: Tensor, corpus: Tensor, k: int) -> list[tuple[int, float]]:
    """The ``k`` rows of ``corpus`` most cosine-similar to ``query``, best first (a tie
    keeps the corpus order): ``[(row, similarity), ...]``, at most ``n`` of them.

    Shape: query ``(d,)``, corpus ``(n, d)``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores = F.normalize(corpus.float(), dim=-1) @ F.normalize(query.float(), dim=-1)  # (n,)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return [(int(i), float(scores[i])) for i in order.tolist()]


@dataclass(frozen=True)
class PoolingSpec:
    """How a checkpoint's token states become a sentence vector."""

    mode: str  # one of POOLING_MODES
    normalize: bool
    source: str  # the modules.json it was read from
    width: int | None = None  # the Pooling config's word_embedding_dimension


def _read_json(file: Path) -> Any:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (listed in the folder's modules.json)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as cause:
        raise ValueError(f"{file}: not valid JSON ({cause})") from None


def _pooling_mode(file: Path) -> str:
    """The one mode a sentence-transformers Pooling ``config.json`` asks for."""
    config = _read_json(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    if isinstance(config.get("pooling_mode"), str):  # the constructor's spelling
        named = config["pooling_mode"]
        asked = ["mean" if named == "mean_tokens" else named]
    else:
        asked = [
            name.removeprefix("pooling_mode_")
            for name, value in config.items()
            if name.startswith("pooling_mode_") and value is True
        ]
        asked = [_POOLING_FLAGS.get(f"pooling_mode_{a}") or a for a in asked]
    if not asked:
        raise ValueError(f"{file}: no pooling_mode_* is true, so no pooling is set")
    unsupported = [a for a in asked if a not in POOLING_MODES]
    if unsupported:
        raise ValueError(
            f"{file}: pooling {', '.join(unsupported)} is not supported "
            f"(qkv embed pools with {', '.join(POOLING_MODES)}; --pooling overrides)"
        )
    if len(asked) > 1:
        raise ValueError(
            f"{file}: several pooling modes at once ({', '.join(asked)}) are not supported "
            "(qkv embed pools with one; --pooling overrides)"
        )
    return asked[0]


def read_pooling(path: str | Path, *, mode: str | None = None) -> PoolingSpec | None:
    """The pooling and normalisation of the sentence-transformers folder ``path``, read
    from ``modules.json`` and its Pooling module's ``config.json`` (not read when
    ``mode`` overrides it); ``None`` when the folder has no ``modules.json`` (a plain
    BERT checkpoint).

    Raises ValueError naming the file for a module or a pooling qkv does not compute.
    """
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_file}: expected a list of modules (JSON objects)")
    kinds = []
    width = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = str(module.get("path", ""))
        if kind not in _MODULES:
            raise ValueError(
                f"{modules_file}: module {module.get('type')!r} ({where or 'the folder'}) is "
                f"not supported (qkv embed computes {', '.join(_MODULES)})"
            )
        if kind == "Transformer" and where not in ("", "."):
            raise ValueError(
                f"{modules_file}: the Transformer is in the sub-folder {where!r}; "
                "pass that folder as --model"
            )
        if kind == "Pooling" and mode is None:
            config_file = path / where / "config.json"
            mode = _pooling_mode(config_file)
            width = _read_json(config_file).get("word_embedding_dimension")
        kinds.append(kind)
    if "Pooling" not in kinds:
        raise ValueError(f"{modules_file}: lists no Pooling module, so no sentence vector")
    if kinds.count("Pooling") > 1 or "Normalize" in kinds[: kinds.index("Pooling")]:
        raise ValueError(f"{modules_file}: expected one Pooling module, then Normalize at most")
    assert mode is not None
    return PoolingSpec(
        mode, "Normalize" in kinds, str(modules_file), width if isinstance(width, int) else None
    )


@dataclass
class SentenceEncoder:
    """A BERT body and its tokenizer, turning sentences into embeddings."""

    model: BertModel
    tokenizer: WordPieceTokenizer
    max_length: int = 256  # sentence-transformers' limit for all-MiniLM-L6-v2
    pooling: str = "mean"
    normalize: bool = True
    path: Path | None = None

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        compile: bool = False,
    ) -> SentenceEncoder:
        """From a checkpoint folder (default: the installed all-MiniLM-L6-v2), pooled
        as its sentence-transformers files say (:func:`read_pooling`) unless ``pooling``
        (one of :data:`POOLING_MODES`) or ``normalize`` say otherwise. ``dtype``: the
        model's number format (bf16 and fp16 run the model; pooling is in float32).
        ``compile``: through ``torch.compile`` (:func:`qkv.compile.compile_model`, one
        program for every batch length)."""
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
        path = checkpoint_dir(path) if path is not None else minilm_path()
        spec = read_pooling(path, mode=pooling)  # before the weights: a bad file fails fast
        model = from_pretrained(path).to(device=device, dtype=dtype).eval()
        assert isinstance(model, BertModel)
        model = compile_model(model, compile, dynamic=True)
        mode = pooling or (spec.mode if spec else "mean")
        unit = normalize if normalize is not None else (spec.normalize if spec else False)
        if spec is None and (pooling is None or normalize is None):
            log.warning(
                "%s: no sentence-transformers modules.json; %s pooling, %s "
                "(--pooling and --normalize choose otherwise)",
                path,
                mode,
                "normalised" if unit else "not normalised",
            )
        if spec is not None and spec.width is not None and spec.width != model.config.d_model:
            raise ValueError(
                f"{spec.source}: the Pooling module expects width {spec.width}, "
                f"the model has {model.config.d_model}"
            )
        max_length = model.config.max_length  # RoBERTa: less the positions padding takes
        settings = path / "sentence_bert_config.json"
        if settings.is_file():
            limit = _read_json(settings)
            limit = limit.get("max_seq_length") if isinstance(limit, dict) else None
            if not isinstance(limit, int) or limit < 3:
                raise ValueError(f"{settings}: expected max_seq_length, a whole number >= 3")
            max_length = min(max_length, limit)
        tokenizer = WordPieceTokenizer.from_pretrained(path)
        return cls(model, tokenizer, max_length, mode, unit, path)

    def token_ids(self, sentences: Sequence[str]) -> list[list[int]]:
        """Each sentence's ids, ``[CLS] ... [SEP]`` (RoBERTa: ``<s> ... </s>``), cut to
        ``max_length`` with a warning
        (the first few named, the rest counted): the model reads only the beginning."""
        inner = self.tokenizer.tokenizer
        # Without offsets, which embedding never reads: the faster batch encoder.
        encode_batch = getattr(inner, "encode_batch_fast", inner.encode_batch)
        rows = [e.ids for e in encode_batch(list(sentences))]
        limit = self.max_length
        long = [i for i, ids in enumerate(rows) if len(ids) > limit]
        for shown, i in enumerate(long):
            if shown < _TRUNCATION_WARNINGS:
                log.warning(
                    "text %d is %d tokens long, the model reads at most %d: truncated",
                    *(i + 1, len(rows[i]), limit),
                )
            rows[i] = [*rows[i][: limit - 1], rows[i][-1]]  # keep the closing [SEP]
        if len(long) > _TRUNCATION_WARNINGS:
            log.warning(
                "%d more texts are longer than %d tokens: truncated",
                *(len(long) - _TRUNCATION_WARNINGS, limit),
            )
        return rows

    @torch.inference_mode()
    def encode(
        self,
        sentences: Sequence[str],
        *,
        normalize: bool | None = None,
        batch_size: int = 32,
        progress: bool | None = False,
    ) -> Tensor:
        """Embeddings, pooled as :attr:`pooling` says, unit length if ``normalize``
        (default: the checkpoint's choice, :attr:`normalize`).

        The sentences run longest first, so that each batch pads to nearly its own
        length, and come back in the order given. ``progress``: a bar on stderr
        (``None``: on a terminal only).

        Shape: ``n`` sentences -> ``(n, d)`` float32, on the CPU.
        """
        if not sentences:
            raise ValueError("nothing to embed: no sentences")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        from tqdm.auto import tqdm

        self.model.eval()
        unit = self.normalize if normalize is None else normalize
        rows = self.token_ids(sentences)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        device = model_device(self.model)
        pad_id = self.tokenizer.pad_id
        out = []
        disable = None if progress is None else not progress
        with tqdm(total=len(rows), unit="sentence", disable=disable, leave=False) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                lengths = np.array([len(rows[i]) for i in chunk])
                ids = np.full((len(chunk), int(lengths.max())), pad_id, dtype=np.int64)
                for row, i in enumerate(chunk):
                    ids[row, : lengths[row]] = rows[i]
                mask = np.arange(ids.shape[1]) < lengths[:, None]  # (b, L), True = real token
                input_ids = torch.from_numpy(ids).to(device)
                attention_mask = torch.from_numpy(mask).to(device)
                hidden = self.model(input_ids, attention_mask).last_hidden_state  # (b, L, d)
                out.append(pool(hidden.float(), attention_mask, self.pooling))  # (b, d)
                bar.update(len(chunk))
        pooled = torch.cat(out)  # (n, d), longest first
        if unit:
            pooled = F.normalize(pooled, dim=-1)
        embeddings = torch.empty_like(pooled)
        embeddings[torch.tensor(order, device=pooled.device)] = pooled  # the order given
        return embeddings.cpu()
