"""A recipe: everything a preset fixes, as one object.

A recipe holds the model's configuration (``model``), the engine's
:class:`~qkv.train.TrainConfig` (``train``) and the few fields that belong to the job
alone (batch size, label smoothing, augmentation, …): no field is a copy of one of
the other two. The three families' presets (translation, BERT pretraining and
fine-tuning, ViT) are recipes; a command-line option or a benchmark's
``--set train.lr=3e-4`` changes one field with :meth:`Recipe.override`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Any, ClassVar, Generic, Self, TypeVar, Union

from qkv.train.engine import TrainConfig

__all__ = ["Recipe", "field_type"]

ModelConfig = TypeVar("ModelConfig")


@dataclass(frozen=True)
class Recipe(Generic[ModelConfig]):
    """``name``; ``model``: a model configuration, or a dict of overrides of the
    configuration of a checkpoint that is read later (fine-tuning); ``train``: a
    :class:`TrainConfig`."""

    name: str
    model: ModelConfig
    train: TrainConfig

    #: The configuration class whose fields a ``model`` dict of overrides may hold
    #: (fine-tuning's checkpoint configuration); ``None`` where ``model`` is one.
    model_type: ClassVar[type | None] = None
    #: Fields the job sets itself, each with what sets it (fine-tuning's number of steps
    #: follows from its epochs): :meth:`override_text`, the user's way in, refuses them
    #: rather than let the job replace the value without a word.
    derived: ClassVar[Mapping[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain values, nested configurations as dicts (saved in a run's meta.json)."""
        return dataclasses.asdict(self)

    def override(self, changes: Mapping[str, Any]) -> Self:
        """A copy with fields changed: ``"max_tokens"`` (the recipe's own),
        ``"train.lr"``, ``"model.dropout"``. Unknown names raise ``ValueError``; the
        configurations check the new values as always."""
        own: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            part, _, name = key.rpartition(".")
            holder = self._holder(part) if part in ("", "model", "train") else None
            known = isinstance(holder, dict)  # overrides of an undeclared configuration
            if holder is None or not (known or name in _field_names(holder)):
                raise ValueError(f"unknown recipe field {key!r}; known: {self.field_names()}")
            if part:
                nested.setdefault(part, {})[name] = value
            else:
                own[name] = value
        for part, values in nested.items():
            current = getattr(self, part)
            if isinstance(current, dict):  # overrides of a configuration read later
                own[part] = {**current, **values}
            else:
                own[part] = dataclasses.replace(current, **values)
        return dataclasses.replace(self, **own)

    def override_text(self, assignments: Sequence[str]) -> Self:
        """:meth:`override` from ``FIELD=VALUE`` strings (``--set train.lr=3e-4``), each
        value read as its field's declared type (bool, int, float, str, a ``Literal``'s
        choice, ``none`` where None is allowed). ``ValueError`` naming the assignment
        for an unknown field, a value of the wrong type, or one the configuration
        refuses."""
        names = [n for n in self.field_names() if n not in self.derived]
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            if key in self.derived:
                raise ValueError(f"--set {assignment!r}: {key} is set by {self.derived[key]}")
            if not sep or key not in names:
                raise ValueError(
                    f"--set {assignment!r}: expected FIELD=VALUE, FIELD one of {', '.join(names)}"
                )
            kind = field_type(self, key)
            try:
                changes[key] = _parse(text, kind)
            except (KeyError, ValueError, StopIteration):
                raise ValueError(f"--set {assignment!r}: {key} takes {_type_name(kind)}") from None
        try:
            return self.override(changes)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--set: {error}") from None

    def field_names(self) -> list[str]:
        """Every name :meth:`override` takes."""
        names = [n for n in _field_names(self) if n not in ("model", "train")]
        for part in ("model", "train"):
            names += [f"{part}.{n}" for n in _field_names(self._holder(part))]
        return names

    def _holder(self, part: str) -> Any:
        """What holds the fields of ``part`` ("" for the recipe's own): a dict of
        overrides answers for its configuration class when one is declared."""
        holder = getattr(self, part) if part else self
        if isinstance(holder, dict) and self.model_type is not None:
            return self.model_type
        return holder


def _field_names(obj: Any) -> list[str]:
    return list(obj) if isinstance(obj, dict) else [f.name for f in dataclasses.fields(obj)]


def _parse(text: str, kind: Any) -> Any:
    """``text`` as a value of the type ``kind`` (bool, int, float, str, a Literal, a
    tuple of them written with commas, or one of them or None)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (Union, UnionType) else (kind,)
    if type(None) in options and text.lower() == "none":
        return None
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is tuple:  # tuple[float, float] or tuple[int, ...]
        items, parts = typing.get_args(kind), text.split(",")
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(parts)
        if len(parts) != len(items):
            raise ValueError(f"{len(items)} values")
        return tuple(_parse(part.strip(), item) for part, item in zip(parts, items, strict=True))
    if kind is bool:
        return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
    if kind in (int, float, str):
        return kind(text)
    choices = typing.get_args(kind)  # a Literal
    if text not in choices:
        raise ValueError(f"one of {choices}")
    return text


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        return f"{len(items)} values separated by commas ({', '.join(map(_type_name, items))})"
    return getattr(kind, "__name__", str(kind))


def field_type(recipe: Recipe[Any], key: str) -> Any:
    """The declared type of field ``key`` (as :meth:`Recipe.override` names it)."""
    part, _, name = key.rpartition(".")
    holder = recipe._holder(part)
    if name not in _field_names(holder):
        raise ValueError(f"unknown recipe field {key!r}; known: {recipe.field_names()}")
    return typing.get_type_hints(holder if isinstance(holder, type) else type(holder))[name]
