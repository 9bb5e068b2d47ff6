"""A fine-tuned BERT sequence classifier with its tokenizer: logits, predictions, accuracy.

Notation: b batch size, C labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qkv.convert.bert import from_pretrained
from qkv.convert.common import CheckpointError
from qkv.data.wordpiece import CONFIG_FILE, WordPieceTokenizer
from qkv.models.bert import BertForSequenceClassification
from qkv.tasks.bert.common import checkpoint_dir, model_device

__all__ = ["Classifier", "Prediction", "warn_if_truncated"]

log = logging.getLogger(__name__)
HEAD_WEIGHT = "classifier.weight"


def warn_if_truncated(tokenizer: WordPieceTokenizer, texts: Sequence[str], max_length: int) -> None:
    """Warn about each text longer than ``max_length`` tokens (``[CLS]``/``[SEP]``
    included): the model reads only its beginning."""
    for i, ids in enumerate(tokenizer.encode_ids(texts)):
        if len(ids) + 2 > max_length:
            log.warning(
                "text %d is %d tokens long, the model reads at most %d: truncated",
                i + 1,
                len(ids) + 2,
                max_length,
            )


def _weight_names(path: Path) -> set[str]:
    """The tensor names of a checkpoint folder, read from the file headers where the
    format allows (safetensors), so a large checkpoint is not loaded twice."""
    from safetensors import SafetensorError, safe_open

    from qkv.convert.common import read_json, read_weights

    file = path / "model.safetensors"
    if file.is_file():
        try:
            with safe_open(file, framework="pt") as opened:
                return set(opened.keys())
        except SafetensorError as error:  # its message does not name the file
            raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(read_json(index).get("weight_map") or {})
    return set(read_weights(path))


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
        # Without its trained head a classifier answers at random: refuse it.
        if (path / "config.json").is_file() and HEAD_WEIGHT not in _weight_names(path):
            raise CheckpointError(
                f"{path}: no trained classification head ({HEAD_WEIGHT} is not in its "
                "weights); fine-tune it first (qkv bert finetune), or use qkv embed"
            )
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
        warn_if_truncated(self.tokenizer, texts, self.max_length)
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
