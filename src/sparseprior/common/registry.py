"""One small registry type for every plug-in point (DST policies, compression steps, solvers,
report sections, federated strategies).

A registry maps a name to an object (a class, a function, a spec). Lookups of unknown names raise
``ValueError`` listing what is registered, so the CLI turns them into one clean line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, in registration order.

    >>> POLICIES: Registry[type] = Registry("DST method")
    >>> @POLICIES.register("mine")
    ... class Mine: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name`` (or use as a decorator when ``obj`` is omitted).

        Re-registering a name raises unless ``replace=True`` (tests and notebooks may redefine).
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items and not replace and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered; "
                                 "pass replace=True to redefine it")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from "
                             f"{', '.join(self._items) or '(none registered)'}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def help(self, describe: Callable[[T], str] | None = None) -> str:
        """One line for CLI help: ``"a, b or c"`` (with descriptions when ``describe`` is given)."""
        names = list(self._items)
        if describe is not None:
            names = [f"{n} ({describe(self._items[n])})" for n in names]
        if len(names) <= 1:
            return "".join(names)
        return ", ".join(names[:-1]) + " or " + names[-1]
