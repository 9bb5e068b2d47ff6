"""Image classification with qkv's ViT: train on Fashion-MNIST (or the 8×8 digits), evaluate,
classify.

The pieces: the image sets, normalisation and augmentation of :mod:`qkv.data.images`,
the ViT of :mod:`qkv.models.vit`, and the shared training engine (:mod:`qkv.train`):
AdamW without weight decay on norms, biases, class token and position embeddings,
linear warm-up then cosine decay, label smoothing, checkpoints and resume.

A validation split is held out of the training images (the same one on every run)
and scored during training; the test split is scored once, at the end.

Own images (``images=``): a folder in the ImageFolder layout (one sub-folder per class,
:mod:`qkv.data.image_folder`), decoded once into memory at the preset's image size and
channels (or ``image_size``), split by a hash of each file's path unless the valid and
test images have folders of their own (:func:`~qkv.tasks.vit.data.load_folder_splits`).
``from_checkpoint``: start from a qkv ViT run or checkpoint, or a Hugging Face ViT
folder, instead of a new model: its position embeddings resampled to the image size, a
new head unless the folder has the source's classes, its pixel normalisation kept; the
run records the source (``meta.json``'s ``from``). A run
directory holds ``checkpoints/step-*/`` (weights, and in ``meta.json`` the model
configuration, the normalisation in pixel units, the largest pixel value and the
class names: all that ``qkv attention`` and :func:`load_classifier` need),
``metrics.csv``, ``loss_curves.png`` and ``report.json`` (test accuracy, accuracy
against training time).

Notation: n images, b batch, c channels, H×W image size, K classes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qkv.data.images import ImageSet, RandomCropFlip, image_batches, normalization_stats
from qkv.families import identify
from qkv.fileio import write_json_atomic
from qkv.losses import summed
from qkv.models.vit import ViT
from qkv.tasks.vit.classifier import FAMILY, Classifier, evaluate_accuracy, load_classifier
from qkv.tasks.vit.data import load_folder_splits, load_images, split_valid, subset
from qkv.tasks.vit.presets import IMAGE_FOLDER, ViTPreset, get_preset
from qkv.train import Trainer
from qkv.train.optim import parameter_groups
from qkv.train.rundir import check_run_dir, open_run_dir

__all__ = ["TrainReport", "train_vit"]

logger = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a training run gives: the test accuracy at the end, and the validation
    accuracy against training time (``curve`` rows: step, seconds, accuracy, loss)."""

    run_dir: Path
    steps: int
    seconds: float  # training, validation included, test excluded (this process only)
    test_accuracy: float
    valid_accuracy: float
    curve: list[dict[str, float]] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # unreadable, left out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "run_dir": str(self.run_dir)}


def train_vit(
    run_dir: str | Path,
    preset: str | ViTPreset = "fashion",
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    images: str | Path | None = None,
    valid_images: str | Path | None = None,
    test_images: str | Path | None = None,
    skip_bad_files: bool = False,
    from_checkpoint: str | Path | None = None,
    image_size: int | None = None,
    compile: bool = False,
    checkpoint_activations: bool = False,
) -> TrainReport | None:
    """Train a ViT classifier into ``run_dir`` and score it on the test split.

    ``limit`` keeps only the first ``limit`` training and test images (smoke tests;
    the validation split is then at most a fifth of them). ``resume`` continues from
    the run's last checkpoint; ``overwrite`` replaces a run already in ``run_dir`` (without
    either, such a folder is refused: :mod:`qkv.train.rundir`). ``max_steps`` and
    ``batch_size`` override the preset's. The options and the images are checked before
    ``run_dir`` is touched.

    ``images``: train on a folder of the user's images instead of the preset's data set
    (the module docstring); ``valid_images`` and ``test_images`` give those splits
    folders of their own; ``skip_bad_files`` leaves unreadable images out (listed in
    the report) instead of stopping at the first. ``from_checkpoint`` fine-tunes a
    trained ViT on them; ``image_size`` (a multiple of the patch size) replaces the
    preset's or the source's.

    ``compile`` trains through ``torch.compile``; ``checkpoint_activations`` recomputes
    each layer's activations in the backward pass (:class:`qkv.train.Trainer`).

    Under ``torchrun --nproc_per_node N`` each process takes its own batch of
    ``batch_size`` images a step (N × ``batch_size`` in all); the main process scores
    and writes ``report.json`` and returns the report, the others return ``None``.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    preset = preset.override({"train.seed": seed})
    if max_steps is not None:
        preset = preset.override({"train.max_steps": max_steps})
    if batch_size is not None:
        preset = preset.override({"batch_size": batch_size})
    speed = {"compile": compile, "checkpoint_activations": checkpoint_activations}
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # before the images are read
    if images is not None:
        if data_dir is not None:
            raise ValueError("--data names a Fashion-MNIST folder: leave it out with --images")
        return _train_on_folder(
            run_dir, preset, images=images, valid_images=valid_images,
            test_images=test_images, skip_bad_files=skip_bad_files,
            from_checkpoint=from_checkpoint, image_size=image_size, limit=limit,
            resume=resume, overwrite=overwrite, device=device, seed=seed, progress=progress,
            **speed,
        )  # fmt: skip
    for given, option in (
        (valid_images, "--valid-images"),
        (test_images, "--test-images"),
        (from_checkpoint, "--from"),
        (image_size, "--image-size"),
    ):
        if given is not None:
            raise ValueError(f"{option} needs --images DIR (a folder of your own images)")
    train_set = load_images(preset.dataset, "train", data_dir=data_dir)
    test_set = load_images(preset.dataset, "test", data_dir=data_dir)
    if limit is not None:
        train_set = subset(train_set, torch.arange(min(limit, len(train_set))))
        test_set = subset(test_set, torch.arange(min(limit, len(test_set))))
    train_set, valid_set = split_valid(train_set, min(preset.valid_size, len(train_set) // 5))
    mean, std = normalization_stats(train_set.images)  # (c,), (c,) in pixel units
    logger.info(
        "%s: %d train, %d valid, %d test images; mean %s, std %s",
        preset.dataset, len(train_set), len(valid_set), len(test_set),
        mean.tolist(), std.tolist(),
    )  # fmt: skip

    identity = {
        "task": "vit",
        **preset.to_dict(),
        "data": {"dir": str(data_dir) if data_dir is not None else None, "limit": limit},
    }
    with open_run_dir(run_dir, resume=resume, overwrite=overwrite, identity=identity):
        return _train(run_dir, preset, train_set, valid_set, test_set, mean, std,
                      resume=resume, device=device, seed=seed, progress=progress,
                      **speed)  # fmt: skip


def _adapt_source(
    classifier: Classifier, source: str, image_size: int, classes: tuple[str, ...]
) -> tuple[ViT, Tensor, Tensor, dict[str, Any]]:
    """The model to fine-tune from ``classifier`` (read from ``source``, a qkv run or
    checkpoint, or a Hugging Face folder) for ``image_size`` and ``classes``; its
    normalisation in 0–255 pixel units; what the run records of it."""
    model = classifier.model.train()
    old = model.config
    model.interpolate_position_embeddings(image_size)
    if list(classifier.classes) == list(classes):
        head = "kept"
    elif sorted(classifier.classes) == sorted(classes):
        # The same classes in another order: the head's rows follow them.
        order = torch.tensor([classifier.classes.index(name) for name in classes])
        model.head.weight.data = model.head.weight.data[order].clone()
        model.head.bias.data = model.head.bias.data[order].clone()
        head = "reordered"
    else:
        model.reset_head(len(classes))
        head = "new"
    # The model saw pixels in [0, max_value] normalised so; folder pixels are 0-255.
    scale = 255.0 / classifier.max_value
    found = identify(source, expect="vit")
    record = {
        "path": str(Path(source).resolve()),
        "hugging_face": found.hugging_face,
        "timm": found.timm,
        "image_size": old.image_size,
        "classes": list(classifier.classes),
        "head": head,
    }
    return model, classifier.mean * scale, classifier.std * scale, record


def _train_on_folder(
    run_dir: Path,
    preset: ViTPreset,
    *,
    images: str | Path,
    valid_images: str | Path | None,
    test_images: str | Path | None,
    skip_bad_files: bool,
    from_checkpoint: str | Path | None,
    image_size: int | None,
    limit: int | None,
    resume: bool,
    overwrite: bool,
    device: str | None,
    seed: int,
    progress: bool | None,
    **speed: bool,
) -> TrainReport | None:
    """:func:`train_vit` on the user's folders (its docstring)."""
    # The source is read first: a bad checkpoint is refused before any image is decoded.
    source = None if from_checkpoint is None else load_classifier(from_checkpoint)
    base = preset.model if source is None else source.config
    size = base.image_size if image_size is None else image_size
    if size % base.patch_size != 0:
        raise ValueError(
            f"--image-size {size}: must be a multiple of the patch size {base.patch_size}"
        )
    data = load_folder_splits(
        images, image_size=size, channels=base.in_channels, valid_images=valid_images,
        test_images=test_images, skip_bad_files=skip_bad_files,
    )  # fmt: skip
    train_set, valid_set, test_set = data.train.images, data.valid.images, data.test.images
    classes = train_set.classes
    if limit is not None:
        train_set = subset(train_set, torch.arange(min(limit, len(train_set))))
        test_set = subset(test_set, torch.arange(min(limit, len(test_set))))
    model, origin = None, None
    if source is not None:
        model, mean, std, origin = _adapt_source(source, str(from_checkpoint), size, classes)
        config = model.config
    else:
        config = dataclasses.replace(preset.model, image_size=size, num_classes=len(classes))
        mean, std = normalization_stats(train_set.images)  # (c,), (c,) in pixel units
    preset = dataclasses.replace(preset, model=config, dataset=IMAGE_FOLDER)
    logger.info(
        "%s: %d classes, %d train, %d valid, %d test images at %d px; mean %s, std %s",
        images, len(classes), len(train_set), len(valid_set), len(test_set), size,
        mean.tolist(), std.tolist(),
    )  # fmt: skip
    record = {**data.record, "limit": limit}
    identity = {"task": "vit", **preset.to_dict(), "data": record, "from": origin}
    with open_run_dir(run_dir, resume=resume, overwrite=overwrite, identity=identity):
        return _train(run_dir, preset, train_set, valid_set, test_set, mean, std,
                      resume=resume, device=device, seed=seed, progress=progress,
                      model=model, extra_meta={"data": record, "from": origin},
                      skipped=data.skipped, **speed)  # fmt: skip


def _train(
    run_dir: Path,
    preset: ViTPreset,
    train_set: ImageSet,
    valid_set: ImageSet,
    test_set: ImageSet,
    mean: Tensor,
    std: Tensor,
    *,
    resume: bool,
    device: str | None,
    seed: int,
    progress: bool | None,
    model: ViT | None = None,
    extra_meta: dict[str, Any] | None = None,
    skipped: list[str] | None = None,
    **speed: bool,
) -> TrainReport | None:
    """Build the model (unless one to fine-tune is given), train, score the test split
    (the run directory is open)."""
    torch.manual_seed(seed)
    config = preset.model
    model = ViT(config) if model is None else model
    augment = (
        RandomCropFlip(padding=preset.crop_padding, flip_p=preset.flip_p)
        if preset.augment
        else None
    )

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        return image_batches(
            train_set, preset.batch_size, mean=mean, std=std, epoch=epoch, seed=seed,
            augment=augment,
        )  # fmt: skip

    curve: list[dict[str, float]] = []
    start = time.perf_counter()

    def evaluate(model: nn.Module) -> dict[str, float]:
        values = evaluate_accuracy(model, valid_set, mean, std, flip=preset.test_flip)
        seconds = time.perf_counter() - start
        curve.append({"step": trainer.step, "seconds": seconds, **values})
        return {**values, "seconds": seconds}

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        pixels, labels = batch
        return summed(model(pixels, labels=labels, label_smoothing=preset.label_smoothing))

    trainer = Trainer(
        model,
        preset.train,
        run_dir,
        batches=batches,
        loss_fn=loss_fn,
        evaluate=evaluate,
        meta={
            "family": FAMILY,
            "model_config": config.to_dict(),
            # What qkv attention and load_classifier read to feed the model new images.
            "normalization": {"mean": mean.tolist(), "std": std.tolist()},
            "max_value": train_set.max_value,
            "classes": list(train_set.classes),
            "dataset": preset.dataset,
            "test_flip": preset.test_flip,
            "preset": preset.to_dict(),
            **(extra_meta or {}),
        },
        device=device,
        parameter_groups=parameter_groups(model, preset.train.weight_decay),
        progress=progress,
        **speed,
    )
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    if not trainer.context.is_main:
        return None
    valid = (
        curve[-1]["accuracy"]
        if curve
        else evaluate_accuracy(model, valid_set, mean, std, flip=preset.test_flip)["accuracy"]
    )
    test = evaluate_accuracy(model, test_set, mean, std, flip=preset.test_flip)["accuracy"]
    logger.info("test accuracy %.2f%% after %d steps, %.0f s", 100 * test, result.step, seconds)
    report = TrainReport(run_dir, result.step, seconds, test, valid, curve, list(skipped or []))
    write_json_atomic(run_dir / "report.json", report.to_dict())
    return report
