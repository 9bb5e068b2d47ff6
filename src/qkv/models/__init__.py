"""The models of the Transformer family built from qkv's layers."""

from qkv.models.transformer import Seq2SeqOutput, Transformer, TransformerConfig

__all__ = ["Seq2SeqOutput", "Transformer", "TransformerConfig"]
