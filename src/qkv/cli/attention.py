"""``qkv attention``: where a model attends on one input, as pictures and as a page.

qkv attention runs/de-en "Der Hund aß das Futter, weil er hungrig war." --out maps.png
qkv attention path/to/all-MiniLM-L6-v2 "The dog ate the food because it was hungry." \\
    --layer 2 --lines it --out it.png --html maps.html
qkv attention runs/vit-fashion shoe.png --layer -1 --out vit.png

PATH is one of
  a translator: a run directory of `qkv translate train`, or one of its checkpoints,
      or a Hugging Face Marian (OPUS-MT) folder
      (INPUT: a German sentence; pictures of encoder, decoder and cross-attention);
  a BERT: a Hugging Face folder with config.json (model_type "bert"), the weights
      and tokenizer.json (INPUT: text);
  a ViT: a qkv checkpoint (or run directory) whose meta.json has a ViT model_config,
      or a Hugging Face folder with model_type "vit" (INPUT: an image file, or
      fashion-mnist:N / digits:N for test image N of those sets).

Only the layers asked for (--layer) compute their weights; the others keep the
fused kernel. A ViT without --layer captures every layer and adds the attention
rollout. Without --out or --html the picture goes to attention.png.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.cli._options import (
    HelpFormatter,
    add_inference_options,
    inference_device,
    positive_int,
)

USAGE = __doc__
IMAGE_SETS = ("fashion-mnist", "digits")


@dataclass
class Loaded:
    """A model ready to capture, and how to feed it."""

    family: str  # "translator" | "bert" | "vit"
    model: Any  # a Translator (model and tokenizer), a BertModel or a ViT
    extra: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="draw a model's attention on one input (PNG/SVG, HTML page)",
        description=USAGE,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "path",
        help="translator run/checkpoint or Marian folder, BERT folder or ViT checkpoint",
    )
    parser.add_argument("input", help="a sentence, or an image for a ViT")
    parser.add_argument(
        "--layer", type=int, action="append", help="layer to capture (repeat; default all)"
    )
    parser.add_argument("--head", type=int, action="append", help="head to draw (repeat)")
    parser.add_argument("--mean", action="store_true", help="draw the mean over heads")
    parser.add_argument(
        "--lines",
        metavar="TOKEN",
        help="draw lines from TOKEN to every token, thick where it attends most",
    )
    parser.add_argument(
        "--kind",
        choices=["all", "encoder", "decoder", "cross"],
        default="all",
        help="translator: which attention to draw (default all, one picture each)",
    )
    parser.add_argument("--target", help="translator: read this translation instead of its own")
    parser.add_argument(
        "--beam", type=positive_int, default=4, help="translator: beam size (1 = greedy)"
    )
    parser.add_argument("--out", help="picture to write: .png or .svg (default attention.png)")
    parser.add_argument("--html", help="self-contained page to write (.html)")
    add_inference_options(parser)
    parser.set_defaults(run=run)


# --- loading: what is PATH? --------------------------------------------------------------------


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Loaded:
    """Recognise (:func:`qkv.families.identify`) and load the model at ``path``, on
    ``device`` in ``dtype``."""
    from qkv.families import identify

    device = torch.device(device)
    found = identify(path)
    if found.family == "translator":
        from qkv.tasks.translation import load_translator

        translator = load_translator(found.path, device=device)
        translator.model.to(dtype=dtype)
        return Loaded("translator", translator, device=device, dtype=dtype)
    if found.family == "bert":
        loaded = _load_bert(found.path)
        loaded.model.to(device=device, dtype=dtype)
        loaded.device, loaded.dtype = device, dtype
        return loaded
    from qkv.tasks.vit import load_classifier

    classifier = load_classifier(found.path, device=device)
    classifier.model.to(dtype=dtype)
    extra = {
        "mean": classifier.mean.tolist(),
        "std": classifier.std.tolist(),
        "max_value": classifier.max_value,
        "classes": classifier.classes,
        # An image file is read as the classifier reads it (converted, resized and
        # cropped as in training), so the maps are of what `qkv vit classify` sees.
        "read": classifier.read_image,
    }
    return Loaded("vit", classifier.model, extra, device, dtype)


def _load_bert(path: Path) -> Loaded:
    from tokenizers import Tokenizer

    from qkv.convert.bert import from_pretrained

    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}: BERT needs its WordPiece tokenizer")
    model = from_pretrained(path).eval()
    return Loaded("bert", model, {"tokenizer": Tokenizer.from_file(str(path / "tokenizer.json"))})


def read_image(source: str, loaded: Loaded) -> tuple[Tensor, tuple[str, ...] | None]:
    """The image to show the ViT, in the units it was trained on, unnormalised, and
    the class names when it comes from one of the image sets.

    Shape: ``(c, H, W)`` float, values in ``[0, max_value]``.
    """
    config = loaded.model.config
    name, _, index = source.partition(":")
    if name in IMAGE_SETS and index.isdigit():
        from qkv.data.images import load_digits, load_fashion_mnist

        images = load_fashion_mnist("test") if name == "fashion-mnist" else load_digits("test")
        if int(index) >= len(images.images):
            raise ValueError(
                f"{source}: no such test image ({name} has {len(images.images)}, from 0)"
            )
        # (c, H, W), already in the units the model was trained on
        return images.images[int(index)].float(), images.classes
    if "read" in loaded.extra:
        return loaded.extra["read"](source), None
    from qkv.data.image_folder import read_image_file

    # A Hugging Face folder: both sides resized to the input, as its image processor does.
    pixels = read_image_file(source, config.image_size, config.in_channels, crop=False)
    return torch.from_numpy(pixels).float() * (loaded.extra["max_value"] / 255.0), None


def _normalise(image: Tensor, loaded: Loaded) -> Tensor:
    mean, std = loaded.extra.get("mean"), loaded.extra.get("std")
    if mean is None or std is None:
        return image / loaded.extra["max_value"]  # [0, 1] when nothing better is known
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return (image - m[:, None, None]) / s[:, None, None]


# --- capture, draw, write ----------------------------------------------------------------------


def _summary(amap: Any, layer: int, heads: list[int] | None, mean: bool) -> str:
    """Text for the terminal: for each query, the key it attends to most."""
    weights = amap.layer(layer)  # (h, q, k)
    if heads is not None:
        weights = weights[heads]
    if mean or heads is None or len(heads) > 1:
        what, matrix = f"mean of {weights.shape[0]} heads", weights.mean(dim=0)
    else:
        what, matrix = f"head {heads[0]}", weights[0]
    lines = [f"{amap.kind} attention, layer {layer % amap.num_layers} ({what}): strongest key"]
    # A ViT has a row per patch; its class token's row is the one people read.
    rows = list(zip(amap.queries, matrix, strict=True))[: 1 if amap.grid_size else None]
    width = max(len(t) for t, _ in rows)
    for query, row in rows:
        best = int(row.argmax())
        lines.append(f"  {query:>{width}} -> {amap.keys[best]} ({float(row[best]):.2f})")
    return "\n".join(lines)


def _capture(loaded: Loaded, args: argparse.Namespace) -> tuple[dict[str, Any], str, Tensor | None]:
    """(maps by kind, a title, the image for a ViT)."""
    from qkv.viz.capture import bert_attention, capture_vit, translator_attention

    layers = args.layer
    if loaded.family == "translator":
        maps = translator_attention(
            loaded.model, args.input, targets=args.target, layers=layers, beam_size=args.beam
        )[0]
        translation = loaded.model.tokenizer.target.decode(
            [loaded.model.tokenizer.target.token_to_id(t) or 0 for t in maps["cross"].queries]
        )
        print(f"source       {args.input}\ntranslation  {translation}")
        return maps, f"{args.input} → {translation}", None
    if loaded.family == "bert":
        maps = bert_attention(loaded.model, loaded.extra["tokenizer"], args.input, layers=layers)[0]
        print("tokens  " + " ".join(maps["encoder"].keys))
        return maps, args.input, None
    image, set_classes = read_image(args.input, loaded)
    pixels = _normalise(image, loaded)[None].to(loaded.device, loaded.dtype)  # (1, c, H, W)
    # Without --layer every layer is captured, and the rollout multiplies through them.
    maps = capture_vit(loaded.model, pixels, layers=layers)[0]
    with torch.no_grad():
        logits = loaded.model(pixels).logits[0]  # (K,)
    classes = loaded.extra.get("classes") or set_classes
    best = int(logits.argmax())
    label = classes[best] if classes and best < len(classes) else str(best)
    print(f"image  {args.input}  predicted class {label}")
    return maps, f"{args.input} → {label}", image


def _out_path(out: Path, kind: str, several: bool) -> Path:
    return out.with_name(f"{out.stem}-{kind}{out.suffix}") if several else out


def _sizes(loaded: Loaded, kind: str) -> tuple[int, int]:
    """(layers, heads) of the attention ``kind`` draws; for a translator's ``all``, the
    smaller stack, since one --layer picks a layer of each."""
    if loaded.family == "translator":
        config = loaded.model.model.config
        layers = {
            "encoder": config.num_encoder_layers,
            "decoder": config.num_decoder_layers,
            "cross": config.num_decoder_layers,
            "all": min(config.num_encoder_layers, config.num_decoder_layers),
        }[kind]
        return layers, config.num_heads
    config = loaded.model.config
    return config.num_layers, config.num_heads


def _check_indices(option: str, values: list[int] | None, count: int) -> None:
    """Python's indexing, negative from the end, as the capture functions read it."""
    for value in values or []:
        if not -count <= value < count:
            raise ValueError(
                f"{option} {value}: out of range, this model has {count} "
                f"(0 to {count - 1}, or -1 to -{count} from the end)"
            )


def _check_lines(maps: dict[str, Any], kinds: list[str], token: str) -> None:
    """``--lines TOKEN`` must be a token of at least one picture asked for."""
    from qkv.viz.plots import find_token

    for kind in kinds:
        try:
            find_token(maps[kind].queries, token)
            return
        except ValueError:
            continue
    tokens = {kind: list(maps[kind].queries) for kind in kinds}
    raise ValueError(f"--lines {token!r}: not a token of the input; its tokens are {tokens}")


def run(args: argparse.Namespace) -> int:
    from qkv.viz.page import write_attention_page
    from qkv.viz.plots import (
        find_token,
        plot_attention,
        plot_attention_lines,
        plot_vit_attention,
        save_figure,
    )

    device, dtype = inference_device(args)
    loaded = load(args.path, device=device, dtype=dtype)
    if loaded.family != "translator" and args.kind != "all":
        raise ValueError(f"--kind {args.kind}: only for a translator, this is a {loaded.family}")
    num_layers, num_heads = _sizes(loaded, args.kind)
    _check_indices("--layer", args.layer, num_layers)
    _check_indices("--head", args.head, num_heads)
    maps, title, image = _capture(loaded, args)
    kinds = list(maps) if args.kind == "all" else [args.kind]
    if args.lines is not None and image is None:
        _check_lines(maps, kinds, args.lines)
    heads = args.head
    shown_layer = args.layer[-1] if args.layer else -1
    for kind in kinds:
        print(_summary(maps[kind], shown_layer, heads, args.mean))
    out = Path(args.out) if args.out else (None if args.html else Path("attention.png"))
    if out is not None:
        several = len(kinds) > 1
        for kind in kinds:
            amap = maps[kind]
            if image is not None:
                figure = plot_vit_attention(
                    image, amap, layer=shown_layer, heads=heads, title=title
                )
            elif args.lines is not None:
                try:
                    find_token(amap.queries, args.lines)
                except ValueError as error:  # another picture has the token (_check_lines)
                    print(f"{kind}: no lines ({error})")
                    continue
                figure = plot_attention_lines(
                    amap, layer=shown_layer, token=args.lines, heads=heads, mean=args.mean
                )
            else:
                figure = plot_attention(
                    amap, layers=args.layer, heads=heads, mean=args.mean, title=f"{kind}: {title}"
                )
            print(f"wrote {save_figure(figure, _out_path(out, kind, several))}")
    if args.html:
        print(f"wrote {write_attention_page(args.html, [maps[k] for k in kinds], title=title)}")
    return 0
