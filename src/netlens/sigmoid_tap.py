"""A model's final sigmoid explained on its input, the logit z, not read back from p = σ(z).

A model ending in ``nn.Sigmoid`` or ``torch.sigmoid`` outputs p; in float32 p is exactly 1 for
z above about 17 (and 0 below about −104), where σ⁻¹(p) cannot give z back and the sigmoid's own
backward, p (1 − p), is 0. DBNet's text map (PP-OCRv4) had 10 088 of its 12 655 text pixels at
p == 1.0: a region target then saw only the edges of the text lines (Layer-CAM r 0.37 against
the same target on the graph cut before the sigmoid), and Score-CAM's scores were the clamped
σ⁻¹(p) (±16.6) rather than z (up to 89).

:func:`tapped` wraps a forward so that, while it runs, every sigmoid call on the calling thread
(``torch.sigmoid``, ``Tensor.sigmoid``/``sigmoid_``, ``F.sigmoid``, ``torch.special.expit``;
``nn.Sigmoid`` calls ``torch.sigmoid``) is recorded with its input, through a
:class:`torch.overrides.TorchFunctionMode`: nothing is set on the model. :func:`logit_of` gives
the recorded input of the sigmoid call whose output *is* the tensor read (the same object, or a
reshape of it), with its autograd graph, so gradients and masked-pass scores are the model's own
logit z exactly; for any other output (a sigmoid resized or clamped after, or a forward run
without the tap) it gives None and the output is read back as σ⁻¹(p).

Every call whose output is still alive is kept (a forward may run many sigmoids after its
output's own: an aux head's SiLU written as ``x * sigmoid(x)``, SE gates; keeping only the last
8 lost the output's and read a saturated p as σ⁻¹(p), a flat map). An entry is dropped, and
its input z freed, when its output is collected (an intermediate gate's, right after its
multiply in a no-grad masked pass), and all are dropped when the forward returns.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["logit_of", "tapped"]

_local = threading.local()


def _sigmoids() -> frozenset[Any]:
    fns = {torch.sigmoid, torch.Tensor.sigmoid, torch.nn.functional.sigmoid}
    fns |= {torch.special.expit, torch.Tensor.sigmoid_}
    if hasattr(torch, "sigmoid_"):
        fns.add(torch.sigmoid_)
    return frozenset(fns)


_SIGMOIDS = _sigmoids()
_IN_PLACE = frozenset(f for f in (torch.Tensor.sigmoid_, getattr(torch, "sigmoid_", None)) if f)


class _Tap(TorchFunctionMode):
    """Records (output, input) of each sigmoid call made while it is on, for as long as the
    output lives (keyed by the output's id; a weakref's callback drops the entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _SIGMOIDS or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        z = args[0].clone() if func in _IN_PLACE else args[0]  # sigmoid_ overwrites its input
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.shape == z.shape:
            key, calls = id(out), self.calls
            # dropped when out is collected; ``tapped`` clears the rest (and the dict's cycle)
            ref = weakref.ref(
                out, lambda r: calls.pop(key) if calls.get(key, (None,))[0] is r else None
            )
            calls[key] = (ref, z)  # the latest call on this tensor (an in-place one twice)
        return out

    def find(self, t: torch.Tensor) -> torch.Tensor | None:
        """The input of the recorded call whose output is ``t`` itself."""
        entry = self.calls.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None


def tapped(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` run with its sigmoid calls recorded for :func:`logit_of` (on this thread)."""
    if getattr(forward, "_sigmoid_tapped", False):
        return forward

    def run(*args: Any, **kwargs: Any) -> Any:
        stack: list[_Tap] = _local.__dict__.setdefault("taps", [])
        tap = _Tap()
        stack.append(tap)
        try:
            with tap:
                return forward(*args, **kwargs)
        finally:
            stack.remove(tap)
            tap.calls.clear()  # the inputs kept for outputs still alive: freed now

    run._sigmoid_tapped = True  # type: ignore[attr-defined]
    return run


def logit_of(p: torch.Tensor) -> torch.Tensor | None:
    """The input of the recorded sigmoid call whose output is ``p`` (or ``p`` a reshape of
    it), shaped as ``p``; None when no tap recorded one."""
    for tap in reversed(_local.__dict__.get("taps", [])):
        z = tap.find(p)
        if z is not None:
            return z
        base = p._base
        if base is not None and p.numel() == base.numel() and p.is_contiguous():
            z = tap.find(base)
            if z is not None and base.is_contiguous() and z.dtype == p.dtype:
                return z.reshape(p.shape)
    return None
