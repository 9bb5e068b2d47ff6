"""``qkv vit``: train a Vision Transformer on your own folder of images (or Fashion-MNIST),
evaluate it, classify images.

qkv --threads 1 vit train --images pets/ --preset fashion --run-dir runs/vit-pets
qkv vit train --images pets/ --valid-images pets-valid/ --test-images pets-test/
qkv vit train --images pets/ --from runs/vit-fashion --image-size 56 --run-dir runs/pets-ft
qkv --threads 1 vit train --preset fashion --run-dir runs/vit-fashion
qkv vit train --preset fashion --run-dir runs/vit-fashion --resume
qkv vit eval runs/vit-pets --json
qkv vit eval runs/vit-fashion --images my-test-folder/
qkv vit classify runs/vit-fashion shoe.png bag.png fashion-mnist:0 --json
qkv vit export-hf runs/vit-pets -o vit-pets-hf/

Own images (``--images DIR``): the ImageFolder layout, one sub-folder per class (the
class names are the sorted sub-folder names; hidden folders and files are ignored,
and so are files whose extension is not an image's: .jpg .jpeg .png .ppm .bmp .pgm
.tif .tiff .webp .gif). Any size, grey or colour: each image is converted to the
model's channels (grey presets: grey; colour models: RGB), its shorter side resized to
the model's input (the preset's, or --image-size) and the centre cut out. Every image
is decoded once into memory (n × channels × size² bytes: a folder that fits in memory).
Without --valid-images/--test-images, the split is 80/10/10 by a hash of each file's
path inside DIR (the same on every machine). An unreadable image stops the run with
its name; --skip-bad-files leaves such files out and counts them.

--from CHECKPOINT: start from a qkv ViT run or checkpoint, a Hugging Face ViT folder or
a timm Hub folder (vit_..., deit_...): its position embeddings are resampled to the
image size, its head is kept when the folder has its classes and replaced otherwise,
its pixel normalisation is kept.

An image to classify is a file (converted, resized and cropped as for training; for a
Hugging Face folder, as its preprocessor_config.json says, like transformers' image
processor; for a timm Hub folder, as timm's evaluation transform of its
pretrained_cfg) or ``fashion-mnist:N`` / ``digits:N`` for test image N of those sets.
Fashion-MNIST pictures are light clothes on a black background.

export-hf RUN -o DIR: a new Hugging Face folder (config.json with the class names,
model.safetensors, preprocessor_config.json saying how image files are read and
normalised) that ``transformers``' ``ViTForImageClassification`` and ``AutoImageProcessor``
open and use as qkv does. A run trained with --test-flip averages each image with its
mirror image at test time; transformers does not.

JSON keys
    classify --json: one object per image: ``image`` (as given), ``label`` (the most
    probable class), ``top`` (a list of ``{"label", "probability"}``, most probable
    first, --top of them).
    eval --json: one object: ``data`` (the folder or the data set scored),
    ``accuracy``, ``images`` (how many were scored), ``per_class`` (class name ->
    ``{"accuracy", "images"}``, accuracy null for a class without images),
    ``test_flip`` (whether each image was averaged with its mirror image).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from qkv.cli._options import (
    Parser,
    add_compile,
    add_inference_options,
    add_json,
    add_overwrite,
    add_progress,
    add_set,
    add_training_speed,
    apply_set,
    check_new_folder,
    device,
    inference_device,
    non_negative_int,
    overwrite_option,
    positive_int,
    print_json,
    progress_option,
    training_speed,
)
from qkv.cli._subcommands import add_group_parser, dispatch

USAGE = __doc__


def add_parser(subparsers: Any) -> None:
    add_group_parser(
        subparsers,
        "vit",
        help="train, evaluate and use a ViT image classifier (your own images, Fashion-MNIST)",
        usage=USAGE,
        commands="train | eval | classify | export-hf",
        run=run,
    )


def _train(argv: list[str]) -> int:
    from qkv.tasks.vit import PRESETS, train_vit

    p = Parser(prog="qkv vit train")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="fashion",
        help="the recipe: model size, image size and channels, steps, augmentation",
    )
    p.add_argument("--run-dir", default="runs/vit-fashion", help="where the run is written")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="train on this folder of images, one sub-folder per class (default: the "
        "preset's data set)",
    )
    p.add_argument(
        "--valid-images",
        metavar="DIR",
        help="validation images with the same class sub-folders (default: 10%% of --images)",
    )
    p.add_argument(
        "--test-images",
        metavar="DIR",
        help="test images with the same class sub-folders (default: 10%% of --images)",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave unreadable images out and count them, instead of stopping at the first",
    )
    p.add_argument(
        "--from",
        dest="from_checkpoint",
        metavar="CHECKPOINT",
        help="fine-tune this qkv ViT run or checkpoint, or Hugging Face ViT folder, on --images",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="image side in pixels, a multiple of the patch size, for --images (default: the "
        "preset's, or that of --from)",
    )
    p.add_argument("--steps", type=positive_int, help="override the preset's number of steps")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help="override the preset's batch (per process under torchrun)",
    )
    add_set(p, "model.dropout=0.1, train.lr=1e-3, flip_p=0, test_flip=false")
    add_overwrite(p)
    p.add_argument("--limit", type=positive_int, help="use only the first N train and test images")
    p.add_argument("--data", help="Fashion-MNIST directory (default: Debian's)")
    p.add_argument(
        "--device", type=device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the weights and batches"
    )
    add_training_speed(p)
    add_progress(p)
    o = p.parse_args(argv)
    own = {"train.max_steps": "steps", "batch_size": "batch_size"}
    report = train_vit(
        o.run_dir,
        apply_set(p, PRESETS[o.preset], o, own),
        resume=o.resume,
        max_steps=o.steps,
        batch_size=o.batch_size,
        limit=o.limit,
        data_dir=o.data,
        device=o.device,
        seed=o.seed,
        progress=progress_option(o),
        images=o.images,
        valid_images=o.valid_images,
        test_images=o.test_images,
        skip_bad_files=o.skip_bad_files,
        from_checkpoint=o.from_checkpoint,
        image_size=o.image_size,
        **training_speed(o),
        **overwrite_option(train_vit, o.overwrite),
    )
    if report is None:  # not the main process of a torchrun run
        return 0
    if report.skipped_files:
        shown = ", ".join(report.skipped_files[:3])
        more = f" and {len(report.skipped_files) - 3} more" if len(report.skipped_files) > 3 else ""
        print(f"skipped {len(report.skipped_files)} unreadable image file(s): {shown}{more}")
    print(f"{'step':>6}{'minutes':>9}{'valid acc':>11}")
    for row in report.curve:
        print(f"{int(row['step']):>6}{row['seconds'] / 60:>9.1f}{row['accuracy']:>11.2%}")
    print(
        f"test accuracy {report.test_accuracy:.2%} after {report.steps} steps, "
        f"{report.seconds / 60:.1f} min of training; model in {report.run_dir}"
    )
    return 0


def _eval(argv: list[str]) -> int:
    from qkv.tasks.vit import IMAGE_FOLDER, load_classifier, load_images, load_recorded_test, scores

    p = Parser(prog="qkv vit eval")
    p.add_argument("checkpoint", help="a run directory or one of its checkpoints")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="score this folder of images, one sub-folder per class named as the model's "
        "classes (default: the run's own test images)",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="with --images: leave unreadable images out instead of stopping",
    )
    p.add_argument("--data", help="Fashion-MNIST directory (default: Debian's)")
    p.add_argument("--limit", type=positive_int, help="score only the first N test images")
    p.add_argument(
        "--test-flip",
        action="store_true",
        help="average each image with its mirror image (default: as the run was trained)",
    )
    add_inference_options(p)
    add_compile(p)
    add_json(p, "one JSON object with the scores")
    o = p.parse_args(argv)
    where, dtype = inference_device(o)
    classifier = load_classifier(o.checkpoint, device=where, dtype=dtype, compile=o.compile)
    classifier.test_flip = classifier.test_flip or o.test_flip
    config = classifier.config
    size = dict(image_size=config.image_size, channels=config.in_channels)
    if o.images is not None:
        from qkv.data.image_folder import load_image_folder

        # Each file read as the model reads images: a Hugging Face folder's processor,
        # or the crop the run was trained with.
        folder = load_image_folder(
            o.images, skip_bad_files=o.skip_bad_files, reader=classifier.read_pixels, **size
        )
        test = replace(
            folder.images,
            labels=classifier.folder_labels(o.images, folder.images),
            classes=tuple(classifier.classes),
        )
        name = str(o.images)
    elif classifier.dataset == IMAGE_FOLDER:
        if not classifier.data:
            raise ValueError(f"{o.checkpoint}: meta.json does not record its image folders")
        folder = load_recorded_test(classifier.data, **size)
        test = folder.images
        name = (
            str(folder.root)
            if classifier.data.get("test_images")
            else f"{folder.root} (test split)"
        )
    else:
        dataset = classifier.dataset or "fashion-mnist"
        test, name = load_images(dataset, "test", data_dir=o.data), f"{dataset} test"
    if o.limit is not None:
        test = replace(test, images=test.images[: o.limit], labels=test.labels[: o.limit])
    if len(test) == 0:
        raise ValueError(f"{name}: no images to score")
    # Folder images are 0-255; the model was trained on pixels up to max_value.
    pixels = test.images.float() * (classifier.max_value / test.max_value)
    probs = classifier.probabilities(pixels)  # (n, K)
    result = scores(probs, test.labels, list(classifier.classes))
    if o.json:
        print_json({"data": name, **result, "test_flip": classifier.test_flip})
        return 0
    flip = ", averaged with mirror images" if classifier.test_flip else ""
    print(f"{name}: {result['images']} images{flip}, accuracy {result['accuracy']:.2%}")
    width = max(len(c) for c in classifier.classes)
    for label, row in result["per_class"].items():
        if row["images"]:
            print(f"  {label:<{width}} {row['accuracy']:>7.2%}  ({row['images']} images)")
    return 0


def _read(source: str, classifier: Any) -> Any:
    """An image in the model's pixel units, ``(c, H, W)``; clear errors for bad files."""
    from qkv.cli.attention import IMAGE_SETS, Loaded, read_image

    name, _, index = source.partition(":")
    if name in IMAGE_SETS and index.isdigit():
        loaded = Loaded("vit", classifier.model, {"max_value": classifier.max_value})
        return read_image(source, loaded)[0]
    if not Path(source).is_file():
        raise FileNotFoundError(f"image {source} not found")
    return classifier.read_image(source)  # a ValueError naming the file if unreadable


def _classify(argv: list[str]) -> int:
    import torch

    from qkv.tasks.vit import load_classifier

    p = Parser(prog="qkv vit classify")
    p.add_argument(
        "checkpoint", help="a run directory, one of its checkpoints, or a Hugging Face ViT folder"
    )
    p.add_argument("images", nargs="+", help="image files, or fashion-mnist:N / digits:N")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per image")
    add_inference_options(p)
    add_compile(p)
    add_json(p)
    o = p.parse_intermixed_args(argv)
    where, dtype = inference_device(o)
    classifier = load_classifier(o.checkpoint, device=where, dtype=dtype, compile=o.compile)
    images = torch.stack([_read(source, classifier) for source in o.images])  # (b, c, H, W)
    for source, prediction in zip(o.images, classifier.classify(images, o.top), strict=True):
        if o.json:
            top = [
                {"label": label, "probability": p}
                for label, p in zip(prediction.labels, prediction.probabilities, strict=True)
            ]
            print_json({"image": source, "label": prediction.label, "top": top})
            continue
        print(f"{source}: {prediction.label}")
        for label, p in zip(prediction.labels, prediction.probabilities, strict=True):
            print(f"   {p:6.3f}  {label}")
    return 0


def _export_hf(argv: list[str]) -> int:
    from qkv.convert.vit import save_pretrained
    from qkv.tasks.vit import load_classifier

    p = Parser(prog="qkv vit export-hf")
    p.add_argument("checkpoint", help="a qkv ViT run directory or one of its checkpoints")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="the new Hugging Face folder (config.json, model.safetensors, "
        "preprocessor_config.json)",
    )
    o = p.parse_args(argv)
    check_new_folder(o.output)
    classifier = load_classifier(o.checkpoint)
    if classifier.processor is not None:
        raise ValueError(f"{o.checkpoint} is a Hugging Face or timm folder, not a qkv run")
    save_pretrained(
        classifier.model,
        o.output,
        label_names=classifier.classes,
        processor=classifier.image_processor(),
    )
    print(f"wrote {o.output}")
    if classifier.test_flip:
        print("note: the run averages each image with its mirror image; transformers will not")
    return 0


def run(args: argparse.Namespace) -> int:
    commands = {"train": _train, "eval": _eval, "classify": _classify, "export-hf": _export_hf}
    return dispatch("vit", USAGE, commands, list(args.args))
