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
from qkv.models.vit import PatchEmbedding, ViT, ViTConfig, ViTOutput

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertHeadOutput",
    "BertModel",
    "BertOutput",
    "PatchEmbedding",
    "Seq2SeqOutput",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "ViTOutput",
]
