"""The images a ViT task reads: the bundled image sets, and the held-out validation split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from qkv.data.images import ImageSet, load_digits, load_fashion_mnist
from qkv.tasks.vit.presets import DATASETS

__all__ = ["load_images", "split_valid", "subset"]


def load_images(dataset: str, split: str, *, data_dir: str | Path | None = None) -> ImageSet:
    """``split`` ("train" or "test") of ``dataset`` ("fashion-mnist" or "digits")."""
    if dataset == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if dataset == "digits":
        return load_digits(split)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def subset(images: ImageSet, index: Tensor) -> ImageSet:
    return replace(images, images=images.images[index], labels=images.labels[index])


def split_valid(images: ImageSet, valid_size: int) -> tuple[ImageSet, ImageSet]:
    """(train, valid): ``valid_size`` images held out at random, the same ones on every
    run and for every training seed (a fixed generator)."""
    if not 0 < valid_size < len(images):
        raise ValueError(f"valid_size must be in [1, {len(images)}), got {valid_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(12345))
    train, valid = order[valid_size:].sort().values, order[:valid_size].sort().values
    return subset(images, train), subset(images, valid)
