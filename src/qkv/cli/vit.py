"""``qkv vit``: train a Vision Transformer on Fashion-MNIST, evaluate it, classify images.

qkv vit train --preset fashion --run-dir runs/vit-fashion --threads 1
qkv vit train --preset fashion --run-dir runs/vit-fashion --resume
qkv vit eval runs/vit-fashion
qkv vit classify runs/vit-fashion shoe.png bag.png fashion-mnist:0

An image is a file (PNG, JPEG, ...: converted to grey or RGB as the model needs and
resized to its input size) or ``fashion-mnist:N`` / ``digits:N`` for test image N of
those sets. Fashion-MNIST pictures are light clothes on a black background.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from qkv.cli._options import (
    Parser,
    add_overwrite,
    device,
    non_negative_int,
    overwrite_option,
    positive_int,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__


def add_parser(subparsers: Any) -> None:
    add_group_parser(
        subparsers,
        "vit",
        help="train, evaluate and use a ViT image classifier (Fashion-MNIST)",
        usage=USAGE,
        commands="train | eval | classify",
        run=run,
    )


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _train(argv: list[str]) -> int:
    from qkv.tasks.vit import PRESETS, train_vit

    p = Parser(prog="qkv vit train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="fashion")
    p.add_argument("--run-dir", default="runs/vit-fashion")
    p.add_argument("--steps", type=positive_int, help="override the preset's number of steps")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help="override the preset's batch (per process under torchrun)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    add_overwrite(p)
    p.add_argument("--limit", type=positive_int, help="use only the first N train and test images")
    p.add_argument("--data", help="Fashion-MNIST directory (default: Debian's)")
    p.add_argument(
        "--device", type=device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    o = p.parse_args(argv)
    _set_threads(o.threads)
    report = train_vit(
        o.run_dir,
        o.preset,
        resume=o.resume,
        max_steps=o.steps,
        batch_size=o.batch_size,
        limit=o.limit,
        data_dir=o.data,
        device=o.device,
        seed=o.seed,
        progress=False if o.no_progress else None,
        **overwrite_option(train_vit, o.overwrite),
    )
    if report is None:  # not the main process of a torchrun run
        return 0
    print(f"{'step':>6}{'minutes':>9}{'valid acc':>11}")
    for row in report.curve:
        print(f"{int(row['step']):>6}{row['seconds'] / 60:>9.1f}{row['accuracy']:>11.2%}")
    print(
        f"test accuracy {report.test_accuracy:.2%} after {report.steps} steps, "
        f"{report.seconds / 60:.1f} min of training; model in {report.run_dir}"
    )
    return 0


def _eval(argv: list[str]) -> int:
    from qkv.tasks.vit import load_classifier, load_images

    p = Parser(prog="qkv vit eval")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument("--data", help="Fashion-MNIST directory (default: Debian's)")
    p.add_argument("--limit", type=positive_int, help="score only the first N test images")
    p.add_argument(
        "--test-flip",
        action="store_true",
        help="average each image with its mirror image (default: as the run was trained)",
    )
    p.add_argument("--threads", type=positive_int)
    o = p.parse_args(argv)
    _set_threads(o.threads)
    classifier = load_classifier(o.checkpoint)
    classifier.test_flip = classifier.test_flip or o.test_flip
    dataset = classifier.dataset or "fashion-mnist"
    test = load_images(dataset, "test", data_dir=o.data)
    if o.limit is not None:
        test = replace(test, images=test.images[: o.limit], labels=test.labels[: o.limit])
    probs = classifier.probabilities(test.images)  # (n, K)
    predicted = probs.argmax(dim=-1)
    correct = predicted == test.labels
    flip = ", averaged with mirror images" if classifier.test_flip else ""
    print(f"{dataset} test: {len(test)} images{flip}, accuracy {float(correct.float().mean()):.2%}")
    width = max(len(c) for c in classifier.classes)
    for k, name in enumerate(classifier.classes):
        mine = test.labels == k
        if mine.any():
            print(f"  {name:<{width}} {float(correct[mine].float().mean()):>7.2%}")
    return 0


def _read(source: str, classifier: Any) -> Any:
    """An image in the model's pixel units, ``(c, H, W)``; clear errors for bad files."""
    from qkv.cli.attention import IMAGE_SETS, Loaded, read_image

    name, _, index = source.partition(":")
    if not (name in IMAGE_SETS and index.isdigit()) and not Path(source).is_file():
        raise FileNotFoundError(f"image {source} not found")
    try:
        loaded = Loaded("vit", classifier.model, {"max_value": classifier.max_value})
        return read_image(source, loaded)[0]
    # PIL: UnidentifiedImageError is an OSError (read_image already refuses huge images).
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read {source} as an image ({error})") from error
    except IndexError as error:
        raise ValueError(f"{source}: no such test image ({error})") from error


def _classify(argv: list[str]) -> int:
    import torch

    from qkv.tasks.vit import load_classifier

    p = Parser(prog="qkv vit classify")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument("images", nargs="+", help="image files, or fashion-mnist:N / digits:N")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per image")
    o = p.parse_intermixed_args(argv)
    classifier = load_classifier(o.checkpoint)
    images = torch.stack([_read(source, classifier) for source in o.images])  # (b, c, H, W)
    for source, prediction in zip(o.images, classifier.classify(images, o.top), strict=True):
        print(f"{source}: {prediction.label}")
        for label, p in zip(prediction.labels, prediction.probabilities, strict=True):
            print(f"   {p:6.3f}  {label}")
    return 0


def run(args: argparse.Namespace) -> int:
    commands = {"train": _train, "eval": _eval, "classify": _classify}
    return dispatch("vit", USAGE, commands, list(args.args))
