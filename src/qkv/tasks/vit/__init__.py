"""Image classification with qkv's ViT: recipes, training, classifying, scoring.

- :mod:`~qkv.tasks.vit.presets`: the recipes (``digits``, ``fashion``, ``fashion-small``);
- :mod:`~qkv.tasks.vit.data`: the image sets and the held-out validation split;
- :mod:`~qkv.tasks.vit.train`: :func:`train_vit`;
- :mod:`~qkv.tasks.vit.classifier`: :class:`Classifier`, :func:`load_classifier`.
"""

from qkv.tasks.vit.classifier import (
    FAMILY,
    Classifier,
    Prediction,
    evaluate_accuracy,
    load_classifier,
    predict_probabilities,
)
from qkv.tasks.vit.data import load_images, split_valid
from qkv.tasks.vit.presets import DATASETS, PRESETS, ViTPreset
from qkv.tasks.vit.train import TrainReport, train_vit

__all__ = [
    "DATASETS",
    "FAMILY",
    "PRESETS",
    "Classifier",
    "Prediction",
    "TrainReport",
    "ViTPreset",
    "evaluate_accuracy",
    "load_classifier",
    "load_images",
    "predict_probabilities",
    "split_valid",
    "train_vit",
]
