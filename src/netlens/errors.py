"""Errors netlens raises on bad input.

Every error carries a one-line message that says what was wrong and what to do; the CLI prints
exactly that line and exits with status 1 (a traceback only with ``NETLENS_DEBUG=1``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NetlensError(Exception):
    """Base class: a user-facing, one-line, actionable error."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class LayerNotFoundError(NetlensError, KeyError):
    """A layer selector matched no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ModelLoadError(NetlensError):
    """A model file could not be turned into a module."""


class UnsafeModelError(ModelLoadError):
    """Loading would unpickle arbitrary code and ``trust`` was not given."""


class ImageError(NetlensError):
    """An image is missing, empty, corrupt or of an unsupported kind."""


class TargetError(NetlensError):
    """A class target is outside the model's classes."""


class AnalyzerError(NetlensError):
    """An analyzer cannot run on this model, layer or input."""


class PluginError(NetlensError):
    """A plugin could not be loaded or registered."""


class DataError(NetlensError):
    """A dataset is missing or malformed."""


class NetlensWarning(UserWarning):
    """netlens acted on a guess the user should know about (one line; the CLI prints it)."""


def close_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (best first).

    Example:
        >>> close_names("layer4.1.cnv2", ["layer4.1.conv2", "layer4.1.bn2", "fc"])
        ['layer4.1.conv2', 'layer4.1.bn2']
    """
    pool = list(candidates)
    hits = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in pool if name.split(".")[-1] in c][:n]
    return hits


def hint(name: str, candidates: Iterable[str], what: str = "name") -> str:
    """A short ``did you mean ...`` phrase for an unknown ``name`` (empty when nothing is close)."""
    hits = close_names(name, candidates)
    return f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""
