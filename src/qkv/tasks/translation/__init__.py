"""Translation with qkv's Transformer, on the German–English dictionary or any parallel
corpus (:mod:`qkv.data.parallel`): recipes, training, translating, scoring.

- :mod:`~qkv.tasks.translation.presets`: the recipes (``tiny``, ``small``, ``medium``,
  ``base``);
- :mod:`~qkv.tasks.translation.train`: :func:`train_translator`;
- :mod:`~qkv.tasks.translation.translator`: :class:`Translator`,
  :func:`load_translator`, :func:`score`, :func:`evaluate_test`.
"""

from qkv.tasks.translation.presets import PRESETS, TranslationPreset
from qkv.tasks.translation.train import encode_pairs, epoch_batches, train_translator
from qkv.tasks.translation.translator import (
    FAMILY,
    Translator,
    evaluate_test,
    load_translator,
    score,
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "TranslationPreset",
    "Translator",
    "encode_pairs",
    "epoch_batches",
    "evaluate_test",
    "load_translator",
    "score",
    "train_translator",
]
