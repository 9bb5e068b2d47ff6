"""Hugging Face checkpoints in and out of qkv, one module per model family
(:mod:`qkv.convert.bert`, :mod:`qkv.convert.vit`, :mod:`qkv.convert.marian`), each of the same shape
(:mod:`qkv.convert.common`):

- ``from_pretrained(directory) -> model``: a checkpoint folder (``config.json`` and the
  weights) in;
- ``save_pretrained(model, directory)``: the same layout out, which ``transformers``
  opens;
- ``config_from_hf`` / ``config_to_hf``: ``config.json`` to the qkv configuration and
  back;
- one :class:`~qkv.convert.common.NameMap` of Hugging Face -> qkv parameter names;
- :class:`CheckpointError` (a ``ValueError``) listing everything that does not fit,
  raised before the model is touched.
"""

from qkv.convert.common import CheckpointError

__all__ = ["CheckpointError"]
