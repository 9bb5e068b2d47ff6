"""What every configuration dataclass shares: to and from a plain dict, and the checks.

A configuration (``TransformerConfig``, ``BertConfig``, ``ViTConfig``, ``TrainConfig``)
is a frozen dataclass. Its ``__post_init__`` calls :meth:`ConfigDict.check` with the
names of its sizes and probabilities, then adds the checks only it needs. Every field
typed with ``Literal[...]`` is checked against that type's values, read from the type
itself with :func:`typing.get_args`, so a choice cannot drift from its check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

__all__ = ["ConfigDict", "literal_choices"]


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` type (also inside ``X | None``), else ``None``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    nested = [literal_choices(arg) for arg in get_args(annotation)]
    values = [v for choices in nested if choices for v in choices]
    return tuple(values) if values else None


@functools.cache
def _choices_of(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        choices = literal_choices(hints[f.name])
        if choices is not None:
            found[f.name] = choices
    return found


@functools.cache
def _optional_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(
        f.name for f in dataclasses.fields(cls) if type(None) in get_args(hints[f.name])
    )


class ConfigDict:
    """Mixin for frozen config dataclasses: ``to_dict`` for checkpoints, a
    ``from_dict`` that refuses unknown keys instead of dropping them silently, and
    the value checks every configuration makes."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    def check(
        self,
        *,
        positive: Iterable[str] = (),
        probabilities: Iterable[str] = (),
        heads: tuple[str, str] | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the field and its value when

        - a field in ``positive`` is not > 0, or is infinite (``None`` passes: "not set");
        - a field in ``probabilities`` is not in [0, 1) (``None`` passes);
        - ``heads = (num_heads, width)`` and the first does not divide the second;
        - a ``Literal``-typed field holds a value its type does not list.
        """
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                optional = " or None" if name in _optional_fields(type(self)) else ""
                raise ValueError(f"{name} must be positive{optional}, got {value}")
            if value is not None and math.isinf(value):
                raise ValueError(f"{name} must be finite, got {value}")
        for name in probabilities:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if heads is not None:
            num_heads, width = (getattr(self, name) for name in heads)
            if width % num_heads != 0:
                raise ValueError(f"{heads[0]} ({num_heads}) must divide {heads[1]} ({width})")
        for name, choices in _choices_of(type(self)).items():
            value = getattr(self, name)
            if value not in choices:
                listed = [repr(c) for c in choices]
                wanted = " or ".join(
                    [", ".join(listed[:-1]), listed[-1]] if listed[:-1] else listed
                )
                raise ValueError(f"{name} must be {wanted}, got {value!r}")
