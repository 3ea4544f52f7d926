"""Configs are dataclasses that validate themselves and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class for experiment configs.

    Subclasses are ``@dataclass`` es that override :meth:`validate` and raise ``ValueError``
    with a message naming the field, the value given and what is allowed.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; raise ``ValueError`` on bad input."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))
