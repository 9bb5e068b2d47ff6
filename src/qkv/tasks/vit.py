"""Image classification with qkv's ViT: train on Fashion-MNIST (or the 8×8 digits), evaluate,
classify.

The pieces: the image sets, normalisation and augmentation of :mod:`qkv.data.images`,
the ViT of :mod:`qkv.models.vit`, and the shared training engine (:mod:`qkv.train`):
AdamW without weight decay on norms, biases, class token and position embeddings,
linear warm-up then cosine decay, label smoothing, checkpoints and resume.

A validation split is held out of the training images (the same one on every run)
and scored during training; the test split is scored once, at the end. A run
directory holds ``checkpoints/step-*/`` (weights, and in ``meta.json`` the model
configuration, the normalisation in pixel units, the largest pixel value and the
class names: all that ``qkv attention`` and :func:`load_classifier` need),
``metrics.csv``, ``loss_curves.png`` and ``report.json`` (test accuracy, accuracy
against training time).

Notation: n images, b batch, c channels, H×W image size, K classes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.images import (
    ImageSet,
    RandomCropFlip,
    image_batches,
    load_digits,
    load_fashion_mnist,
    normalization_stats,
    normalize,
)
from qkv.models.vit import ViT, ViTConfig
from qkv.train import TrainConfig, Trainer, load_weights
from qkv.train.checkpoint import resolve_checkpoint
from qkv.train.optim import parameter_groups

__all__ = [
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

logger = logging.getLogger(__name__)
FAMILY = "vit-classifier"
DATASETS = ("fashion-mnist", "digits")
# Parameters added to the input rather than multiplied with it: no weight decay.
NO_DECAY = ("cls_token", "position_embeddings")


@dataclass(frozen=True)
class ViTPreset:
    """A model preset of :class:`~qkv.models.vit.ViTConfig` and its training recipe."""

    name: str
    model: str  # a ViTConfig preset: "fashion_tiny", "fashion_small", "digits"
    dataset: str  # "fashion-mnist" or "digits"
    max_steps: int
    batch_size: int
    lr: float  # peak, after the linear warm-up; cosine decay to 0 at max_steps
    warmup_steps: int
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    flip_p: float = 0.0  # left-right flips (clothes, not digits)
    test_flip: bool = False  # average the predictions of each image and its mirror image
    crop_padding: int = 0  # random crops after zero padding; 0 = none
    precision: str = "fp32"  # "bf16": autocast, pays off from width 192 or 49 tokens on
    valid_size: int = 5000  # held out of the training images
    eval_every: int = 500
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if not hasattr(ViTConfig, self.model):
            raise ValueError(f"no ViTConfig preset {self.model!r}")
        if self.batch_size < 1 or self.valid_size < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and valid_size ({self.valid_size}) must be >= 1"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def augment(self) -> bool:
        return self.flip_p > 0 or self.crop_padding > 0

    def model_config(self) -> ViTConfig:
        return getattr(ViTConfig, self.model)()


PRESETS: dict[str, ViTPreset] = {
    # Seconds: the test suite. 1,437 training digits, 144 held out, 8 epochs of 21 batches.
    "digits": ViTPreset(
        "digits", model="digits", dataset="digits", max_steps=170, batch_size=64, lr=2e-3,
        warmup_steps=20, valid_size=144, eval_every=85, checkpoint_every=85,
    ),
    # The 30-minute preset: 7 px patches (16 tokens), width 128, 6 layers; fp32, which is
    # faster than bf16 autocast at this width on the CPU (186 against 231 ms a step).
    # Trained and scored on mirror images too (+0.4 points of test accuracy). Measured
    # (benchmarks/RESULTS.md): 9,000 steps of 128 (20 epochs) on one core, 89.94% test
    # accuracy in 28.4 minutes; under torchrun on two cores (--batch-size 64 a process,
    # --steps 14000: 31 epochs), 90.39% in 25.4 minutes.
    "fashion": ViTPreset(
        "fashion", model="fashion_tiny", dataset="fashion-mnist", max_steps=9000,
        batch_size=128, lr=2e-3, warmup_steps=500, flip_p=0.5, test_flip=True,
        valid_size=3000,
    ),
    # 4 px patches (49 tokens): more accurate per epoch at the end, 2.9x the cost of a step
    # (bf16 autocast: 544 ms against 821 ms in fp32); about an hour on one core.
    "fashion-small": ViTPreset(
        "fashion-small", model="fashion_small", dataset="fashion-mnist", max_steps=6000,
        batch_size=128, lr=2e-3, warmup_steps=500, flip_p=0.5, valid_size=3000,
        precision="bf16",
    ),
}  # fmt: skip


# --- data ----------------------------------------------------------------------------------------


def load_images(dataset: str, split: str, *, data_dir: str | Path | None = None) -> ImageSet:
    """``split`` ("train" or "test") of ``dataset`` ("fashion-mnist" or "digits")."""
    if dataset == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if dataset == "digits":
        return load_digits(split)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def _subset(images: ImageSet, index: Tensor) -> ImageSet:
    return replace(images, images=images.images[index], labels=images.labels[index])


def split_valid(images: ImageSet, valid_size: int) -> tuple[ImageSet, ImageSet]:
    """(train, valid): ``valid_size`` images held out at random, the same ones on every
    run and for every training seed (a fixed generator)."""
    if not 0 < valid_size < len(images):
        raise ValueError(f"valid_size must be in [1, {len(images)}), got {valid_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(12345))
    train, valid = order[valid_size:].sort().values, order[:valid_size].sort().values
    return _subset(images, train), _subset(images, valid)


def predict_probabilities(model: nn.Module, pixels: Tensor, *, flip: bool = False) -> Tensor:
    """Class probabilities of normalised images; with ``flip``, the mean of those of the
    image and of its mirror image (test-time augmentation for a model trained on flips).

    Shape: ``(b, c, H, W)`` -> ``(b, K)``.
    """
    probs = model(pixels).logits.float().softmax(dim=-1)  # (b, K)
    if flip:
        probs = (probs + model(pixels.flip(-1)).logits.float().softmax(dim=-1)) / 2
    return probs


@torch.inference_mode()
def evaluate_accuracy(
    model: nn.Module,
    images: ImageSet,
    mean: Tensor,
    std: Tensor,
    *,
    flip: bool = False,
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``images`` (raw pixels); ``flip``
    as in :func:`predict_probabilities`."""
    device = next(model.parameters()).device
    model.eval()
    correct, loss = 0, 0.0
    for pixels, labels in image_batches(images, batch_size, mean=mean, std=std, shuffle=False):
        probs = predict_probabilities(model, pixels.to(device), flip=flip)  # (b, K)
        labels = labels.to(device)
        loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
        correct += int((probs.argmax(dim=-1) == labels).sum())
    return {"accuracy": correct / len(images), "loss": loss / len(images)}


# --- training ------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "run_dir": str(self.run_dir)}


def _classification_loss(label_smoothing: float) -> Callable[[nn.Module, Any], tuple[Tensor, int]]:
    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        pixels, labels = batch
        # float32 logits: the softmax of bf16 logits loses the small probabilities.
        logits = model(pixels).logits.float()  # (b, K)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
        return loss, labels.numel()

    return loss_fn


def train_vit(
    run_dir: str | Path,
    preset: str | ViTPreset = "fashion",
    *,
    resume: bool = False,
    max_steps: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> TrainReport | None:
    """Train a ViT classifier into ``run_dir`` and score it on the test split.

    ``limit`` keeps only the first ``limit`` training and test images (smoke tests;
    the validation split is then at most a fifth of them). ``resume`` continues from
    the run's last checkpoint. ``max_steps`` and ``batch_size`` override the preset's.

    Under ``torchrun --nproc_per_node N`` each process takes its own batch of
    ``batch_size`` images a step (N × ``batch_size`` in all); the main process scores
    and writes ``report.json`` and returns the report, the others return ``None``.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        preset = PRESETS[preset]
    if max_steps is not None:
        preset = replace(preset, max_steps=max_steps)
    if batch_size is not None:
        preset = replace(preset, batch_size=batch_size)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set = load_images(preset.dataset, "train", data_dir=data_dir)
    test_set = load_images(preset.dataset, "test", data_dir=data_dir)
    if limit is not None:
        train_set = _subset(train_set, torch.arange(min(limit, len(train_set))))
        test_set = _subset(test_set, torch.arange(min(limit, len(test_set))))
    train_set, valid_set = split_valid(train_set, min(preset.valid_size, len(train_set) // 5))
    mean, std = normalization_stats(train_set.images)  # (c,), (c,) in pixel units
    logger.info(
        "%s: %d train, %d valid, %d test images; mean %s, std %s",
        preset.dataset, len(train_set), len(valid_set), len(test_set),
        mean.tolist(), std.tolist(),
    )  # fmt: skip

    torch.manual_seed(seed)
    config = preset.model_config()
    model = ViT(config)
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

    trainer = Trainer(
        model,
        TrainConfig(
            max_steps=preset.max_steps,
            lr=preset.lr,
            betas=(0.9, 0.999),  # AdamW's defaults, as DeiT and timm train ViTs
            eps=1e-8,
            weight_decay=preset.weight_decay,
            schedule="cosine",
            warmup_steps=preset.warmup_steps,
            precision=preset.precision,  # type: ignore[arg-type]
            eval_every=preset.eval_every,
            checkpoint_every=preset.checkpoint_every,
            seed=seed,
        ),
        run_dir,
        batches=batches,
        loss_fn=_classification_loss(preset.label_smoothing),
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
            "preset": asdict(preset),
        },
        device=device,
        parameter_groups=parameter_groups(model, preset.weight_decay, no_decay=NO_DECAY),
        progress=progress,
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
    report = TrainReport(run_dir, result.step, seconds, test, valid, curve)
    (run_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


# --- using a trained model -----------------------------------------------------------------------


@dataclass
class Prediction:
    """The ``top_k`` classes of one image, most probable first."""

    labels: list[str]
    probabilities: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclass
class Classifier:
    """A trained ViT with what it needs to read new images: the normalisation (pixel
    units), the largest pixel value of its training images, the class names."""

    model: ViT
    mean: Tensor  # (c,)
    std: Tensor  # (c,)
    max_value: float
    classes: list[str]
    dataset: str | None = None
    test_flip: bool = False  # average over each image and its mirror image

    @property
    def config(self) -> ViTConfig:
        return self.model.config

    @torch.inference_mode()
    def probabilities(self, images: Tensor, *, batch_size: int = 500) -> Tensor:
        """Class probabilities of raw images (pixel values in ``[0, max_value]``), in
        batches of ``batch_size``.

        Shape: ``(b, c, H, W)`` or ``(c, H, W)`` -> ``(b, K)`` or ``(K,)``.
        """
        if images.dim() == 3:
            return self.probabilities(images[None])[0]
        self.model.patch_embedding.check_images(images.float())
        device = next(self.model.parameters()).device
        model = self.model.eval()
        probs = [
            predict_probabilities(
                model, normalize(chunk, self.mean, self.std).to(device), flip=self.test_flip
            )
            for chunk in images.split(batch_size)
        ]  # each (chunk, K)
        return torch.cat(probs).cpu()  # (b, K)

    def classify(self, images: Tensor, top_k: int = 5) -> list[Prediction]:
        """The ``top_k`` classes of each image, with their probabilities.

        Shape: images ``(b, c, H, W)`` or ``(c, H, W)``, raw pixels.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        probs = self.probabilities(images)
        probs = probs[None] if probs.dim() == 1 else probs  # (b, K)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (b, k), (b, k)
        return [
            Prediction([self.classes[i] for i in row.tolist()], p.tolist())
            for p, row in zip(values, indices, strict=True)
        ]

    def accuracy(self, images: ImageSet) -> float:
        return evaluate_accuracy(self.model, images, self.mean, self.std, flip=self.test_flip)[
            "accuracy"
        ]


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier from a run directory (its latest checkpoint) or a checkpoint."""
    checkpoint = resolve_checkpoint(path)
    meta = checkpoint.meta
    if "vit" not in str(meta.get("family", "")):
        raise ValueError(f"{checkpoint.path} holds a {meta.get('family')!r} model, not a ViT")
    missing = [k for k in ("model_config", "normalization", "classes") if k not in meta]
    if missing:
        raise ValueError(f"{checkpoint.path}/meta.json lacks {missing}")
    model = ViT(ViTConfig.from_dict(meta["model_config"]))
    load_weights(model, checkpoint.path)
    norm = meta["normalization"]
    return Classifier(
        model.to(device).eval(),
        torch.tensor(norm["mean"], dtype=torch.float32),
        torch.tensor(norm["std"], dtype=torch.float32),
        float(meta.get("max_value", 255)),
        list(meta["classes"]),
        meta.get("dataset"),
        bool(meta.get("test_flip", False)),
    )
