"""A fine-tuned BERT sequence classifier with its tokenizer: logits, predictions, accuracy.

An input is a text, or a ``(text, pair)`` tuple for a model fine-tuned on sentence
pairs (``[CLS] text [SEP] pair [SEP]``, segments 0 then 1). What the model was trained on
is kept beside it in ``qkv_classifier.json`` (:data:`TASK_FILE`: the columns, and
whether it reads pairs); a folder without that file reads single texts.

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

from qkv.compile import compile_model
from qkv.convert.bert import from_pretrained
from qkv.convert.common import CheckpointError
from qkv.data.text import Text
from qkv.data.wordpiece import CONFIG_FILE, Encoded, WordPieceTokenizer
from qkv.models.bert import BertForSequenceClassification
from qkv.tasks.bert.common import checkpoint_dir, model_device

__all__ = [
    "HEAD_WEIGHT",
    "HEAD_WEIGHTS",
    "TASK_FILE",
    "Classifier",
    "Prediction",
    "encode_texts",
    "has_trained_head",
    "warn_if_truncated",
    "weight_names",
]

log = logging.getLogger(__name__)
HEAD_WEIGHT = "classifier.weight"
#: The last weight of a trained sequence-classification head: BERT's, RoBERTa's.
HEAD_WEIGHTS = (HEAD_WEIGHT, "classifier.out_proj.weight")
TASK_FILE = "qkv_classifier.json"  # beside config.json: what the classifier reads


def encode_texts(
    tokenizer: WordPieceTokenizer, texts: Sequence[Text], max_length: int | None
) -> Encoded:
    """A batch of texts, or of ``(text, pair)`` tuples (segment ids 0 then 1), padded.

    Shape: ``b`` inputs -> :class:`Encoded` of ``(b, L)``.
    """
    if texts and isinstance(texts[0], tuple):
        firsts = [t[0] for t in texts if isinstance(t, tuple)]
        seconds = [t[1] for t in texts if isinstance(t, tuple)]
        if len(firsts) != len(texts):
            raise ValueError("a batch mixes sentence pairs and single texts")
        return tokenizer.encode(firsts, seconds, max_length=max_length)
    if any(isinstance(t, tuple) for t in texts):
        raise ValueError("a batch mixes sentence pairs and single texts")
    return tokenizer.encode([str(t) for t in texts], max_length=max_length)


def _parts(text: Text) -> list[str]:
    return list(text) if isinstance(text, tuple) else [text]


def warn_if_truncated(
    tokenizer: WordPieceTokenizer, texts: Sequence[Text], max_length: int
) -> None:
    """Warn about each text (or pair) longer than ``max_length`` tokens (``[CLS]`` and
    ``[SEP]`` included): the model reads only its beginning (of each side, for a pair)."""
    flat = [part for text in texts for part in _parts(text)]
    lengths = iter(len(ids) for ids in tokenizer.encode_ids(flat))
    for i, text in enumerate(texts):
        parts = _parts(text)
        specials = tokenizer.num_special_tokens(len(parts) > 1)
        length = sum(next(lengths) for _ in parts) + specials
        if length > max_length:
            log.warning(
                "text %d is %d tokens long, the model reads at most %d: truncated",
                i + 1,
                length,
                max_length,
            )


def has_trained_head(path: Path) -> bool:
    """Whether the checkpoint folder ``path`` holds a sequence-classification head."""
    return bool(set(HEAD_WEIGHTS) & weight_names(path))


def weight_names(path: Path) -> set[str]:
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
    pairs: bool = False  # it was fine-tuned on (text, pair) inputs

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
    ) -> Classifier:
        """From a fine-tuned checkpoint folder, on ``device`` in ``dtype``; inputs are
        truncated to the length the model was trained with (``model_max_length`` of
        ``tokenizer_config.json``). ``compile``: through ``torch.compile``
        (:func:`qkv.compile.compile_model`, one program for every batch length)."""
        path = checkpoint_dir(path)
        # Without its trained head a classifier answers at random: refuse it.
        if (path / "config.json").is_file() and not has_trained_head(path):
            raise CheckpointError(
                f"{path}: no trained classification head ({HEAD_WEIGHT} is not in its "
                "weights); fine-tune it first (qkv bert finetune), or use qkv embed"
            )
        model = from_pretrained(path, "classification")
        assert isinstance(model, BertForSequenceClassification)
        max_length = model.config.max_length
        if (path / CONFIG_FILE).is_file():
            settings = json.loads((path / CONFIG_FILE).read_text())
            max_length = settings.get("model_max_length", max_length)
        pairs = False
        if (path / TASK_FILE).is_file():
            from qkv.convert.common import read_json

            pairs = read_json(path / TASK_FILE).get("text_pair_column") is not None
        model = compile_model(model.to(device=device, dtype=dtype).eval(), compile, dynamic=True)
        return cls(model, WordPieceTokenizer.from_pretrained(path), max_length, pairs)

    @torch.inference_mode()
    def logits(self, texts: Sequence[Text], *, batch_size: int = 32, warn: bool = True) -> Tensor:
        """Shape: ``b`` texts (or ``(text, pair)`` tuples) -> ``(b, C)`` float32 on the
        CPU; batches of similar length (less padding to compute), input order kept.
        ``warn``: log each text the model reads only the beginning of."""
        self.model.eval()
        if not texts:
            return torch.empty(0, self.model.num_labels)
        if warn:
            warn_if_truncated(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(texts)), key=lambda i: sum(map(len, _parts(texts[i]))))
        out = torch.empty(len(texts), self.model.num_labels)
        device = model_device(self.model)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = encode_texts(self.tokenizer, [texts[i] for i in chunk], self.max_length)
            out[chunk] = self.model(**batch.to(device).as_dict()).logits.float().cpu()
        return out

    def predict(self, texts: Sequence[Text], *, batch_size: int = 32) -> list[Prediction]:
        probabilities = self.logits(texts, batch_size=batch_size).softmax(-1)  # (b, C)
        names = self.model.label_names
        return [
            Prediction(names[int(p.argmax())], {n: float(v) for n, v in zip(names, p, strict=True)})
            for p in probabilities
        ]

    def accuracy(self, examples: Sequence[tuple[Text, int]]) -> float:
        """The fraction of ``examples`` ``(text, label index)`` predicted right; refuses
        an empty set (its accuracy is undefined, not NaN)."""
        if not examples:
            raise ValueError("no examples to score")
        # No truncation warnings: scoring a data set (long articles) would log one per text.
        predicted = self.logits([t for t, _ in examples], warn=False).argmax(-1)  # (b,)
        return float((predicted == torch.tensor([y for _, y in examples])).float().mean())
