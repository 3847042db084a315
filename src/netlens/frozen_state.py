"""Quantization observers held still while netlens runs a model's forwards.

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

__all__ = ["frozen_observers"]

_ABSENT = object()


def _is_ao(m: nn.Module, base: str) -> bool:
    return any(
        c.__name__ == base and c.__module__.startswith("torch.ao.quantization")
        for c in type(m).__mro__
    )


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
