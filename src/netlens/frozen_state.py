"""A model's state held still while netlens runs its forwards: :func:`eval_mode`.

Every module is put in eval mode for the block and gets its own train/eval flag back after,
through its own ``train()`` where its class overrides it (torchvision's feature extractors,
``DualGraphModule``, swap their traced graph there: setting the flag alone left one training
on its eval graph, functional dropout off, and ``model.train()`` could no longer switch back).

Quantization observers are held still too (:func:`frozen_observers`).

``model.eval()`` does not stop torch.ao's observers: a model prepared for quantization-aware
training (``prepare_qat``) or for calibration (``prepare``, ``prepare_fx``, ``prepare_pt2e``)
updates its fake-quant scales and zero points and its observers' min/max (or histograms) on
every forward, eval mode or not. netlens' forwards would then change the user's model (other
logits afterwards, another ``convert()``) and each pass would explain a model that moved since
the last (Score-CAM runs hundreds).

:func:`frozen_observers` holds them for a block:

- a fake-quant module (``FakeQuantizeBase``: ``FakeQuantize``,
  ``FusedMovingAvgObsFakeQuantize``, learnable ones) gets its observer disabled, as
  ``torch.ao.quantization.disable_observer`` does: it still fake-quantizes, with the scale and
  zero point it has; its ``observer_enabled`` flag is restored after;
- an observer (``ObserverBase``) is an identity on its input that records statistics: for the
  block its forward returns the input without recording anything.

The classes are told by name in the MRO (importing ``torch.ao.quantization`` costs time and a
plain model has none of them). Re-entrant: an analysis run inside another (sanity runs cam)
saves and restores the state the outer one set.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["eval_mode", "frozen_observers", "is_observer", "restore_flags"]

_ABSENT = object()


def _is_ao(m: nn.Module, base: str) -> bool:
    return any(
        c.__name__ == base and c.__module__.startswith("torch.ao.quantization")
        for c in type(m).__mro__
    )


def is_observer(m: nn.Module) -> bool:
    """A torch.ao fake-quant module or observer: it passes a tensor through (a layer's weight,
    for weight fake-quant), so its output is no map of the images."""
    return _is_ao(m, "FakeQuantizeBase") or _is_ao(m, "ObserverBase")


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    """An observer's forward for the block: its input, unrecorded."""
    return x


@contextmanager
def frozen_observers(model: nn.Module):  # noqa: ANN201
    """For the block, ``model``'s fake-quant modules do not observe and its observers do not
    record; each one's own state is restored after (bit for bit: no buffer is written)."""
    flags: list[tuple[nn.Module, Any]] = []  # fake-quant modules' observer_enabled values
    forwards: list[tuple[nn.Module, Any]] = []  # observers' own instance forward, if any
    try:
        for m in model.modules():
            if _is_ao(m, "FakeQuantizeBase"):
                flag = getattr(m, "observer_enabled", None)
                if flag is not None and hasattr(flag, "clone"):
                    flags.append((m, flag.clone()))
                    flag.fill_(0)
            elif _is_ao(m, "ObserverBase"):
                forwards.append((m, m.__dict__.get("forward", _ABSENT)))
                m.__dict__["forward"] = _identity
        yield model
    finally:
        for m, saved in flags:
            m.observer_enabled.copy_(saved)
        for m, own in forwards:
            if own is _ABSENT:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = own


@contextmanager
def eval_mode(model: nn.Module):  # noqa: ANN201
    """Put every sub-module in eval mode for the block, then restore each one's own flag
    (:func:`restore_flags`); quantization observers, which eval mode does not stop, are held
    still too (:func:`frozen_observers`)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with frozen_observers(model):
            yield model
    finally:
        restore_flags(flags)


def restore_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    """Each module's train/eval flag as ``flags`` saved it (modules in ``model.modules()``
    order): a module whose class overrides ``train`` has its own ``train(flag)`` called,
    parents before children, then every flag is set as saved."""
    for m, flag in flags:
        if m.training != flag and type(m).train is not nn.Module.train:
            m.train(flag)
    for m, flag in flags:
        m.training = flag
