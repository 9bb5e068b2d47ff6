"""Data: loaders for the real corpora and image sets, tokenizers, batching."""
