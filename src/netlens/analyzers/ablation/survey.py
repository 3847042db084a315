"""One forward pass that records how each module of a model is called.

For every submodule: how often it ran, the shapes it mapped, and, for the modules that may be
blocks (anything with children, or a module from outside ``torch.nn``), a copy of its first
input and output and its other arguments when none of them is a tensor (a PVT block's
``feat_size``, a CoaT block's ``size``), so residual blocks can be recognised by what they
compute (:mod:`.residual`). Hooks are removed on the way out, also on errors.

A module that returns a tuple or list whose first element is a tensor (Hugging Face Swin and
Data2VecVision layers return ``(hidden_states, attentions or None)``) is recorded by that first
element (:func:`first_tensor`): it is what an ablation replaces, the rest passing on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import AnalyzerError
from ...fresh_input import fresh
from ...write_guard import tensors_in

__all__ = ["Call", "first_tensor", "survey"]


@dataclass
class Call:
    """How a module was called in the surveyed forward.

    Attributes:
        count: how many times it ran.
        shape_in: the shape of its first argument (None: not a tensor).
        shape_out: the shape of its output, or of its first element when it returns a tuple
            or list that starts with a tensor (None: neither).
        tuple_out: it returned such a tuple or list.
        x: a copy of its first input, when that is its only tensor argument and it may be a
            block.
        out: a copy of that call's output (of its first element for a tuple; same condition).
        args, kwargs: its other arguments (same condition; none of them a tensor).
        shapes_out: each call's ``shape_out``, in the order the calls returned.
    """

    count: int = 0
    shape_in: tuple[int, ...] | None = None
    shape_out: tuple[int, ...] | None = None
    tuple_out: bool = False
    x: torch.Tensor | None = None
    out: torch.Tensor | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    shapes_out: list[tuple[int, ...] | None] = field(default_factory=list)


def _may_be_block(module: nn.Module) -> bool:
    """Built-in ``torch.nn`` leaves (convs, norms, activations) are never blocks."""
    leaf = next(module.children(), None) is None
    return not (leaf and type(module).__module__.startswith("torch.nn"))


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def is_tensor_tuple(value: Any) -> bool:
    """A tuple or list (a namedtuple too) whose first element is a tensor."""
    return isinstance(value, (tuple, list)) and bool(value) and isinstance(value[0], torch.Tensor)


def first_tensor(value: Any) -> Any:
    """What an ablation of a unit that returned ``value`` replaces: its first element when it
    is a tuple or list that starts with a tensor, else ``value`` itself."""
    return value[0] if is_tensor_tuple(value) else value


@contextmanager
def _recording(name: str, module: nn.Module, calls: dict[str, Call]) -> Iterator[None]:
    keep = _may_be_block(module)

    def before(m: nn.Module, args: tuple, kwargs: dict) -> None:
        call = calls.setdefault(name, Call())
        call.count += 1
        if call.count == 1:
            call.shape_in = _shape(args[0]) if args else None
            rest = (args[1:], kwargs)
            single = call.shape_in is not None and not tensors_in(rest)
            if keep and single:
                call.x, call.args, call.kwargs = args[0].detach().clone(), *rest

    def after(m: nn.Module, args: tuple, out: Any) -> None:
        call = calls[name]
        call.shapes_out.append(_shape(first_tensor(out)))
        if call.count == 1:
            call.tuple_out = is_tensor_tuple(out)
            first = first_tensor(out)
            call.shape_out = _shape(first)
            call.out = first.detach().clone() if call.x is not None and call.shape_out else None

    pre = module.register_forward_pre_hook(before, with_kwargs=True)
    post = module.register_forward_hook(after)
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def survey(model: nn.Module, x: torch.Tensor) -> dict[str, Call]:
    """Run ``model`` on ``x`` (one image is enough) and record every submodule's calls.

    Modules that did not run have no entry.
    """
    calls: dict[str, Call] = {}
    with ExitStack() as stack, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                stack.enter_context(_recording(name, module, calls))
        try:
            model(fresh(x))
        except Exception as exc:  # noqa: BLE001 - explained to the user in one line
            first = (str(exc).splitlines() or [""])[0][:160]
            raise AnalyzerError(
                f"the model fails on input {tuple(x.shape)} ({type(exc).__name__}: {first}); "
                "check that the data fits the model (image size, channels)"
            ) from exc
    return calls
