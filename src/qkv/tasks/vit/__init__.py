"""Image classification with qkv's ViT: recipes, training, classifying, scoring.

- :mod:`~qkv.tasks.vit.presets`: the recipes (``digits``, ``fashion``, ``fashion-small``);
- :mod:`~qkv.tasks.vit.data`: the image sets, the held-out validation split, and the
  user's own folders of images split into train, valid and test;
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
    scores,
)
from qkv.tasks.vit.data import (
    FolderSplits,
    load_folder_splits,
    load_images,
    load_recorded_test,
    split_valid,
)
from qkv.tasks.vit.presets import DATASETS, IMAGE_FOLDER, PRESETS, ViTPreset
from qkv.tasks.vit.train import TrainReport, train_vit

__all__ = [
    "DATASETS",
    "FAMILY",
    "IMAGE_FOLDER",
    "PRESETS",
    "Classifier",
    "FolderSplits",
    "Prediction",
    "TrainReport",
    "ViTPreset",
    "evaluate_accuracy",
    "load_classifier",
    "load_folder_splits",
    "load_images",
    "load_recorded_test",
    "predict_probabilities",
    "scores",
    "split_valid",
    "train_vit",
]
