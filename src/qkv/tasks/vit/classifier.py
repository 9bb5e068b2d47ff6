"""A trained ViT classifier: load it, classify images, score it.

A run directory of :func:`qkv.tasks.vit.train_vit` keeps, in each checkpoint's
``meta.json``, the model configuration, the normalisation in pixel units, the largest
pixel value and the class names: all that :func:`load_classifier` needs.

Notation: b batch, c channels, H×W image size, K classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.compile import compile_model
from qkv.data.image_folder import read_image_file
from qkv.data.images import ImageSet, image_batches, normalize
from qkv.families import identify
from qkv.models.vit import ViT, ViTConfig
from qkv.train import load_weights

__all__ = [
    "FAMILY",
    "Classifier",
    "Prediction",
    "evaluate_accuracy",
    "load_classifier",
    "predict_probabilities",
    "scores",
]

FAMILY = "vit-classifier"


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
    as in :func:`predict_probabilities`. The pixels go to the model's device and number
    format."""
    weight = next(model.parameters())
    model.eval()
    correct, loss = 0, 0.0
    for pixels, labels in image_batches(images, batch_size, mean=mean, std=std, shuffle=False):
        pixels = pixels.to(device=weight.device, dtype=weight.dtype)
        probs = predict_probabilities(model, pixels, flip=flip)  # (b, K), float32
        labels = labels.to(weight.device)
        loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
        correct += int((probs.argmax(dim=-1) == labels).sum())
    return {"accuracy": correct / len(images), "loss": loss / len(images)}


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
    # The folders of a run trained on the user's images (meta.json's "data").
    data: dict[str, Any] | None = None
    # Image files: shorter side resized, centre cut out (as qkv trains on folders);
    # False: both sides resized.
    crop: bool = True
    # A Hugging Face folder's preprocessor_config.json (qkv.convert.vit.ImageProcessor):
    # how its image files are read, instead of ``crop``.
    processor: Any = None

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
        weight = next(self.model.parameters())  # the model's device and number format
        model = self.model.eval()
        probs = [
            predict_probabilities(
                model,
                normalize(chunk, self.mean, self.std).to(device=weight.device, dtype=weight.dtype),
                flip=self.test_flip,
            )
            for chunk in images.split(batch_size)
        ]  # each (chunk, K), float32
        return torch.cat(probs).cpu()  # (b, K)

    def read_image(self, path: str | os.PathLike[str]) -> Tensor:
        """An image file as this model takes it (grey or RGB, resized and cropped to its
        input: :func:`qkv.data.image_folder.read_image_file`, or for a Hugging Face
        folder as its image processor does: :meth:`qkv.convert.vit.ImageProcessor.read`),
        in its pixel units, not yet normalised.

        Shape: ``(c, H, W)`` float32, values in ``[0, max_value]``.
        """
        pixels = self.read_pixels(path)
        return torch.from_numpy(pixels).float() * (self.max_value / 255.0)  # (c, H, W)

    def image_processor(self) -> Any:
        """How this model reads image files as a Hugging Face image processor
        (:class:`qkv.convert.vit.ImageProcessor`): a Hugging Face folder's own, or for a
        qkv run the shorter side resized bilinearly and the centre cut out (both sides
        resized without ``crop``), normalised by the run's statistics."""
        from qkv.convert.vit import ImageProcessor

        if self.processor is not None:
            return self.processor
        c = self.config
        side = c.image_size
        units = 255.0 / self.max_value  # the run's statistics in 0-255 pixel units
        return ImageProcessor(
            channels=c.in_channels,
            image_size=side,
            resize=("shortest", side) if self.crop else (side, side),
            resample=2,  # PIL's bilinear, as qkv.data.image_folder.read_image_file
            crop=(side, side) if self.crop else None,
            mean=tuple(float(m) * units for m in self.mean),
            std=tuple(float(s) * units for s in self.std),
        )

    def read_pixels(self, path: str | os.PathLike[str]) -> np.ndarray:
        """An image file resized and cropped as this model reads its images (see
        :meth:`read_image`), in 0-255 units.

        Shape: ``uint8`` ``(c, H, W)``.
        """
        if self.processor is not None:
            return self.processor.read(path)
        c = self.config
        return read_image_file(path, c.image_size, c.in_channels, crop=self.crop)

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

    def folder_labels(self, directory: str | os.PathLike[str], images: ImageSet) -> Tensor:
        """The labels of images read from a folder (class indices of the folder's own
        sorted class names), as this model's class indices. Every class of the folder must
        be one of the model's (``ValueError`` naming the folder and the others).

        Shape: ``(n,)`` -> ``(n,)``.
        """
        unknown = [name for name in images.classes if name not in self.classes]
        if unknown:
            raise ValueError(
                f"{directory}: class folder(s) {', '.join(unknown)} not among the model's "
                f"classes ({', '.join(self.classes)})"
            )
        index = torch.tensor([self.classes.index(name) for name in images.classes])
        return index[images.labels]

    def accuracy(self, images: ImageSet) -> float:
        return evaluate_accuracy(self.model, images, self.mean, self.std, flip=self.test_flip)[
            "accuracy"
        ]


def scores(probabilities: Tensor, labels: Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy over all images and per class (``None`` for a class without images).

    Shape: probabilities ``(n, K)``, labels ``(n,)`` in ``[0, K)``; ``n`` at least 1.
    """
    if len(labels) == 0:
        raise ValueError("no images to score")
    correct = probabilities.argmax(dim=-1) == labels  # (n,)
    per_class = {}
    for k, name in enumerate(classes):
        mine = labels == k
        count = int(mine.sum())
        accuracy = float(correct[mine].float().mean()) if count else None
        per_class[name] = {"accuracy": accuracy, "images": count}
    return {
        "accuracy": float(correct.float().mean()),
        "images": len(labels),
        "per_class": per_class,
    }


def load_classifier(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
) -> Classifier:
    """Load a classifier from a qkv run directory (its latest checkpoint), a checkpoint,
    a Hugging Face ``ViTForImageClassification`` folder (its image processor from
    ``preprocessor_config.json``, its class names from ``id2label``) or a timm Hub folder
    (its evaluation transform from ``config.json``'s ``pretrained_cfg``, class names from
    ``label_names``), onto ``device`` in
    ``dtype`` (probabilities still come back as float32); ``compile``: through
    ``torch.compile`` (:func:`qkv.compile.compile_model`)."""
    found = identify(path, expect="vit")
    if found.timm:
        from qkv.convert.vit import from_timm, timm_image_processor

        model = from_timm(found.path)
        c = model.config
        processor = timm_image_processor(
            found.meta,
            channels=c.in_channels,
            image_size=c.image_size,
            source=str(found.path / "config.json"),
        )
        mean, std, max_value = list(processor.mean), list(processor.std), 255.0
        names = found.meta.get("label_names")
        classes = list(names) if names else [str(i) for i in range(c.num_classes)]
        if len(classes) != c.num_classes:
            raise ValueError(
                f"{found.path / 'config.json'}: {len(classes)} label_names for a head of "
                f"{c.num_classes} classes"
            )
        dataset, test_flip, data, crop = None, False, None, False
    elif found.hugging_face:
        from qkv.convert.vit import from_pretrained, label_names, load_image_processor

        model = from_pretrained(found.path)
        processor = load_image_processor(found.path)
        mean, std, max_value = list(processor.mean), list(processor.std), 255.0
        classes = label_names(found.path) or [str(i) for i in range(model.config.num_classes)]
        dataset, test_flip, data, crop = None, False, None, False
    else:
        meta = found.meta
        if "model_config" not in meta:
            raise ValueError(f"{found.path}/meta.json lacks the model_config")
        model = ViT(ViTConfig.from_dict(meta["model_config"]))
        load_weights(model, found.path)
        max_value = float(meta.get("max_value", 255))
        # Without the training set's statistics, pixels are scaled to [0, 1].
        norm = meta.get("normalization", {"mean": [0.0], "std": [max_value]})
        channels = model.config.in_channels
        mean, std = (
            list(norm[k]) * (channels if len(norm[k]) == 1 else 1) for k in ("mean", "std")
        )
        classes = list(meta.get("classes") or [str(i) for i in range(model.config.num_classes)])
        dataset, test_flip = meta.get("dataset"), bool(meta.get("test_flip", False))
        data, crop = meta.get("data"), True
        processor = None
    return Classifier(
        compile_model(model.to(device=device, dtype=dtype).eval(), compile),
        torch.tensor(mean, dtype=torch.float32),
        torch.tensor(std, dtype=torch.float32),
        max_value,
        classes,
        dataset,
        test_flip,
        data,
        crop,
        processor,
    )
