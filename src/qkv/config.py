"""What every model configuration dataclass shares: to and from a plain dict."""

from __future__ import annotations

import dataclasses
from typing import Any, Self

__all__ = ["ConfigDict"]


class ConfigDict:
    """Mixin for frozen config dataclasses: ``to_dict`` for checkpoints, and a
    ``from_dict`` that refuses unknown keys instead of dropping them silently."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**values)
