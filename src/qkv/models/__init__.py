"""The models of the Transformer family built from qkv's layers."""

from qkv.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertHeadOutput,
    BertModel,
    BertOutput,
)
from qkv.models.transformer import Seq2SeqOutput, Transformer, TransformerConfig

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertHeadOutput",
    "BertModel",
    "BertOutput",
    "Seq2SeqOutput",
    "Transformer",
    "TransformerConfig",
]
