"""Sentence embeddings from a BERT body, as sentence-transformers computes them for
all-MiniLM-L6-v2: mean-pooled over the real tokens, then L2-normalised.

Notation: b batch size, L sequence length, d model width.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.convert.bert import from_pretrained
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.models.bert import BertModel
from qkv.tasks.bert.classify import warn_if_truncated
from qkv.tasks.bert.common import checkpoint_dir, minilm_path, model_device

__all__ = ["SentenceEncoder", "cosine_similarities", "mean_pool"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the hidden states of the real tokens (``[CLS]``/``[SEP]`` included, padding
    not), the pooling all-MiniLM-L6-v2 was trained with.

    Shape: hidden ``(b, L, d)``, attention_mask ``(b, L)`` -> ``(b, d)``.
    """
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (b, d)


def cosine_similarities(embeddings: Tensor) -> Tensor:
    """Shape: ``(b, d)`` -> ``(b, b)`` cosine similarity of every pair."""
    unit = F.normalize(embeddings, dim=-1)
    return unit @ unit.T


@dataclass
class SentenceEncoder:
    """A BERT body and its tokenizer, turning sentences into embeddings."""

    model: BertModel
    tokenizer: WordPieceTokenizer
    max_length: int = 256  # sentence-transformers' limit for all-MiniLM-L6-v2

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, device: str | torch.device = "cpu"
    ) -> SentenceEncoder:
        """From a checkpoint folder (default: the installed all-MiniLM-L6-v2)."""
        path = checkpoint_dir(path) if path is not None else minilm_path()
        model = from_pretrained(path).to(device).eval()
        assert isinstance(model, BertModel)
        max_length = model.config.max_position_embeddings
        settings = path / "sentence_bert_config.json"
        if settings.is_file():
            max_length = min(max_length, json.loads(settings.read_text())["max_seq_length"])
        return cls(model, WordPieceTokenizer.from_pretrained(path), max_length)

    @torch.inference_mode()
    def encode(
        self, sentences: Sequence[str], *, normalize: bool = True, batch_size: int = 32
    ) -> Tensor:
        """Shape: ``b`` sentences -> ``(b, d)`` embeddings, unit length if ``normalize``."""
        self.model.eval()
        warn_if_truncated(self.tokenizer, sentences, self.max_length)
        out = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenizer.encode(
                sentences[start : start + batch_size], max_length=self.max_length
            ).to(model_device(self.model))
            hidden = self.model(**batch.as_dict()).last_hidden_state  # (b, L, d)
            out.append(mean_pool(hidden, batch.attention_mask))
        embeddings = torch.cat(out)  # (b, d)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings
