"""qkv: the Transformer family, from attention up, on PyTorch.

The building blocks are importable from here; models live in :mod:`qkv.models`.
"""

from importlib import metadata as _metadata

from qkv.attention import (
    Attention,
    AttentionOutput,
    KVCache,
    MultiHeadAttention,
    attention_scores,
    attention_weights,
    scaled_dot_product_attention,
)
from qkv.embedding import TokenEmbedding
from qkv.layers import (
    AddNorm,
    Decoder,
    DecoderCache,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    FeedForward,
    StaticDecoderCache,
)
from qkv.masks import causal_mask, padding_mask_from_ids
from qkv.models import Transformer, TransformerConfig
from qkv.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

try:  # the installed distribution's version, as `pip show qkv` reports it
    __version__ = _metadata.version("qkv")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AddNorm",
    "Attention",
    "AttentionOutput",
    "Decoder",
    "DecoderCache",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "StaticDecoderCache",
    "TokenEmbedding",
    "Transformer",
    "TransformerConfig",
    "attention_scores",
    "attention_weights",
    "causal_mask",
    "padding_mask_from_ids",
    "scaled_dot_product_attention",
]
