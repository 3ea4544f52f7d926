"""Configs are dataclasses that validate themselves and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class for experiment configs.

    Subclasses are ``@dataclass`` es that override :meth:`validate` and raise ``ValueError``
    with a message naming the field, the value given and what is allowed.
    """

    #: Fields added after runs were written, each with the value those older runs used
    #: implicitly (not necessarily today's default): a run folder whose ``config.json``
    #: lacks the field is read as having that value (:meth:`RunDir.claim`).
    ADDED_FIELDS: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; raise ``ValueError`` on bad input."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def added_fields(self) -> dict[str, Any]:
        """:attr:`ADDED_FIELDS` of this config and of its nested configs, by dotted name."""
        out = dict(self.ADDED_FIELDS)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Config):
                out.update({f"{field.name}.{k}": v for k, v in value.added_fields().items()})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; allowed fields are {sorted(names)}"
            )
        hints = _field_types(cls)
        return cls(**{k: _build(hints.get(k), v) for k, v in data.items()})

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: leave values as they are
        return {}


def _build(tp: Any, value: Any) -> Any:
    """Build nested configs from dicts and tuples from JSON lists, following the type hints."""
    if tp is None:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and issubclass(arg, Config) and isinstance(value, dict):
                return arg.from_dict(value)
        if isinstance(value, list) and any(typing.get_origin(a) is tuple
                                           for a in typing.get_args(tp)):
            return tuple(value)
        return value
    if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, dict):
        return tp.from_dict(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value
