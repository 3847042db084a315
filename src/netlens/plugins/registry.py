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
    registered first, so they win unless the user blocks them). The host hands each plugin a
    :meth:`scoped` view, so every entry records which plugin and package added it.
    """

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # plugins that failed to load or register

    def add(self, name: str, item: T, *, description: str = "") -> None:
        """Register ``item`` under ``name`` (lower-case, dash-separated by convention)."""
        self._add(name, item, description, {})

    def scoped(self, **source: Any) -> ScopedRegistry[T]:
        """The view one plugin adds through: ``plugin``, ``package``, ``version``, ``builtin``."""
        return ScopedRegistry(self, source)

    def _add(self, name: str, item: T, description: str, source: dict[str, Any]) -> None:
        if name in self.entries:
            first = self.entries[name]
            self.problems.append(
                f"{source.get('package') or source.get('plugin')}: {self.kind} '{name}' is taken "
                f"by {first.package or first.plugin}; skipped"
            )
            return
        who = source.get("package") or source.get("plugin") or "unknown plugin"
        if self.kind == "analyzer" and not source.get("builtin"):
            from .checks import analyzer_problems

            refused, notes = analyzer_problems(name, item, who)
            self.problems.extend(notes)
            if refused:
                self.problems.append(refused)
                return
        if self.kind == "command" and not source.get("builtin"):
            from .checks import command_names

            if name in command_names():
                self.problems.append(
                    f"{who}: command '{name}' is netlens' own command, which stays; skipped"
                )
                return
        doc = description or (getattr(item, "__doc__", None) or "").strip().split("\n")[0]
        self.entries[name] = Entry(name=name, item=item, description=doc, **source)

    def get(self, name: str) -> T:
        """The item called ``name``; an unknown name fails with the close names."""
        try:
            return self.entries[name].item
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            broken = (  # the one asked for may be among them
                f"; {len(self.broken)} plugin(s) failed to load, e.g. {self.broken[0][:160]} "
                "(`netlens plugins` lists them)"
                if self.broken
                else ""
            )
            raise NetlensError(
                f"unknown {self.kind} '{name}'{hint(name, self.entries)} (known: {known}){broken}"
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


@dataclass(frozen=True)
class ScopedRegistry(Generic[T]):
    """What a plugin's hook is handed: ``add`` records the plugin as the entry's source."""

    registry: Registry[T]
    source: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.registry.kind

    def add(self, name: str, item: T, *, description: str = "") -> None:
        """Register ``item`` under ``name`` (see :meth:`Registry.add`)."""
        self.registry._add(name, item, description, self.source)

    def __contains__(self, name: object) -> bool:
        return name in self.registry
