"""Analyzer options, declared once: type, default, range, choices and help.

An analyzer lists its options as :class:`Option` objects; the template base checks what a caller
passes against them (unknown names get close-name hints, values are converted and range-checked,
NaN and negative counts are refused) before the analyzer runs. The CLI and the docs read the same
declarations, so an option means one thing everywhere.

Example:
    >>> TOP = Option("top", 16, "channels to show", int, low=1)
    >>> parse_options("features", (TOP,), {"top": "8"}).top
    8
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import NetlensError, hint

__all__ = ["ALIASES", "MAX_SEED", "Option", "OptionError", "Options", "as_is", "parse_options"]

MAX_SEED = 2**63 - 1  # seeds are 0 .. 2**63 - 1: what torch and numpy generators both take


class OptionError(NetlensError):
    """An analyzer option is unknown or has a value outside what it accepts."""


@dataclass(frozen=True)
class Option:
    """One analyzer option.

    Args:
        name: the keyword (``batch_size``); the CLI spells it ``--batch-size``.
        default: the value when not given (None: "not set").
        help: one line for ``--help`` and docs.
        kind: ``int``, ``float``, ``bool``, ``str``, or a function ``value -> value`` that
            converts (and raises ``ValueError`` with a reason) — used for lists, layers, targets.
        choices: the accepted values of a ``str`` option.
        low, high: inclusive bounds of a number.
        cli: offered on the command line (False: Python only, e.g. functions or dicts).
    """

    name: str
    default: Any = None
    help: str = ""
    kind: type | Callable[[Any], Any] = str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    cli: bool = True

    def check(self, value: Any, owner: str, spelt: str | None = None) -> Any:
        """``value`` converted to this option's kind; one-line :class:`OptionError` if not,
        naming the option as ``spelt`` (the CLI's ``--batch-size``) or by its name."""
        if value is None:
            return None
        label = spelt or self.name
        try:
            got = _convert(self.kind, value)
        except (TypeError, ValueError) as exc:
            why = str(exc) if self.kind not in (int, float, bool) else f"not {_name(self.kind)}"
            shown = f"{label} {value!r}" if spelt else f"{label}={value!r}"
            raise OptionError(f"{owner}: {shown} is {why}") from None
        self._bounds(got, owner, label)
        return got

    def _bounds(self, got: Any, owner: str, label: str) -> None:
        if isinstance(got, float) and math.isnan(got):
            raise OptionError(f"{owner}: {label} must be a number, not NaN")
        if isinstance(got, float) and math.isinf(got):
            raise OptionError(f"{owner}: {label} must be a finite number, not {got}")
        if self.choices is not None and got not in self.choices:
            raise OptionError(
                f"{owner}: {label} must be one of {', '.join(self.choices)}, not "
                f"{got!r}{hint(str(got), self.choices)}"
            )
        if self.low is not None and got < self.low:
            raise OptionError(f"{owner}: {label} must be at least {self.low:g}, got {got}")
        if self.high is not None and got > self.high:
            raise OptionError(f"{owner}: {label} must be at most {self.high:g}, got {got}")


def as_is(value: Any) -> Any:
    """The ``kind`` of an option whose value the analyzer checks itself (layers, targets)."""
    return value


def _name(kind: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true/false"}.get(kind, "valid")


def _convert(kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("not true/false")
            return low in ("true", "1", "yes")
        return bool(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("not a whole number")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("not a number")
        return float(value)
    if kind is str:
        return str(value)
    return kind(value)


class Options(Mapping[str, Any]):
    """Checked option values, read as attributes (``opts.top``) or as a mapping."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Options({self._values!r})"


def parse_options(owner: str, declared: Iterable[Option], given: Mapping[str, Any]) -> Options:
    """Check ``given`` against ``declared``: unknown names refused with hints, defaults filled.

    Dashes in names are accepted (``batch-size`` = ``batch_size``), as the CLI writes them, and
    so are the shared names of :data:`ALIASES` (``top`` for ``k``, ``layer`` for ``layers``,
    ``method`` for ``methods``) where the analyzer has no option of that name itself.
    """
    specs = {o.name: o for o in declared}
    values = _aliased(owner, specs, {k.replace("-", "_"): v for k, v in given.items()})
    unknown = sorted(set(values) - set(specs))
    if unknown:
        known = ", ".join(sorted(specs)) or "none"
        first = unknown[0]
        said = hint(first, specs) or _shared_hint(first, specs)
        raise OptionError(f"{owner} has no option '{first}'{said} (options: {known})")
    return Options(
        {name: spec.check(values.get(name, spec.default), owner) for name, spec in specs.items()}
    )


#: The shared names of the README's one vocabulary (``-k/--top``, ``-l/--layer``,
#: ``-m/--method``), each accepted for an option of the same meaning spelt otherwise: the CLI
#: spells ``k`` as ``--top``, ``layers`` as ``--layer``, ``methods`` as ``--method``, and
#: ``lens.run`` takes the same words.
ALIASES: dict[str, str] = {"top": "k", "layer": "layers", "method": "methods"}


def _aliased(owner: str, specs: Mapping[str, Option], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a shared name given for the option it stands for (``top=2`` → ``k=2``
    where the analyzer has ``k`` and no ``top``); the name and its alias both given (neither
    None: ``lens.ablate`` passes ``layers=None``) is refused in one line."""
    for alias, real in ALIASES.items():
        if alias not in values or alias in specs or real not in specs:
            continue
        value = values.pop(alias)
        if value is None:
            continue
        if values.get(real) is not None:
            raise OptionError(
                f"{owner}: {alias}= and {real}= are the same option ({real}); give one of them, "
                f"not both ({real}={values[real]!r}, {alias}={value!r})"
            )
        values[real] = value
    return values


def _shared_hint(name: str, specs: Mapping[str, Option]) -> str:
    """``; did you mean 'top'?`` for ``k`` given to an analyzer whose option is ``top``."""
    partner = {real: alias for alias, real in ALIASES.items()}.get(name)
    return f"; did you mean '{partner}'?" if partner in specs else ""
