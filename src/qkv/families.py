"""Checkpoint families: what a folder on disk holds, and the one loader for each kind.

Every command and task that takes a path asks :func:`identify` what is there, and
:func:`load` (or the family's own loader) reads it:

========================= ============================================ ===============
what the folder holds      how it is recognised                         family
========================= ============================================ ===============
a translator run           ``meta.json`` family ``transformer-translation``  ``translator``
a ViT run                  ``meta.json`` family ``vit-classifier``          ``vit``
a BERT run                 ``model/config.json`` beside the checkpoints      ``bert``
a Hugging Face folder      ``config.json`` ``model_type``, see             any of the three
                           :data:`HF_FAMILIES`
a timm Hub folder          ``config.json`` ``architecture`` ``vit_...``,    ``vit``
                           ``deit_...`` (no ``model_type``)
========================= ============================================ ===============

A run directory resolves to its latest checkpoint; a checkpoint folder is taken as
it is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["FAMILIES", "Family", "Identified", "identify", "load", "loader"]

Family = Literal["translator", "bert", "vit"]

#: meta.json's ``family`` of a qkv checkpoint -> the family.
QKV_FAMILIES: dict[str, Family] = {
    "transformer-translation": "translator",
    "vit-classifier": "vit",
    "bert-mlm": "bert",
    "bert-classification": "bert",
}
#: config.json's ``model_type`` of a Hugging Face folder -> the family.
HF_FAMILIES: dict[str, Family] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "vit": "vit",
    "marian": "translator",
}

#: The registry: family -> the loader (module, function), imported when first used so
#: that asking what a folder holds imports no model code. Each loader takes the path
#: and ``device=`` and returns the task's object (a ``Translator``, a ViT
#: ``Classifier``, a BERT ``SentenceEncoder``).
FAMILIES: dict[Family, tuple[str, str]] = {
    "translator": ("qkv.tasks.translation", "load_translator"),
    "vit": ("qkv.tasks.vit", "load_classifier"),
    "bert": ("qkv.tasks.bert", "SentenceEncoder.load"),
}


@dataclass(frozen=True)
class Identified:
    """What :func:`identify` found: the family, the folder to read (a checkpoint
    folder or a Hugging Face folder), and its ``meta.json`` or ``config.json``."""

    family: Family
    path: Path
    hugging_face: bool
    meta: dict[str, Any] = field(default_factory=dict)
    timm: bool = False  # a folder as timm writes it to the Hub (hugging_face is False)


def identify(path: str | Path, *, expect: Family | None = None) -> Identified:
    """What ``path`` holds (see the module docstring).

    Raises ``FileNotFoundError`` when ``path`` holds no model, ``ValueError`` when it
    holds one qkv does not know or (with ``expect``) one of another family.
    """
    from qkv.convert.common import read_config
    from qkv.train.checkpoint import resolve_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    hf_dir = path if (path / "config.json").is_file() else path / "model"
    if (hf_dir / "config.json").is_file():
        config = read_config(hf_dir)
        if "architecture" in config and "model_type" not in config:
            found = _timm(hf_dir, config)
            if expect is not None and found.family != expect:
                raise ValueError(f"{path} holds a {found.family} model, not a {expect}")
            return found
        model_type = config.get("model_type")
        if model_type not in HF_FAMILIES:
            raise ValueError(
                f"{hf_dir}: Hugging Face model_type {model_type!r}; qkv reads "
                f"{', '.join(sorted(HF_FAMILIES))}"
            )
        found = Identified(HF_FAMILIES[model_type], hf_dir, True, config)
    else:
        checkpoint = resolve_checkpoint(path)
        name = str(checkpoint.meta.get("family", ""))
        if name not in QKV_FAMILIES:
            raise ValueError(
                f"{checkpoint.path} holds a {name!r} model; qkv knows "
                f"{', '.join(sorted(QKV_FAMILIES))}"
            )
        found = Identified(QKV_FAMILIES[name], checkpoint.path, False, checkpoint.meta)
    if expect is not None and found.family != expect:
        raise ValueError(f"{path} holds a {found.family} model, not a {expect}")
    return found


#: The timm architectures qkv reads (its ViT; qkv.convert.vit.from_timm).
TIMM_PREFIXES = ("vit_", "deit_", "deit3_")


def _timm(folder: Path, config: dict[str, Any]) -> Identified:
    architecture = str(config["architecture"])
    if not architecture.startswith(TIMM_PREFIXES):
        raise ValueError(
            f"{folder}: timm architecture {architecture!r}; qkv reads timm's Vision "
            f"Transformers ({', '.join(p + '...' for p in TIMM_PREFIXES)})"
        )
    return Identified("vit", folder, False, config, timm=True)


def loader(family: Family) -> Callable[..., Any]:
    """The registered loader of ``family``."""
    module_name, attribute = FAMILIES[family]
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def load(path: str | Path, *, device: str = "cpu") -> tuple[Family, Any]:
    """Identify ``path`` and load it with its family's loader."""
    family = identify(path).family
    return family, loader(family)(path, device=device)
