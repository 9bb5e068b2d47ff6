"""The ViT recipes: the model, the engine's settings, and the job's own fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from qkv.models.vit import ViTConfig
from qkv.precision import Precision
from qkv.train import TrainConfig
from qkv.train.recipe import Recipe

__all__ = ["DATASETS", "IMAGE_FOLDER", "PRESETS", "ViTPreset", "get_preset"]

DATASETS = ("fashion-mnist", "digits")
#: ``dataset`` of a run on the user's own folder of images (``qkv vit train --images``).
IMAGE_FOLDER = "image-folder"


@dataclass(frozen=True)
class ViTPreset(Recipe[ViTConfig]):
    """A ViT recipe: ``model``, ``train`` (:class:`~qkv.train.recipe.Recipe`) and what
    only this job has."""

    dataset: str = "fashion-mnist"  # or "digits", or IMAGE_FOLDER
    batch_size: int = 128
    label_smoothing: float = 0.1
    flip_p: float = 0.0  # left-right flips (clothes, not digits)
    test_flip: bool = False  # average the predictions of each image and its mirror image
    crop_padding: int = 0  # random crops after zero padding; 0 = none
    valid_size: int = 5000  # held out of the training images

    derived: ClassVar[Mapping[str, str]] = {
        "train.seed": "the seed (--seed)",
        "dataset": "the preset (--preset) or --images",
        "model.num_classes": "the data's classes",
        "model.in_channels": "the data's images",
        "model.image_size": "the data's images (--image-size for your own)",
    }

    def __post_init__(self) -> None:
        if self.dataset not in (*DATASETS, IMAGE_FOLDER):
            raise ValueError(
                f"dataset must be one of {(*DATASETS, IMAGE_FOLDER)}, got {self.dataset!r}"
            )
        if self.batch_size < 1 or self.valid_size < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and valid_size ({self.valid_size}) must be >= 1"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.flip_p <= 1.0 or self.crop_padding < 0:
            raise ValueError(
                f"flip_p ({self.flip_p}) must be in [0, 1] and crop_padding "
                f"({self.crop_padding}) >= 0"
            )

    @property
    def augment(self) -> bool:
        return self.flip_p > 0 or self.crop_padding > 0


def _adamw_cosine(
    max_steps: int,
    lr: float,
    warmup_steps: int,
    *,
    precision: Precision = "fp32",
    every: int = 500,
) -> TrainConfig:
    # AdamW's default betas and eps, as DeiT and timm train ViTs; weight decay 0.05 on
    # the matrices (the model's no_weight_decay() names what is spared).
    return TrainConfig(
        max_steps=max_steps, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
        schedule="cosine", warmup_steps=warmup_steps,
        precision=precision, eval_every=every, checkpoint_every=every,
    )  # fmt: skip


PRESETS: dict[str, ViTPreset] = {
    # Seconds: the test suite. 1,437 training digits, 144 held out, 8 epochs of 21 batches.
    "digits": ViTPreset(
        "digits", ViTConfig.digits(), _adamw_cosine(170, 2e-3, 20, every=85),
        dataset="digits", batch_size=64, valid_size=144,
    ),
    # The 30-minute preset: 7 px patches (16 tokens), width 128, 6 layers; fp32, which is
    # faster than bf16 autocast at this width on the CPU. Trained and scored on mirror
    # images too (benchmarks/RESULTS.md has the accuracy and the time).
    "fashion": ViTPreset(
        "fashion", ViTConfig.fashion_tiny(), _adamw_cosine(9000, 2e-3, 500),
        dataset="fashion-mnist", batch_size=128, flip_p=0.5, test_flip=True, valid_size=3000,
    ),
    # 4 px patches (49 tokens): more accurate per epoch at the end, about three times the cost of a
    # step; bf16 autocast pays off from 49 tokens on, where the CPU has bf16 instructions ("auto").
    "fashion-small": ViTPreset(
        "fashion-small", ViTConfig.fashion_small(),
        _adamw_cosine(6000, 2e-3, 500, precision="auto"),
        dataset="fashion-mnist", batch_size=128, flip_p=0.5, valid_size=3000,
    ),
}  # fmt: skip


def get_preset(name: str) -> ViTPreset:
    """The preset called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
