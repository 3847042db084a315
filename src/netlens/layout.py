"""Channels-last inputs for the models that take them.

On CPU, oneDNN's convolutions run faster on channels-last (NHWC) tensors, with the same values,
so netlens feeds its many forward passes (CAM captures, Score-CAM's masked inputs,
deletion/insertion/ROAD) that way. Not every model takes it: ``x.view(x.size(0), -1)``, in
countless hand-written forwards, raises on a channels-last activation. Such a model runs on
standard-layout inputs, from its first refusal on, for the rest of the process.

Only float32 and float64: a float16 or bfloat16 model's convolutions round differently in
channels-last (a bf16 resnet18 gave 0.5102 there against 0.4958 from the user's own
``model(x)``), so half-precision models run in the layout the user runs them in.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

__all__ = ["run_channels_last", "takes_channels_last"]

T = TypeVar("T")

_REFUSED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_LOCK = threading.Lock()


def run_channels_last(
    model: nn.Module,
    run: Callable[[torch.Tensor], T],
    x: torch.Tensor,
    *,
    again: Callable[[], None] | None = None,
) -> T:
    """``run(x)`` with ``x`` channels-last when ``model`` takes it, else in standard layout.

    A call that raises on channels-last input is run once more on standard-layout input
    (``again()`` first resets what the failed call left behind, such as captured outputs); if
    that works, ``model`` is remembered as refusing channels-last. If it fails too, its error
    (the model's own) is what the caller sees. Batches that are not images (not 4-d) run as
    they are.
    """
    if x.dim() != 4 or _half_precision(model, x):
        return run(x)
    with _LOCK:
        refused = model in _REFUSED
    if refused:
        return run(x.contiguous())
    try:
        return run(x.contiguous(memory_format=torch.channels_last))
    except Exception:
        if again is not None:
            again()
        out = run(x.contiguous())  # raises the model's own error when layout was not the cause
        with _LOCK:
            _REFUSED.add(model)
        return out


_HALF = (torch.float16, torch.bfloat16)


def _half_precision(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the input or the model's first floating-point parameter is float16/bfloat16."""
    if x.dtype in _HALF:
        return True
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return first is not None and first.dtype in _HALF


def takes_channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``model`` runs on a channels-last ``example`` (one no-grad forward in eval mode,
    train/eval flags restored), for callers that must decide before their first real batch."""
    if example.dim() != 4:
        return False
    from .frozen_state import eval_mode

    try:
        with eval_mode(model), torch.no_grad():
            model(example.contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - any refusal means: run it in standard layout
        return False
    return True
