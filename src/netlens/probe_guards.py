"""Helpers that keep a probe's captures right in less common setups.

- :func:`eager`: a hook that acts only on forwards run by the thread that made it (another
  thread's forward of the same model passes through untouched), and runs eagerly when
  torch.compile (dynamo) traces the forward: traced, the write guard's checks (object ids,
  version counters) would be settled once, at trace time.
- :func:`copy_container`: a shallow copy of a returned list, tuple, dict or dataclass (nested),
  so that a parent that edits the container (``f.append(...)``, ``f.aux = ...``) does not
  change the capture.
- :func:`aliases`: whether a module returned (a view of) one of its inputs.
- :func:`hooks_key`: the hooks on a model, part of the write guard's key: a plan learnt while
  another probe (nested, on the same layers) handed the model copies does not hold without it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from threading import get_ident
from typing import Any

import torch

from .call_output import CallOutput
from .consumed import ConsumeWatch
from .write_guard import _own_storage_key, _storage_keys, tensors_in

__all__ = [
    "ALIAS_WRITTEN",
    "NO_GRAD_INSIDE",
    "EagerConsumeWatch",
    "aliases",
    "copy_container",
    "eager",
    "hooks_key",
    "keep_alias",
    "same",
]

NO_GRAD_INSIDE = (
    "layer '{name}' ran without gradients inside the model's forward: checkpoint with "
    "use_reentrant=True or a no_grad block, through which no gradient to it can be taken; build "
    "the model with use_reentrant=False or without checkpointing (timm: "
    "model.set_grad_checkpointing(False)), or use a gradient-free method: --method scorecam or "
    "ablationcam (method= in Python)"
)
ALIAS_WRITTEN = (
    "layer '{name}' returns (a view of) its input, which the model then overwrites in place, "
    "so no gradient w.r.t. its output can be taken; probe the layer that makes that tensor"
)


def eager(
    fn: Callable[..., Any],
    owner: int | None = None,
    skipped: Callable[[], None] | None = None,
) -> Callable[..., Any]:
    """``fn`` as a hook of the thread ``owner`` (default: the calling thread), run outside
    dynamo's tracing when a compiled forward calls it (a graph break).

    Hooks live on the model's modules, which every thread shares: in a forward run by another
    thread (a web service's ``model(x)`` while this one explains) the hook does nothing and
    returns None, after calling ``skipped()`` (when given: the probe notes it, to say so when
    nothing of its own thread was captured). In eager mode that costs one ``get_ident()``
    comparison and one ``torch.compiler.is_compiling()`` call; the dynamo-disabled wrapper is
    made only while dynamo traces (so torch._dynamo is never imported for it)."""
    mine = get_ident() if owner is None else owner

    def owned(*args: Any, **kwargs: Any) -> Any:
        if get_ident() == mine:
            return fn(*args, **kwargs)
        if skipped is not None:
            skipped()
        return None

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # (the thread is checked eagerly, in owned)
            return torch._dynamo.disable(owned, recursive=True)(*args, **kwargs)
        if get_ident() != mine:
            if skipped is not None:
                skipped()
            return None
        return fn(*args, **kwargs)

    return run


def copy_container(obj: Any, detach: bool, to: torch.device | None) -> Any:
    """``obj``'s lists, tuples (named ones too), dicts and dataclasses copied (shallow, nested)
    with copies of their tensors (detached or still in the graph, moved ``to``); anything else
    kept as is."""

    def tensor(t: torch.Tensor) -> torch.Tensor:
        t = t.detach() if detach else t
        return t.to(to, copy=True) if to is not None else t.clone()

    return _copied(obj, tensor)


def _copied(obj: Any, tensor: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return tensor(obj)
    if isinstance(obj, list):
        return [_copied(o, tensor) for o in obj]
    if isinstance(obj, tuple):
        items = [_copied(o, tensor) for o in obj]
        make = getattr(type(obj), "_make", None)
        try:
            return make(items) if make is not None else type(obj)(items)
        except TypeError:
            return tuple(items)
    if isinstance(obj, dict):
        try:
            out = copy.copy(obj)
        except Exception:  # noqa: BLE001 (a dict subclass that cannot be copied)
            out = dict(obj)
        for k, v in obj.items():
            out[k] = _copied(v, tensor)
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = copy.copy(obj)
        for f in dataclasses.fields(obj):
            if hasattr(obj, f.name):
                object.__setattr__(out, f.name, _copied(getattr(obj, f.name), tensor))
        return out
    return obj


def aliases(output: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
    """Whether ``output`` shares memory with one of ``inputs`` (``nn.Identity``, a view)."""
    key = _own_storage_key(output)
    return key is not None and key in _storage_keys(inputs)


class EagerConsumeWatch(ConsumeWatch):
    """A :class:`~netlens.consumed.ConsumeWatch` whose mode runs eagerly under torch.compile:
    dynamo would otherwise trace it, settling its checks (object ids) at trace time."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if torch.compiler.is_compiling():
            run = torch._dynamo.disable(ConsumeWatch.__torch_function__, recursive=True)
            return run(self, func, types, args, kwargs)
        return ConsumeWatch.__torch_function__(self, func, types, args, kwargs)


def keep_alias(output: torch.Tensor, entries: list[CallOutput], *, grads: bool) -> None:
    """Store an output in the graph that is (a view of) its module's input (``nn.Identity``, an
    in-place activation) where the probe would hand the model a copy (``grads=True``,
    ``detach=False``). (One outside the graph still goes the copy's way: its gradient needs a
    leaf that the model then uses.)

    The model goes on with its own tensor (it may rely on the aliasing: a skip connection that
    holds the same tensor) and the capture is a copy, in the graph. The gradient is the one
    w.r.t. ``output`` itself: refused (when read) if a later in-place op rewrote it.
    """
    value = output.clone()
    node = output if grads else None
    for e in entries:
        e.value, e.node, e.version = value, node, output._version


def same(a: Any, b: Any) -> bool:
    """Whether two outputs hold equal tensors (a re-run forward's against the first)."""
    ta, tb = tensors_in(a), tensors_in(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb, strict=True)
    )


def hooks_key(modules: list[torch.nn.Module]) -> tuple:
    """The forward hooks and pre-hooks on ``modules`` (and the global ones), by id.

    Hooks can replace outputs: a nested probe with ``grads=True`` hands the model a copy of a
    layer's output, so the in-place ops after it write into the copy, and a write guard that
    learnt its plan then would later alias an output those ops overwrite. Keyed by the hooks,
    the plan is relearnt whenever they change."""
    from torch.nn.modules import module as torch_module

    return (
        tuple(torch_module._global_forward_hooks),
        tuple(torch_module._global_forward_pre_hooks),
        tuple((tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in modules),
    )
