"""A forward hook on one selected call of a module (``act@1``, ``features:consumed``).

For code that changes what a layer passes on — ablation, Ablation-CAM, masking — when the layer
is a call of a module that runs several times, or an output rewritten in place after its module
returned (see ``docs/layers.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import get_ident
from typing import Any

import torch
from torch import nn

from .errors import LayerNotFoundError
from .layer_call import LayerCall
from .layers import resolve_layers, trace_calls
from .probe_guards import EagerConsumeWatch, eager

__all__ = ["hook_call"]

Hook = Callable[[Any], Any]


@contextmanager
def hook_call(
    model: nn.Module,
    layer: str | LayerCall,
    hook: Hook,
    *,
    example: torch.Tensor | None = None,
) -> Iterator[None]:
    """Call ``hook(output)`` on the selected call(s) only, in every forward of ``model``.

    A tensor ``hook`` returns replaces the output for the rest of the forward (as a forward hook
    that returns a value does). For ``NAME:consumed`` the hook sees the output as the next
    reader gets it and its return value is what that reader (and every later one) gets. A bare
    name hooks every call; ``@-k`` is resolved with one dry forward on ``example``. Calls are
    counted per forward of ``model``. The hooks act only on forwards run by the thread that
    entered the block (another thread's forwards of ``model`` run as if unhooked). The hooks
    are removed on exit, also on errors.

    Example:
        >>> zero3 = lambda out: out.index_fill(1, torch.tensor([3]), 0.0)
        >>> with hook_call(model, "act@1", zero3):
        ...     logits = model(x)
    """
    sel, call = _one_call(model, layer, example)
    watch = EagerConsumeWatch() if sel.consumed else None
    seen = [0]

    def begin(module: nn.Module, args: Any) -> None:
        seen[0] = 0
        if watch is not None:
            watch.finish()

    def on_call(module: nn.Module, args: Any, output: Any) -> Any:
        k, seen[0] = seen[0], seen[0] + 1
        if call is not None and k != call:
            return None
        if watch is None or not isinstance(output, torch.Tensor):
            return hook(output)
        with watch.paused():
            watch.watch(output, hook)
        return None

    def end(module: nn.Module, args: Any, output: Any) -> None:
        if watch is not None:
            watch.finish()

    target = dict(model.named_modules())[sel.name]
    owner = get_ident()  # eager: only this thread's forwards, run as such under torch.compile
    handles = [
        model.register_forward_pre_hook(eager(begin, owner)),
        target.register_forward_hook(eager(on_call, owner)),
        model.register_forward_hook(eager(end, owner)),
    ]
    try:
        yield
    finally:
        try:
            if watch is not None:
                watch.finish()
        finally:
            for h in handles:
                h.remove()


def _one_call(
    model: nn.Module, layer: str | LayerCall, example: torch.Tensor | None
) -> tuple[LayerCall, int | None]:
    """The one selected layer and its call counted from the start (None: every call)."""
    selected = resolve_layers(model, layer, example=example)
    if len(selected) != 1:
        raise LayerNotFoundError(
            f"hook_call takes one layer; '{layer}' selects {len(selected)} "
            f"({', '.join(selected[:4])}{', ...' if len(selected) > 4 else ''})"
        )
    sel = selected[0]
    call = sel.call
    if call is not None and call < 0:
        calls = sum(1 for c in trace_calls(model, example) if c.name == sel.name)
        if calls + call < 0:
            raise LayerNotFoundError(
                f"layer '{sel.name}' runs {calls} time(s) per forward; '{sel}' does not exist"
            )
        call += calls
    return sel, call
