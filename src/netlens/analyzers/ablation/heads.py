"""Which modules are a model's output heads, and which the explained output depends on.

A multi-head model (MTCNN's O-Net: a classifier, a box regressor and a landmark regressor side
by side) declares its heads in any order; leaving out "the last Linear" as the classifier
ablated O-Net's real classifier (the head of the explained output) and its box head, which the
explained output does not read (a drop of exactly 0, read as "useless"). :func:`output_heads`
finds them from one forward's autograd graph instead: a module is the head of an output when
that output is the module's own output, or is made from it by operations that only reshape or
squash it (views, a softmax, a sigmoid, a log-softmax; weightless modules such as
``nn.Softmax`` are looked through).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ...output_reader import _VIEWS

__all__ = ["Heads", "output_heads"]

# one tensor in, the same values reshaped or squashed, out: output_reader's views, and squashes
_PASSIVE = _VIEWS | {"SoftmaxBackward0", "LogSoftmaxBackward0", "SigmoidBackward0"}


class Heads:
    """``heads``: names of the modules that make each of the model's outputs; ``needed``: the
    modules whose output the explained output depends on (None: not known)."""

    def __init__(self, heads: set[str], needed: set[str] | None) -> None:
        self.heads, self.needed = heads, needed


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def _reachable(fn: Any) -> set[Any]:
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(g for g, _ in getattr(f, "next_functions", ()))
    return seen


def output_heads(
    model: nn.Module, x: torch.Tensor, read: Callable[[Any], torch.Tensor] | None = None
) -> Heads:
    """The heads of the model's outputs (see the module doc) from one forward of ``x`` with
    autograd; with ``read`` (raw output → the explained tensor), the modules that output
    depends on. Nothing is found (empty heads) when the forward fails or has no graph."""
    made: dict[Any, list[str]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            for t in _tensors(out):  # a block returning a tuple (Hugging Face's) or a dict
                if t.grad_fn is not None:
                    made.setdefault(t.grad_fn, []).append(name)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        probe = x.detach().clone()
        if probe.is_floating_point():
            probe.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            raw = model(probe)
            explained = read(raw) if read is not None else None
    except Exception:  # noqa: BLE001 - not this check's to report: the study's forward will
        return Heads(set(), None)
    finally:
        for h in handles:
            h.remove()
    weighted = {n for n, m in model.named_modules() if next(m.parameters(), None) is not None}
    heads: set[str] = set()
    for t in _tensors(raw):
        fn = t.grad_fn
        while fn is not None:
            owners = [n for n in made.get(fn, ()) if n in weighted]
            if owners:  # a weightless module (nn.Softmax) is looked through
                heads.update(owners)
                break
            if type(fn).__name__ not in _PASSIVE or not fn.next_functions:
                break
            fn = fn.next_functions[0][0]
    needed = None
    if explained is not None and explained.grad_fn is not None:
        seen = _reachable(explained.grad_fn)
        needed = {n for fn, names in made.items() if fn in seen for n in names}
    return Heads(heads, needed)
