"""``:consumed`` selections: a module's output as the code after it reads it.

Some models rewrite a module's output in place outside any module: torchvision's DenseNet runs
``F.relu(features, inplace=True)`` in its ``forward``, so the ``features`` output a hook sees is
pre-activation while the head reads the post-activation tensor, which no module returns.

:class:`ConsumeWatch` is a ``TorchFunctionMode`` (it sits above autograd) that follows the
selected output through the torch calls after its module returned. In-place writes into it
(``relu_``, ``+=``, ``inplace=True``, ``out=``, ``x[i] = ...``) and metadata queries (``.shape``,
``.dim()``) let it pass; the first other call that reads it is the *consumption*: the value is
stored then. With gradients, that call and every later one get a substitute that hangs off a
leaf of the consumed value, so ``autograd.grad`` with respect to the leaf is the gradient with
respect to the tensor as consumed. Views count as reads (``x.flatten(1)`` consumes ``x``).

torch keeps its function-mode stack per thread: the watch sees only the calls of the thread that
entered it (the probe's, whose hooks do nothing in other threads' forwards), and it must be
stopped in that thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import get_ident
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .call_output import CallOutput
from .errors import NetlensError

__all__ = ["ConsumeWatch", "consume", "settle"]

_META_CALLS = frozenset(
    {
        "size", "dim", "stride", "numel", "nelement", "ndimension", "is_contiguous",
        "element_size", "storage_offset", "is_floating_point", "is_complex", "get_device",
        "data_ptr", "untyped_storage", "has_names", "is_pinned", "is_shared", "is_inference",
        "__len__", "__hash__", "__repr__", "__format__",
    }
)  # fmt: skip
_META_ATTRS = frozenset(
    {
        "shape", "dtype", "device", "layout", "ndim", "names", "requires_grad", "is_leaf",
        "grad_fn", "grad", "output_nr", "_version", "is_cuda", "is_cpu", "is_meta", "is_mps",
        "is_sparse", "is_quantized", "is_nested",
    }
)  # fmt: skip
_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
        "lshift", "rshift", "matmul",
    )
)  # fmt: skip


def _is_metadata(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _META_ATTRS
    return name in _META_CALLS or name in _TESTS


# tests of the values (a mask for an in-place rewrite: ``y[y < 0] = 0``, ``masked_fill_(y > t)``;
# an ``isfinite`` check): reads that do not consume the tensor, which the next layer reads after
_TESTS = frozenset(
    f"{p}{op}{s}"
    for op in ("lt", "le", "gt", "ge", "eq", "ne")
    for p, s in (("", ""), ("__", "__"))
) | {"isfinite", "isnan", "isinf", "isposinf", "isneginf"}


def _walk(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _walk(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _walk(o)


def _swap(obj: Any, subs: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    if isinstance(obj, torch.Tensor):
        hit = subs.get(id(obj))
        return hit[1] if hit is not None and hit[0] is obj else obj
    if isinstance(obj, list):
        return [_swap(o, subs) for o in obj]
    if isinstance(obj, tuple):
        items = [_swap(o, subs) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, dict):
        return {k: _swap(v, subs) for k, v in obj.items()}
    return obj


OnRead = Callable[[torch.Tensor], "torch.Tensor | None"]


class ConsumeWatch(TorchFunctionMode):
    """Calls ``on_read(tensor)`` at each watched tensor's first read (see module docstring).

    A tensor ``on_read`` returns replaces the watched one in that call and every later call.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[int, tuple[torch.Tensor, list[OnRead]]] = {}
        self._subs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inplace_pos: dict[Any, int | None] = {}
        self._paused = False
        self.active = False
        self._thread = 0  # the thread whose function-mode stack holds the mode

    # -- lifecycle -------------------------------------------------------------------------
    def watch(self, tensor: torch.Tensor, on_read: OnRead) -> None:
        """Follow ``tensor`` (a module's output) until later code first reads it."""
        self._pending.setdefault(id(tensor), (tensor, []))[1].append(on_read)
        if not self.active:
            self.__enter__()
            self.active = True
            self._thread = get_ident()

    def finish(self) -> None:
        """End of the forward: outputs never read are handed over as they are; stop watching."""
        pending = list(self._pending.values())
        self._pending.clear()
        with self.paused():
            for tensor, callbacks in pending:
                for on_read in callbacks:
                    on_read(tensor)
        self._subs.clear()
        self.stop()

    def stop(self) -> None:
        """Leave the mode (it must be the innermost torch function mode)."""
        if not self.active:
            return
        if get_ident() != self._thread:  # torch's mode stacks are per thread
            raise NetlensError(
                "a probe was closed in another thread than the one that ran the model in it; "
                "close it (leave its with block) in that thread"
            )
        n = torch._C._len_torch_function_stack()
        if n == 0 or torch._C._get_function_stack_at(n - 1) is not self:
            raise NetlensError(
                "a torch function mode entered inside the probe is still active; exit it "
                "before the probe ends"
            )
        self.active = False
        self.__exit__(None, None, None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The probe's own tensor calls (in hooks) are not reads of the model's code."""
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    # -- the mode --------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if (self._pending or self._subs) and not self._paused:
            args, kwargs = self._visit(func, args, kwargs)
        return func(*args, **kwargs)

    def _visit(self, func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hits = [t for t in _walk((args, kwargs)) if id(t) in self._pending]
        if hits and not _is_metadata(func):
            written = self._written(func, args, kwargs)
            for t in hits:
                entry = self._pending.get(id(t))
                if entry is not None and entry[0] is t and id(t) not in written:
                    del self._pending[id(t)]
                    self._read(t, entry[1])
        if self._subs and any(id(t) in self._subs for t in _walk((args, kwargs))):
            return _swap(args, self._subs), _swap(kwargs, self._subs)
        return args, kwargs

    def _read(self, tensor: torch.Tensor, callbacks: list[OnRead]) -> None:
        with self.paused():
            subs = [on_read(tensor) for on_read in callbacks]
        sub = next((s for s in reversed(subs) if s is not None), None)
        if sub is not None:
            self._subs[id(tensor)] = (tensor, sub)

    def _written(self, func: Any, args: tuple, kwargs: dict) -> set[int]:
        """ids of the tensors this call writes in place."""
        name = getattr(func, "__name__", "")
        first = args[0] if args else kwargs.get("input", kwargs.get("self"))
        out = {id(t) for t in _walk(kwargs.get("out"))}
        inplace = name == "__setitem__" or name in _INPLACE_DUNDERS
        inplace = inplace or (name.endswith("_") and not name.endswith("__"))
        if not inplace and kwargs.get("inplace") is True:
            inplace = True
        if not inplace:
            pos = self._inplace_index(func)
            inplace = pos is not None and len(args) > pos and args[pos] is True
        if inplace and isinstance(first, torch.Tensor):
            out.add(id(first))
        return out

    def _inplace_index(self, func: Any) -> int | None:
        if func not in self._inplace_pos:
            try:
                params = list(inspect.signature(func).parameters)
            except (TypeError, ValueError):
                params = []
            self._inplace_pos[func] = params.index("inplace") if "inplace" in params else None
        return self._inplace_pos[func]


def consume(
    t: torch.Tensor, grads: bool, to: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(value to store, gradient node or None) for a tensor at its consumption.

    With ``grads`` (and grad mode on) the node is ``t`` itself when it is in the graph, else a
    leaf on its value; later code must then run on ``node.clone()`` so that its in-place writes
    leave the node as it was read.
    """
    if grads and torch.is_grad_enabled() and t.is_floating_point():
        node = t if t.requires_grad else t.detach().requires_grad_(True)
        return node, node
    v = t.detach()
    return (v.to(to) if to is not None and v.device != to else v.clone()), None


def settle(entry: CallOutput, to: torch.device | None = None) -> None:
    """Store a still-pending ``:consumed`` output as it is now (read before the forward ended)."""
    if entry.pending is not None:
        entry.value, _ = consume(entry.pending, False, to)
        entry.pending = None
