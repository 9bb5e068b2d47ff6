"""A fine-tuned BERT sequence classifier with its tokenizer: logits, predictions, accuracy.

Notation: b batch size, C labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qkv.convert.bert import from_pretrained
from qkv.data.wordpiece import CONFIG_FILE, WordPieceTokenizer
from qkv.models.bert import BertForSequenceClassification
from qkv.tasks.bert.common import checkpoint_dir, model_device

__all__ = ["Classifier", "Prediction"]


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]


@dataclass
class Classifier:
    """A sequence classifier and its tokenizer, loaded from a checkpoint folder."""

    model: BertForSequenceClassification
    tokenizer: WordPieceTokenizer
    max_length: int = 512

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Classifier:
        """From a fine-tuned checkpoint folder; inputs are truncated to the length the
        model was trained with (``model_max_length`` of ``tokenizer_config.json``)."""
        path = checkpoint_dir(path)
        model = from_pretrained(path, "classification")
        assert isinstance(model, BertForSequenceClassification)
        max_length = model.config.max_position_embeddings
        if (path / CONFIG_FILE).is_file():
            settings = json.loads((path / CONFIG_FILE).read_text())
            max_length = settings.get("model_max_length", max_length)
        return cls(model.to(device).eval(), WordPieceTokenizer.from_pretrained(path), max_length)

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> Tensor:
        """Shape: ``b`` texts -> ``(b, C)``; batches of similar length (less padding to
        compute), input order kept."""
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.num_labels)
        device = model_device(self.model)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer.encode([texts[i] for i in chunk], max_length=self.max_length)
            out[chunk] = self.model(**batch.to(device).as_dict()).logits.float().cpu()
        return out

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probabilities = self.logits(texts).softmax(-1)  # (b, C)
        names = self.model.label_names
        return [
            Prediction(names[int(p.argmax())], {n: float(v) for n, v in zip(names, p, strict=True)})
            for p in probabilities
        ]

    def accuracy(self, examples: Sequence[tuple[str, int]]) -> float:
        predicted = self.logits([t for t, _ in examples]).argmax(-1)  # (b,)
        return float((predicted == torch.tensor([y for _, y in examples])).float().mean())
