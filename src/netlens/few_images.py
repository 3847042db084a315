"""Probe forwards on the fewest images a model takes: one, or two for a model that cannot run
on one (a ``.squeeze()`` before a ``BatchNorm1d``: one image's features lose their batch axis,
and the norm refuses them). Its own data never comes in batches of one, so the analyses must
not probe it with one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import NetlensError

__all__ = ["on_fewest"]

T = TypeVar("T")


def on_fewest(probe: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
    """``probe(x[:1])``; ``probe(x[:2])`` when the model fails on one image (its own error, or
    netlens' line about it) and ``x`` has two. netlens' own refusals pass through."""
    try:
        return probe(x[:1])
    except Exception as exc:
        cause = exc.__cause__
        models = not isinstance(exc, NetlensError) or (
            cause is not None and not isinstance(cause, NetlensError)
        )
        if len(x) < 2 or not models:
            raise
        return probe(x[:2])
