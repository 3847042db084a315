"""Trace a model for the cached-prefix engine, with its units as ``torch.fx`` leaf modules.

The model is first traced as it is (only the units, and torch's own layers, are leaves). When
that fails (data-dependent control flow: ``if x.shape[-1] != w:`` inside one block), the module
whose ``forward`` raised is made a leaf too, and so is every module that neither is a unit nor
holds one, and the model is traced again; this repeats for each module that still fails. A leaf
runs its own ``forward`` on the real tensors when the graph runs, so its values are the eager
model's; only the units inside a module that failed lose the cached path (they are not nodes of
the graph, so the engine sends them to the naive path). A failure outside every module (in the
model's own ``forward``) or a module that fails again gives up: the whole model runs naive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from ...fx_trace import Tracer

__all__ = ["Traced", "UnitTracer", "trace_units"]

MAX_RETRIES = 32  # modules made leaves before giving up (each retry traces the model again)


def describe(exc: BaseException) -> str:
    """One short line for a tracing failure."""
    lines = str(exc).splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:120]}"


class UnitTracer(Tracer):
    """An fx tracer with the units (dotted names) as leaves.

    Args:
        model: the module traced (to find the units' module objects).
        leaves: the units' dotted names.
        untraced: modules that failed to trace, run as they are.
        wrap: also run as they are every module that neither is a unit nor holds one.
    """

    def __init__(
        self,
        model: nn.Module,
        leaves: set[str],
        untraced: frozenset[str] = frozenset(),
        wrap: bool = False,
    ) -> None:
        super().__init__()
        self.leaves = leaves
        self.untraced = untraced
        self.wrap = wrap
        self._unit_ids = {id(model.get_submodule(u)) for u in leaves}
        self._holds: dict[int, bool] = {}
        self.failure: tuple[BaseException, str] | None = None  # (error, innermost traced module)

    def _holds_unit(self, m: nn.Module) -> bool:
        if id(m) not in self._holds:
            self._holds[id(m)] = any(id(s) in self._unit_ids for s in m.modules())
        return self._holds[id(m)]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves or qualname in self.untraced:
            return True
        if super().is_leaf_module(m, qualname):
            return True
        return self.wrap and bool(qualname) and not self._holds_unit(m)

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # the innermost module traced through (not a leaf: a leaf's failure is its caller's)
            if self.failure is None or self.failure[0] is not exc:
                name = self._traced_name(m)
                if name:
                    self.failure = (exc, name)
            raise

    def _traced_name(self, m: nn.Module) -> str | None:
        try:
            name = self.path_of_module(m)
        except Exception:  # noqa: BLE001 - a module not in the model: no name to make a leaf
            return None
        return None if self.is_leaf_module(m, name) else name


@dataclass
class Traced:
    """A trace's outcome: the graph (None: the model does not trace), why not, and the modules
    that run as they are because they failed to trace (name → error)."""

    graph: fx.GraphModule | None
    error: str | None = None
    untraced: dict[str, str] = field(default_factory=dict)


def trace_units(model: nn.Module, units: list[str], tracer: type = UnitTracer) -> Traced:
    """Trace ``model`` with ``units`` as leaves, making modules that fail to trace leaves too."""
    untraced: dict[str, str] = {}
    error = "the model does not trace"
    for _ in range(MAX_RETRIES + 1):
        t = tracer(model, set(units), frozenset(untraced), bool(untraced))
        try:
            graph = t.trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the naive path"
            error = describe(exc)
            failure = t.failure
            if failure is None or failure[0] is not exc or failure[1] in untraced:
                return Traced(None, error)
            untraced[failure[1]] = error
            continue
        try:
            return Traced(fx.GraphModule(model, graph), None, untraced)
        except Exception as exc:  # noqa: BLE001
            return Traced(None, describe(exc))
    return Traced(None, f"{error} (and {MAX_RETRIES} modules more do not trace)")
