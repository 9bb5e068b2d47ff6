"""The images a ViT task reads: the bundled image sets, the held-out validation split,
and a folder of the user's own images (:mod:`qkv.data.image_folder`) split into train,
valid and test."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.data.image_folder import ImageFolder, load_image_folder, split_by_path
from qkv.data.images import ImageSet, load_digits, load_fashion_mnist
from qkv.data.splits import Split
from qkv.tasks.vit.presets import DATASETS

__all__ = [
    "FolderSplits",
    "load_folder_splits",
    "load_images",
    "load_recorded_test",
    "split_valid",
    "subset",
]


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


@dataclass(frozen=True, eq=False)
class FolderSplits:
    """Train, valid and test images from the user's folders; ``record``: the folders
    and the split, as a run keeps them (``meta.json``'s ``data``) so that
    :func:`load_recorded_test` finds the same test images again."""

    train: ImageFolder
    valid: ImageFolder
    test: ImageFolder
    record: dict[str, Any]

    @property
    def skipped(self) -> list[str]:
        """Every unreadable file left out (``--skip-bad-files``), with its folder."""
        folders = {id(f): f for f in (self.train, self.valid, self.test)}.values()
        return sorted({str(f.root / name) for f in folders for name in f.skipped})


def _percentages(valid_given: bool, test_given: bool) -> tuple[int, int]:
    """(train, valid) percent of the training folder; the rest is test. A split with a
    folder of its own takes nothing from the training folder."""
    valid = 0 if valid_given else 10
    test = 0 if test_given else 10
    return 100 - valid - test, valid


def load_folder_splits(
    images: str | os.PathLike[str],
    *,
    image_size: int,
    channels: int,
    valid_images: str | os.PathLike[str] | None = None,
    test_images: str | os.PathLike[str] | None = None,
    skip_bad_files: bool = False,
) -> FolderSplits:
    """The user's images in train, valid and test.

    ``images`` is split by a hash of each file's relative path: 80% train, 10% valid,
    10% test, except for the splits given their own folder (``valid_images``,
    ``test_images``), whose class sub-folders must be those of ``images``. Every image
    is converted to ``channels`` and resized and cropped to ``image_size``
    (:func:`qkv.data.image_folder.read_image_file`).

    Raises ``ValueError`` naming the folder when a split is left without images.
    """
    train_percent, valid_percent = _percentages(valid_images is not None, test_images is not None)
    load = dict(image_size=image_size, channels=channels, skip_bad_files=skip_bad_files)
    folder = load_image_folder(images, **load)
    classes = folder.images.classes
    # The other folders' class names are checked before any of their images is decoded.
    own = {
        split: load_image_folder(path, classes=classes, **load)
        for split, path in (("valid", valid_images), ("test", test_images))
        if path is not None
    }
    parts: dict[Split, ImageFolder] = (
        split_by_path(folder, train_percent=train_percent, valid_percent=valid_percent)
        if train_percent < 100
        else {"train": folder}
    )
    parts.update(own)
    for split in ("train", "valid", "test"):
        if len(parts[split].images) == 0:
            share = (
                train_percent
                if split == "train"
                else valid_percent
                if split == "valid"
                else (100 - train_percent - valid_percent)
            )
            raise ValueError(
                f"{images}: no image of its {len(folder.images)} fell into the {split} split "
                f"({share}% of the images, by a hash of each file's path); add images or "
                f"give the {split} split a folder of its own (--{split}-images DIR)"
            )
    record = {
        "images": str(Path(images).resolve()),
        "valid_images": None if valid_images is None else str(Path(valid_images).resolve()),
        "test_images": None if test_images is None else str(Path(test_images).resolve()),
        "split": {"train_percent": train_percent, "valid_percent": valid_percent},
        "skip_bad_files": skip_bad_files,
    }
    return FolderSplits(parts["train"], parts["valid"], parts["test"], record)


def load_recorded_test(record: dict[str, Any], *, image_size: int, channels: int) -> ImageFolder:
    """The test images of a run trained on a folder, from its ``meta.json`` ``data``
    record (:attr:`FolderSplits.record`): its own test folder, or the test share of its
    training folder."""
    load = dict(
        image_size=image_size,
        channels=channels,
        skip_bad_files=bool(record.get("skip_bad_files", False)),
    )
    if record.get("test_images"):
        return load_image_folder(record["test_images"], **load)
    split = record["split"]
    folder = load_image_folder(record["images"], **load)
    return split_by_path(
        folder, train_percent=split["train_percent"], valid_percent=split["valid_percent"]
    )["test"]
