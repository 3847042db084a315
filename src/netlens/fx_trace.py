"""``torch.fx`` tracing that leaves the process's other threads alone.

While :meth:`torch.fx.Tracer.trace` runs it patches ``nn.Module.__call__`` and
``nn.Module.__getattr__`` on the class, for every thread: a plain forward of an unrelated model in
another thread (a web service's inference thread, a notebook's background job) is routed into
the tracer, which cannot find that model's modules in the one it traces and raises
``NameError: module is not installed as a submodule``. :class:`Tracer` (every tracer netlens
uses derives from it) acts only in the thread that started the trace: elsewhere a module call
just runs the module (``forward(*args, **kwargs)``, which is the unpatched ``Module.__call__``,
hooks included) and an attribute read returns the attribute. Subclasses' own ``call_module``
and ``getattr`` are guarded the same way, so they never see another thread's calls.

What torch patches besides is harmless elsewhere: the functions it wraps (``torch.fx.wrap``,
``math`` functions found in a traced module's globals) record a node only when an argument is
a proxy, which another thread's tensors never are, and otherwise call the function itself.

netlens' traces are serialised (one at a time in the process, re-entrant in a thread): two
traces at once in two threads would each see the other's patch on ``Module.__call__``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import nn

__all__ = ["Tracer", "fuse", "symbolic_trace"]

_ONE_AT_A_TIME = threading.RLock()


def _guard_call_module(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call_module(
        self: Tracer, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        if not self.tracing_here():
            return forward(*args, **kwargs)  # another thread's plain forward: just run it
        return fn(self, m, forward, args, kwargs)

    call_module._thread_guarded = True  # type: ignore[attr-defined]
    return call_module


def _guard_getattr(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def getattr_(self: Tracer, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if not self.tracing_here():
            return attr_val  # another thread's attribute read: the attribute itself
        return fn(self, attr, attr_val, parameter_proxy_cache)

    getattr_._thread_guarded = True  # type: ignore[attr-defined]
    return getattr_


_GUARDS = {"call_module": _guard_call_module, "getattr": _guard_getattr}


class Tracer(fx.Tracer):
    """:class:`torch.fx.Tracer` whose module-call and attribute hooks act only in the thread
    that runs :meth:`trace` (see the module doc); otherwise the same tracer."""

    _owner: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, guard in _GUARDS.items():
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_thread_guarded", False):
                setattr(cls, name, guard(fn))

    def tracing_here(self) -> bool:
        """Whether this tracer is tracing, in the calling thread."""
        return self._owner is not None and self._owner == threading.get_ident()

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        with _ONE_AT_A_TIME:
            owner, self._owner = self._owner, threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._owner = owner


Tracer.call_module = _guard_call_module(fx.Tracer.call_module)  # type: ignore[method-assign]
Tracer.getattr = _guard_getattr(fx.Tracer.getattr)  # type: ignore[method-assign]


def symbolic_trace(root: nn.Module) -> fx.GraphModule:
    """:func:`torch.fx.symbolic_trace` with :class:`Tracer`: the same GraphModule (class name,
    graph, lazy or not), made without disturbing other threads."""
    tracer = Tracer()
    graph = tracer.trace(root)
    name = type(root).__name__
    try:
        from torch.fx._lazy_graph_module import _make_graph_module
    except ImportError:  # pragma: no cover - an older torch: a plain GraphModule
        return fx.GraphModule(tracer.root, graph, name)
    return _make_graph_module(tracer.root, graph, name)


def fuse(model: nn.Module) -> fx.GraphModule:
    """:func:`torch.fx.experimental.optimization.fuse` (conv+BN and linear+BN folded, on a deep
    copy: ``model`` is left alone), the copy traced with :class:`Tracer`."""
    import copy

    from torch.fx.experimental.optimization import fuse as torch_fuse

    traced = symbolic_trace(copy.deepcopy(model))
    return torch_fuse(traced, inplace=True, no_trace=True)  # type: ignore[return-value]
