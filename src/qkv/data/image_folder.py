"""A folder of the user's images in the ImageFolder layout: one sub-folder per class.

::

    pets/
        cat/  001.jpg  002.png  holiday/003.jpeg ...
        dog/  a.png  b.webp ...

- :func:`find_classes`: the class names, the sorted names of the sub-folders (as
  torchvision's ``ImageFolder`` numbers them). Hidden folders (``.ipynb_checkpoints``)
  are not classes.
- :func:`list_images`: every image file under each class folder, sub-folders included,
  by extension (:data:`IMAGE_EXTENSIONS`, torchvision's list, any case); other files are
  ignored.
- :func:`read_image_file`: one image, converted to grey (``"L"``) or colour (``"RGB"``),
  its shorter side resized to the model's input and the centre cut out (torchvision's
  ``Resize(S)`` then ``CenterCrop(S)``).
- :func:`load_image_folder`: every image of a folder decoded once into one ``uint8``
  tensor ``(n, c, S, S)``: ``n·c·S·S`` bytes, 150 kB per 224-pixel colour image, so a
  folder is meant to fit in memory (50,000 such images: 7.5 GB).
- :func:`split_by_path`: train/valid/test by a hash of each file's path relative to the
  folder (:func:`qkv.data.splits.hash_split`): the same split on every machine and run,
  whatever images are added later.

Notation: n images, c channels, S the model's image side.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qkv.data.images import ImageSet
from qkv.data.splits import Split, hash_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "check_same_classes",
    "decode_image",
    "find_classes",
    "list_images",
    "load_image_folder",
    "open_image",
    "read_image_file",
    "split_by_path",
]

logger = logging.getLogger(__name__)

#: The extensions torchvision's ``ImageFolder`` takes (compared in lower case).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

_LAYOUT = "expected the ImageFolder layout: one sub-folder of images per class"


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """A decoded folder: ``images`` (pixel values 0–255), ``files`` the path of each
    image relative to ``root`` (POSIX form, ``"cat/001.jpg"``), in the order of
    ``images``; ``skipped`` the files that could not be read (``--skip-bad-files``)."""

    root: Path
    images: ImageSet
    files: list[str]
    skipped: list[str] = field(default_factory=list)


def _check_folder(directory: Path) -> None:
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such folder")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: not a folder ({_LAYOUT})")


def find_classes(directory: str | os.PathLike[str]) -> list[str]:
    """The sorted names of the class sub-folders of ``directory``.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for one without
    sub-folders, naming it.
    """
    directory = Path(directory)
    _check_folder(directory)
    classes = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise ValueError(f"{directory}: no class sub-folders ({_LAYOUT})")
    return classes


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(directory: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(relative path, class index), ...])``, files sorted within each class.

    Raises ``ValueError`` naming every class folder without an image file (with all of
    them empty, the folder has no images).
    """
    directory = Path(directory)
    classes = find_classes(directory)
    samples: list[tuple[str, int]] = []
    empty = []
    for index, name in enumerate(classes):
        found = []
        for root, folders, files in os.walk(directory / name, followlinks=True):
            folders[:] = [f for f in folders if not f.startswith(".")]
            found += [
                Path(root, f).relative_to(directory).as_posix() for f in files if _is_image(f)
            ]
        if not found:
            empty.append(name)
        samples += [(path, index) for path in sorted(found)]
    if len(empty) == len(classes):
        raise ValueError(
            f"{directory}: no images in any class folder (image files end in "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    if empty:
        raise ValueError(
            f"{directory}: no images in class folder(s) {', '.join(empty)} (image files end "
            f"in {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)"
        )
    return classes, samples


def open_image(path: str | os.PathLike[str]) -> Any:
    """``PIL.Image.open``, refusing an image over Pillow's size limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) with a message naming the file: Pillow itself only
    warns up to twice the limit and then decodes it all, which can fill the memory, and
    above that its error does not say which file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: image too large to open safely ({error})") from None


def decode_image(path: str | os.PathLike[str]) -> Any:
    """An image file decoded in full, in its own mode (a ``PIL.Image.Image``).

    Raises ``ValueError`` naming the file when it is not a readable image (not an image,
    truncated, empty, too large) and ``FileNotFoundError`` when it does not exist.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with open_image(path) as opened:
            opened.load()  # decode now, so that a truncated file fails here
            return opened.copy()
    except ValueError:
        raise
    # Pillow: UnidentifiedImageError and "image file is truncated" are OSErrors; a few
    # corrupt headers raise SyntaxError or struct errors.
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


def to_mode(picture: Any, channels: int, *, over_white: bool = True) -> Any:
    """A ``PIL.Image.Image`` as grey ("L", ``channels=1``) or RGB; transparency laid over
    white first, as ``transformers``' ``convert_to_rgb`` does (a plain conversion would
    show whatever colour the transparent pixels happen to hold); ``over_white=False``:
    the plain conversion, as timm's loaders do (``Image.convert("RGB")``)."""
    from PIL import Image

    transparent = "A" in picture.getbands() or picture.info.get("transparency") is not None
    if over_white and transparent:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, rgba)
    return picture.convert("L" if channels == 1 else "RGB")


def shorter_side_to(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """``(width, height)`` resized so that the shorter side is ``edge``, the ratio kept and
    the longer side truncated to whole pixels (as ``transformers``' ``shortest_edge`` and
    torchvision's ``Resize(int)`` do)."""
    width, height = size
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def read_image_file(
    path: str | os.PathLike[str], image_size: int, channels: int, *, crop: bool = True
) -> np.ndarray:
    """One image as the model takes it: grey (``channels=1``) or RGB (``channels=3``,
    :func:`to_mode`), the shorter side resized to ``image_size`` (bilinear, antialiased;
    :func:`shorter_side_to`) and the centre ``image_size × image_size`` cut out, as
    ``transformers``' ``DeiTImageProcessor`` does with ``size={"shortest_edge": S}``;
    ``crop=False`` resizes both sides to ``image_size`` instead (its ``ViTImageProcessor``).

    Raises ``ValueError`` naming the file when it is not a readable image (not an image,
    truncated, empty) and ``FileNotFoundError`` when it does not exist.

    Shape: ``uint8`` ``(c, S, S)``, values 0–255.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"images have 1 (grey) or 3 (RGB) channels, not {channels}")
    picture = to_mode(decode_image(path), channels)
    if crop:
        size = shorter_side_to(picture.size, image_size)
        picture = picture.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        picture = picture.crop((left, top, left + image_size, top + image_size))
    else:
        picture = picture.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, dtype=np.uint8).reshape(image_size, image_size, channels)
    return pixels.transpose(2, 0, 1).copy()  # (c, S, S), contiguous and writable


def load_image_folder(
    directory: str | os.PathLike[str],
    *,
    image_size: int,
    channels: int,
    skip_bad_files: bool = False,
    classes: Sequence[str] | None = None,
    reader: Callable[[Path], np.ndarray] | None = None,
) -> ImageFolder:
    """Decode every image of ``directory`` (see :func:`read_image_file`) into memory.

    ``reader``: how one file becomes the model's ``uint8`` ``(c, S, S)`` pixels, for a
    model that reads its images otherwise (a Hugging Face folder's image processor);
    default: :func:`read_image_file` at ``image_size`` and ``channels``.

    ``classes``: the class names of the training folder; this folder's must be the same
    (``ValueError`` naming the folder and the classes missing or extra). An unreadable
    image raises ``ValueError`` naming it, unless ``skip_bad_files``: it is then left out
    and listed in ``skipped`` (a class left without images is still an error).

    Shape: images ``uint8`` ``(n, c, S, S)``, labels ``int64`` ``(n,)``.
    """
    directory = Path(directory)
    found, samples = list_images(directory)
    if classes is not None:
        check_same_classes(directory, found, classes)
    if reader is None:
        reader = partial(read_image_file, image_size=image_size, channels=channels)
    pixels, labels, files, skipped = [], [], [], []
    for relative, label in samples:
        try:
            pixels.append(reader(directory / relative))
        except ValueError:
            if not skip_bad_files:
                raise
            skipped.append(relative)
            continue
        labels.append(label)
        files.append(relative)
    left = set(labels)
    emptied = [name for k, name in enumerate(found) if k not in left]
    if emptied:
        raise ValueError(
            f"{directory}: no readable images in class folder(s) {', '.join(emptied)} "
            f"({len(skipped)} bad file(s) skipped)"
        )
    if skipped:
        logger.warning("%s: %d unreadable file(s) skipped", directory, len(skipped))
    images = ImageSet(
        torch.from_numpy(np.stack(pixels)),  # (n, c, S, S)
        torch.tensor(labels, dtype=torch.int64),
        tuple(found),
        max_value=255,
    )
    return ImageFolder(directory, images, files, skipped)


def check_same_classes(
    directory: str | os.PathLike[str], found: Sequence[str], expected: Sequence[str]
) -> None:
    """Raise ``ValueError`` naming ``directory`` and the difference when its classes
    ``found`` are not ``expected``."""
    if list(found) == list(expected):
        return
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"extra {', '.join(extra)}")
    raise ValueError(
        f"{directory}: class folders differ from the training images' ({'; '.join(parts)})"
    )


def split_by_path(
    folder: ImageFolder, *, train_percent: int, valid_percent: int
) -> dict[Split, ImageFolder]:
    """The images of ``folder`` in train, valid and test, each by the hash of its
    relative path (:func:`qkv.data.splits.hash_split`); a split may be empty."""
    assigned: dict[Split, list[int]] = {"train": [], "valid": [], "test": []}
    for i, relative in enumerate(folder.files):
        split = hash_split(relative, train_percent=train_percent, valid_percent=valid_percent)
        assigned[split].append(i)
    parts = {}
    for split, indices in assigned.items():
        index = torch.tensor(indices, dtype=torch.int64)
        images = ImageSet(
            folder.images.images[index],
            folder.images.labels[index],
            folder.images.classes,
            folder.images.max_value,
        )
        parts[split] = ImageFolder(
            folder.root, images, [folder.files[i] for i in indices], folder.skipped
        )
    return parts
