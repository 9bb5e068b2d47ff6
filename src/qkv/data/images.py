"""Image sets for ViT: Fashion-MNIST from its IDX files, scikit-learn's 8×8 digits,
normalisation and light augmentation.

- :func:`read_idx`: the IDX format of (Fashion-)MNIST, parsed with numpy.
- :func:`load_fashion_mnist`: 60,000 + 10,000 grey 28×28 clothes, 10 classes, from
  Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``) or any
  directory holding the four files of zalandoresearch/fashion-mnist.
- :func:`load_digits`: scikit-learn's bundled 1,797 8×8 digits, split deterministically.
- :func:`normalization_stats`, :func:`normalize`: per-channel mean and std of the
  training images, applied to every split.
- :class:`RandomCropFlip`: random crop after zero padding and a horizontal flip, on a
  whole batch at once.
- :func:`image_batches`: one epoch of (augmented, normalised) batches whose order and
  augmentation depend only on ``(seed, epoch)``, so a resumed run sees the same data.

Images are kept as they are stored, ``uint8`` ``(n, c, H, W)``, until
:func:`normalize` turns them into floats; augment before normalising, so the zero
padding is black background.

Notation: n images, b batch, c channels, H×W image size.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageSet",
    "RandomCropFlip",
    "image_batches",
    "load_digits",
    "load_fashion_mnist",
    "normalization_stats",
    "normalize",
    "read_idx",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS_CLASSES = tuple(str(digit) for digit in range(10))

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files "
    f"in {FASHION_MNIST_DIR}), or download the four .gz files from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass directory=..."
)

# IDX header: two zero bytes, a type code, the number of dimensions; then one
# big-endian uint32 per dimension; then the data, big-endian, C order.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare
class ImageSet:
    """One split of an image set.

    ``images``: ``uint8`` ``(n, c, H, W)`` with pixel values up to ``max_value``
    (255 for Fashion-MNIST, 16 for the digits); ``labels``: ``int64`` ``(n,)`` in
    ``[0, len(classes))``; ``classes``: the class names.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    max_value: int = 255

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"images (n, c, H, W) and labels (n,) must agree, got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped when the name ends in ``.gz``) into a numpy array
    of its native shape and type.

    Raises ``ValueError`` on a bad magic number or a file whose length does not
    match its header (truncated or with trailing bytes).
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read, corrupt gzip data? ({error})") from error
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes)")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: magic bytes {raw[:4].hex()}, expected 0000 followed "
            f"by a type code in {[hex(code) for code in _IDX_TYPES]} and the number of dims"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated header: {ndim} dims need {header_len} bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: header says shape {shape} of {dtype.name} ({expected} bytes in all), "
            f"file has {len(raw)} bytes: {'truncated' if len(raw) < expected else 'trailing data'}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}.gz not found in {directory}; {_HOW_TO_GET}")


def load_fashion_mnist(split: str = "train", directory: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST ``"train"`` (60,000 images) or ``"test"`` (10,000).

    ``directory`` holds the IDX files, gzipped or not; default
    :data:`FASHION_MNIST_DIR` (Debian's ``dataset-fashion-mnist``).

    Shape: images ``uint8`` ``(n, 1, 28, 28)``, labels ``int64`` ``(n,)``.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be one of {sorted(_FASHION_FILES)}, got {split!r}")
    directory = FASHION_MNIST_DIR if directory is None else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST directory {directory} does not exist; {_HOW_TO_GET}"
        )
    image_stem, label_stem = _FASHION_FILES[split]
    images = read_idx(_find(directory, image_stem))
    labels = read_idx(_find(directory, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} in {directory}: expected images (n, H, W) and labels "
            f"(n,), got {images.shape} and {labels.shape}"
        )
    if images.dtype != np.uint8 or (labels.size and labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(
            f"Fashion-MNIST {split} in {directory}: expected uint8 images and labels in "
            f"[0, 10), got {images.dtype} and labels up to {labels.max()}"
        )
    logger.info("Fashion-MNIST %s: %d images from %s", split, len(labels), directory)
    return ImageSet(
        torch.from_numpy(images)[:, None],  # (n, 1, H, W)
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES,
    )


def load_digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> ImageSet:
    """scikit-learn's 8×8 digits (1,797 images, pixel values 0–16), split into
    ``"train"`` and ``"test"`` the same way on every machine (stratified, seeded).

    Shape: images ``uint8`` ``(n, 1, 8, 8)``, labels ``int64`` ``(n,)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the digits set ships with scikit-learn: pip install scikit-learn"
        ) from error
    bunch = sklearn_load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)),
        test_size=test_fraction,
        random_state=seed,
        stratify=bunch.target,
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    images = bunch.images[idx].astype(np.uint8)  # (n, 8, 8), values 0..16
    return ImageSet(
        torch.from_numpy(images)[:, None],  # (n, 1, 8, 8)
        torch.from_numpy(bunch.target[idx].astype(np.int64)),
        DIGITS_CLASSES,
        max_value=16,
    )


def normalization_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation over a set of images (compute them on
    the training split only, and use them for every split).

    Shape: ``(n, c, H, W)`` -> mean ``(c,)``, std ``(c,)``, ``float32``.
    """
    pixels = images.double().transpose(0, 1).reshape(images.shape[1], -1)  # (c, n·H·W)
    return pixels.mean(dim=1).float(), pixels.std(dim=1).float()


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` per channel, as ``float32``.

    Shape: ``(..., c, H, W)`` -> same.
    """
    return (images.float() - mean[:, None, None]) / std[:, None, None]


class RandomCropFlip(nn.Module):
    """Light augmentation for small images: pad every side by ``padding`` zero
    pixels, cut a random ``H × W`` window, and flip left–right with probability
    ``flip_p`` (right for clothes, wrong for digits: pass ``flip_p=0``). Each image
    of the batch draws its own crop and flip. Works on ``uint8`` and float tensors;
    does nothing in ``eval()`` mode.

    Shape: ``(b, c, H, W)`` or ``(c, H, W)`` -> same.
    """

    def __init__(
        self, padding: int = 2, flip_p: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.padding = padding
        self.flip_p = flip_p
        self.generator = generator

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``generator``, when given, replaces the one from the constructor."""
        if not self.training:
            return images
        if images.dim() == 3:
            return self.forward(images[None], generator)[0]
        if images.dim() != 4:
            raise ValueError(f"images must be (b, c, H, W) or (c, H, W), got {tuple(images.shape)}")
        b, _, height, width = images.shape
        pad, gen = self.padding, generator if generator is not None else self.generator
        if pad > 0:
            padded = nn.functional.pad(images, (pad, pad, pad, pad))  # (b, c, H+2p, W+2p)
            top = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)  # (b, 1, 1)
            left = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)
            rows = top + torch.arange(height)[None, :, None]  # (b, H, 1)
            cols = left + torch.arange(width)[None, None, :]  # (b, 1, W)
            batch = torch.arange(b)[:, None, None]  # (b, 1, 1)
            # Advanced indices on dims 0, 2, 3 around a slice put their broadcast
            # shape (b, H, W) first and the channels last.
            images = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (b, c, H, W)
        if self.flip_p > 0:
            flip = torch.rand(b, generator=gen) < self.flip_p  # (b,)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images.contiguous()


def image_batches(
    images: ImageSet,
    batch_size: int,
    *,
    mean: Tensor,
    std: Tensor,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``(pixels, labels)`` batches: shuffled, augmented (raw pixels,
    before normalising, so padding is black), then normalised with ``mean``/``std``.

    Order and augmentation come from one generator seeded with ``(seed, epoch)``
    only: the same epoch gives the same batches on every run, which is what the
    training engine's resume needs. The last batch may be smaller.

    Shape: pixels ``float32`` ``(batch, c, H, W)``, labels ``int64`` ``(batch,)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for batch in order.split(batch_size):
        pixels = images.images[batch]  # (batch, c, H, W), uint8
        if augment is not None:
            pixels = augment(pixels, generator)
        yield normalize(pixels, mean, std), images.labels[batch]
