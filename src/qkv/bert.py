"""BERT in one import: the models and the Hugging Face checkpoint converter.

from qkv import bert
model = bert.from_pretrained("path/to/checkpoint")  # config.json + model.safetensors

RoBERTa and XLM-RoBERTa folders load the same way (BertConfig's RoBERTa options set).
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
