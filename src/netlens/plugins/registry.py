"""Registries that hooks add to: a name → item mapping that remembers who added what."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import NetlensError, hint

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item and where it came from."""

    name: str
    item: T
    description: str = ""
    plugin: str = ""
    package: str = ""
    version: str = ""
    builtin: bool = False


@dataclass
class Registry(Generic[T]):
    """Name → item, filled by plugins through a ``netlens_register_*`` hook.

    A name taken already is not replaced: the clash is recorded in ``problems`` (built-ins are
    registered first, so they win unless the user blocks them).
    """

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _source: dict[str, Any] = field(default_factory=dict, repr=False)

    def add(self, name: str, item: T, *, description: str = "") -> None:
        """Register ``item`` under ``name`` (lower-case, dash-separated by convention)."""
        src = self._source
        if name in self.entries:
            first = self.entries[name]
            self.problems.append(
                f"{src.get('package') or src.get('plugin')}: {self.kind} '{name}' is taken by "
                f"{first.package or first.plugin}; skipped"
            )
            return
        doc = description or (getattr(item, "__doc__", None) or "").strip().split("\n")[0]
        self.entries[name] = Entry(name=name, item=item, description=doc, **src)

    def get(self, name: str) -> T:
        """The item called ``name``; an unknown name fails with the close names."""
        try:
            return self.entries[name].item
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise NetlensError(
                f"unknown {self.kind} '{name}'{hint(name, self.entries)} (known: {known})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def items(self) -> list[T]:
        """Items in registration order (third-party loaders before built-in ones)."""
        return [e.item for e in self.entries.values()]
