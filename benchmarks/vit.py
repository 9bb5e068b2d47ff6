"""ViT: qkv against timm — forward throughput; and (``--train``) accuracy against training time.

Throughput: qkv's :class:`~qkv.models.vit.ViT` against ``timm``'s ``VisionTransformer`` of
the same configuration (``--models``):

- ``b16``: the paper's ViT-B/16 at 224 px, 1000 classes (86.6M parameters), batch 8;
- ``s16``: ViT-S/16 (DeiT-S's sizes: width 384, 6 heads, feed-forward 1536; 22M), batch 8;
- ``fashion``: the ``fashion_tiny`` preset (28×28 grey, 7 px patches, width 128, 6
  layers, 4 heads, feed-forward 256), batch 256;
- ``fashion_small``: the same with 4 px patches (49 tokens), batch 256.

timm's model is built with random weights (its own initialisation, plus a random head,
which timm initialises to zero) and copied into qkv through a name map (timm's fused
``qkv`` projection is split into ``q_proj``, ``k_proj``, ``v_proj``). Both are in eval
mode, float32, under ``torch.inference_mode``, fed the same random images. One call of
each first checks that the logits agree (``atol`` 1e-4). Then untimed interleaved calls
run for ``--warmup`` seconds, then ``--rounds`` timed rounds, each one call of each side,
the order alternating between rounds. The table gives images/s of each (median over
rounds) and the ratio qkv/timm of images/s per round (> 1: qkv is faster), median and
min–max.

bf16 and compiled (``--pairs``, ``--compile``; :mod:`_fast`): pairs of variants of the
same two models, e.g. ``qkv-bf16/ref-fp32`` (qkv in bf16 against timm in float32; the
images converted to each side's dtype), each pair timed interleaved as above, with the
seconds of each compiled side's first call and each side's largest logit difference
from timm's float32 logits. ``--pairs`` alone runs :data:`_fast.DEFAULT_PAIRS`;
``--compile`` adds :data:`_fast.COMPILE_PAIRS`. ``--batch`` overrides the model's batch
size; ``--device cuda`` runs the pairs on a GPU.

Training (``--train``): runs ``qkv.tasks.vit.train_vit`` with ``--preset`` (default
``fashion``) into ``--run-dir`` and prints validation accuracy against training time and
the final test accuracy. ``--report RUN_DIR`` prints the same table from a finished run
(its ``report.json``) without training.

Install timm (not a dependency of qkv; only this benchmark needs it):
    .venv/bin/pip install --no-deps timm && .venv/bin/pip install pyyaml huggingface_hub
``--no-deps`` because timm requires torchvision, and the torchvision wheel that pip finds
for torch 2.13 here (0.28.0, a CUDA build) cannot load beside the CPU build of torch: its
operators fail to register and ``import torchvision`` raises. timm imports torchvision at
start-up only for data transforms and a frozen BatchNorm, neither used by its ViT; when
``import torchvision`` fails, this script puts a stand-in module in its place before
importing timm, and says so on stderr. A working torchvision is used as it is.

Run (from the repository root):
    .venv/bin/python benchmarks/vit.py --models fashion b16 --rounds 10
    .venv/bin/python benchmarks/vit.py --models fashion b16 --pairs --compile
    .venv/bin/python benchmarks/vit.py --train --preset fashion --run-dir runs/vit-fashion
    .venv/bin/python benchmarks/vit.py --report runs/vit-fashion

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import enum
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import log, ratio_spread, time_interleaved
from _fast import (
    COMPILE_PAIRS,
    DEFAULT_PAIRS,
    PairRow,
    Variants,
    compare_pairs,
    encoder_flops,
    pairs_table,
)
from torch import Tensor, nn

from qkv.models.vit import ViT, ViTConfig

MODELS: dict[str, tuple[ViTConfig, int]] = {
    "b16": (ViTConfig.b16(), 8),
    # ViT-S/16 (DeiT-S's sizes): 12 layers of width 384, 6 heads, 22M parameters.
    "s16": (ViTConfig.b16(d_model=384, num_heads=6, d_ff=1536), 8),
    "fashion": (ViTConfig.fashion_tiny(), 256),
    "fashion_small": (ViTConfig.fashion_small(), 256),
}


# --- timm, with torchvision stood in for when it cannot load -------------------------------------


class _InterpolationMode(enum.Enum):
    """torchvision's enum, which timm's transforms index at import time."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Absent(type):
    """Any torchvision class timm names at import time; using one raises."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not available in this benchmark")


class _AbsentClass(metaclass=_Absent):
    pass


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _InterpolationMode if name == "InterpolationMode" else _AbsentClass


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and its (lower-case) submodules as stand-ins."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        top = fullname.split(".")[0]
        if top == "torchvision" and fullname.split(".")[-1].islower():
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_timm() -> Any:
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # ImportError, or RuntimeError from a mismatched build
        log(f"torchvision unusable ({type(error).__name__}: {error}); standing in for it")
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandInFinder())
    try:
        import timm
    except ImportError as error:
        raise SystemExit(f"timm is not installed: .venv/bin/pip install timm ({error})") from error
    return timm


# --- the same model on both sides ----------------------------------------------------------------


def timm_vit(config: ViTConfig) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=config.in_channels,
        num_classes=config.num_classes,
        embed_dim=config.d_model,
        depth=config.num_layers,
        num_heads=config.num_heads,
        mlp_ratio=config.d_ff / config.d_model,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
    )


def copy_from_timm(ours: ViT, ref: nn.Module) -> None:
    """Load timm's weights into qkv's ViT (names and shapes mapped)."""
    src = ref.state_dict()
    d = ours.config.d_model
    state: dict[str, Tensor] = {
        "cls_token": src["cls_token"],
        "position_embeddings": src["pos_embed"],
        # Conv2d weight (d, c, p, p) flattened in (c, p_row, p_col) order, as PatchEmbedding.
        "patch_embedding.proj.weight": src["patch_embed.proj.weight"].reshape(d, -1),
        "patch_embedding.proj.bias": src["patch_embed.proj.bias"],
        "encoder.norm.weight": src["norm.weight"],
        "encoder.norm.bias": src["norm.bias"],
        "head.weight": src["head.weight"],
        "head.bias": src["head.bias"],
    }
    for i in range(ours.config.num_layers):
        t, q = f"blocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            # timm's one (3d, d) projection holds query, key and value in that order.
            for name, part in zip(
                ("q", "k", "v"), src[t + f"attn.qkv.{kind}"].chunk(3), strict=True
            ):
                state[q + f"self_attn.{name}_proj.{kind}"] = part
            state[q + f"self_attn.out_proj.{kind}"] = src[t + f"attn.proj.{kind}"]
            state[q + f"self_attn_norm.norm.{kind}"] = src[t + f"norm1.{kind}"]
            state[q + f"feed_forward_norm.norm.{kind}"] = src[t + f"norm2.{kind}"]
            state[q + f"feed_forward.linear1.{kind}"] = src[t + f"mlp.fc1.{kind}"]
            state[q + f"feed_forward.linear2.{kind}"] = src[t + f"mlp.fc2.{kind}"]
    ours.load_state_dict(state, strict=True)


def build(name: str) -> tuple[ViT, nn.Module, int]:
    """qkv's and timm's ViT on the same weights, in eval mode, and the batch size."""
    config, batch = MODELS[name]
    torch.manual_seed(0)
    ref = timm_vit(config)
    nn.init.normal_(ref.head.weight, std=0.02)  # timm's head starts at zero: nothing to compare
    ours = ViT(config)
    copy_from_timm(ours, ref)
    return ours.eval(), ref.eval(), batch


@dataclass(frozen=True)
class Row:
    model: str
    batch: int
    tokens: int
    rounds: int
    qkv_per_s: float  # images per second, median over rounds
    timm_per_s: float
    ratio: float  # median over rounds of (qkv images/s) / (timm images/s)
    ratio_min: float
    ratio_max: float


def compare(name: str, args: argparse.Namespace) -> Row:
    ours, ref, batch = build(name)
    config = ours.config
    generator = torch.Generator().manual_seed(1)
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    images = torch.randn(shape, generator=generator)
    with torch.inference_mode():
        torch.testing.assert_close(ours(images).logits, ref(images), atol=1e-4, rtol=0.0)
        _, ours_times, ref_times = time_interleaved(
            lambda: ours(images), lambda: ref(images), rounds=args.rounds, warmup=args.warmup
        )
    row = Row(
        name,
        batch,
        1 + config.num_patches,
        args.rounds,
        batch / statistics.median(ours_times),
        batch / statistics.median(ref_times),
        *ratio_spread(ref_times, ours_times),  # speed ratio: timm time / qkv time
    )
    log(f"{name}: qkv {row.qkv_per_s:.1f}/s, timm {row.timm_per_s:.1f}/s, x{row.ratio:.3f}")
    return row


def vit_variants(name: str, args: argparse.Namespace) -> tuple[Variants, int]:
    """The two models of ``name`` and their images, for :func:`_fast.compare_pairs`, and
    the batch size; compiled with torch's default shapes, as ``qkv vit classify`` does."""
    device = torch.device(args.device)
    ours, ref, batch = build(name)
    batch = args.batch or batch
    ours, ref = ours.to(device), ref.to(device)
    config = ours.config
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    inputs = {dtype: images.to(dtype) for dtype in (torch.float32, torch.bfloat16)}

    def run(model: nn.Module, dtype: torch.dtype) -> Tensor:
        out = model(inputs[dtype])
        return out if isinstance(out, Tensor) else out.logits  # timm's tensor, qkv's output

    return Variants({"qkv": ours, "ref": ref}, run, device=device, dynamic=None), batch


def pair_rows(args: argparse.Namespace) -> list[PairRow]:
    """The rows of ``--pairs`` (and ``--compile``), for :func:`_fast.pairs_table`."""
    pairs = list(args.pairs or DEFAULT_PAIRS) + (list(COMPILE_PAIRS) if args.compile else [])
    rows = []
    for name in args.models:
        variants, batch = vit_variants(name, args)
        c = variants.models["qkv"].config
        tokens = 1 + c.num_patches
        rows += compare_pairs(
            name,
            f"{batch} × {tokens} tokens",
            batch,
            variants,
            pairs,
            reference="timm",
            rounds=args.rounds,
            warmup=args.warmup,
            flops=encoder_flops(batch, tokens, c.d_model, c.d_ff, c.num_layers),
            min_time=0.2 if variants.device.type == "cuda" else 0.0,
        )
    return rows


def throughput_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | batch | tokens | rounds | qkv (img/s) | timm (img/s) | qkv / timm, median "
        "| min–max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.batch} | {r.tokens} | {r.rounds} | {r.qkv_per_s:.1f} | "
            f"{r.timm_per_s:.1f} | {r.ratio:.3f} | {r.ratio_min:.3f}–{r.ratio_max:.3f} |"
        )
    return "\n".join(lines)


# --- training ------------------------------------------------------------------------------------


def training_table(report: dict[str, Any]) -> str:
    lines = [
        "| step | minutes | valid accuracy | valid loss |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in report["curve"]:
        lines.append(
            f"| {int(row['step'])} | {row['seconds'] / 60:.1f} | {row['accuracy']:.2%} | "
            f"{row['loss']:.4f} |"
        )
    lines.append(
        f"\nTest accuracy **{report['test_accuracy']:.2%}** after {report['steps']} steps, "
        f"{report['seconds'] / 60:.1f} minutes of training (validation included)."
    )
    return "\n".join(lines)


def train(args: argparse.Namespace) -> dict[str, Any]:
    from qkv.tasks.vit import train_vit

    report = train_vit(args.run_dir, args.preset, max_steps=args.steps, progress=False)
    return report.to_dict()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["fashion", "b16"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of untimed calls")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    p.add_argument(
        "--pairs",
        nargs="*",
        metavar="A/B",
        help="compare variants, e.g. qkv-bf16/ref-fp32 (none listed: the bf16 pairs)",
    )
    p.add_argument("--compile", action="store_true", help="add the compiled pairs")
    p.add_argument("--batch", type=int, help="with --pairs: images per call")
    p.add_argument("--device", default="cpu", help="with --pairs: cpu or cuda")
    p.add_argument("--train", action="store_true", help="train --preset and report accuracy")
    p.add_argument("--preset", default="fashion", help="with --train: a qkv.tasks.vit preset")
    p.add_argument("--steps", type=int, help="with --train: override the preset's steps")
    p.add_argument("--run-dir", default="runs/vit-bench", help="with --train")
    p.add_argument("--report", metavar="RUN_DIR", help="print the table of a finished run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        path = Path(args.report) / "report.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: is {args.report} a finished qkv vit run?")
        print(training_table(json.loads(path.read_text())))
        return
    if args.train:
        print(training_table(train(args)))
        return
    timm = import_timm()
    log(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads")
    if args.pairs is not None or args.compile:
        print(pairs_table(pair_rows(args), "img"))
        return
    print(throughput_table([compare(name, args) for name in args.models]))


if __name__ == "__main__":
    main()
