"""BERT in one import: the models and the Hugging Face checkpoint converter.

from qkv import bert
model = bert.from_pretrained("path/to/checkpoint")  # config.json + model.safetensors
"""

from qkv.convert.bert import CheckpointError, from_pretrained, save_pretrained
from qkv.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertHeadOutput,
    BertModel,
    BertOutput,
)

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertHeadOutput",
    "BertModel",
    "BertOutput",
    "CheckpointError",
    "from_pretrained",
    "save_pretrained",
]
