"""The weights a conv or linear layer convolves with, read without running it.

``.weight`` is not always what the layer uses:

- timm's weight-standardised convs (``StdConv2d``/``StdConv2dSame``: BiT ResNetV2, ViT hybrids;
  ``ScaledStdConv2d``/``ScaledStdConv2dSame``: NFNets) standardise each filter in their forward,
  ``(w − mean) / √(var + eps)``, times ``gain × scale`` for the scaled ones: the raw parameter's
  scale is irrelevant to the model.
- ``torch.nn.utils.prune`` (``weight_orig × weight_mask``), the classic
  ``torch.nn.utils.weight_norm`` (``g · v/‖v‖``) and ``spectral_norm`` (``weight_orig / σ``)
  recompute ``.weight`` in a forward pre-hook: until a forward runs (a lens without an input size,
  after ``load_state_dict``) the attribute holds stale values.

:func:`effective_weight` computes them as the layer's own code does (timm's ``F.batch_norm``
call, the hook's ``apply_mask``/``compute_weight``), leaving the module untouched. Parametrized
weights (``torch.nn.utils.parametrizations``) are computed on access and need nothing here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conditional_conv_error", "effective_weight"]

_STD_CONVS = {"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"}


def _std_conv(mod: nn.Module) -> str | None:
    """The timm weight-standardised conv class ``mod`` is (or derives from), if any."""
    for cls in type(mod).__mro__:
        if cls.__name__ in _STD_CONVS and cls.__module__.startswith("timm."):
            return cls.__name__
    return None


def _standardised(mod: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor, str]:
    """timm's standardisation of ``weight``, exactly as its forward computes it."""
    get_weight = getattr(mod, "get_weight", None)
    if callable(get_weight):  # timm ≤ 0.4.9 kept the computation in get_weight()
        return get_weight(), "standardised per filter by the layer's get_weight()"
    gain = getattr(mod, "gain", None)
    scale = getattr(mod, "scale", None)
    affine = None
    if isinstance(gain, torch.Tensor) and scale is not None:
        affine = (gain * scale).view(-1)
    eps = float(getattr(mod, "eps", 1e-6))
    out = F.batch_norm(
        weight.reshape(1, weight.shape[0], -1),
        None,
        None,
        weight=affine,
        training=True,
        momentum=0.0,
        eps=eps,
    ).reshape_as(weight)
    how = f"standardised per filter, (w − mean)/√(var + {eps:g})"
    return out, how + (" × gain × scale (γ/√fan_in)" if affine is not None else "")


def _hooked(mod: nn.Module, name: str = "weight") -> tuple[torch.Tensor, str] | None:
    """The value the last forward pre-hook that sets ``mod.<name>`` would set, if any."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = None
    for hook in mod._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            found = hook.apply_mask(mod), f"pruned: {name}_orig × {name}_mask"
        elif isinstance(hook, WeightNorm) and hook.name == name:
            found = hook.compute_weight(mod), f"weight_norm: g · v/‖v‖ (dim {hook.dim})"
        elif isinstance(hook, SpectralNorm) and hook.name == name:  # eval: no power iteration
            found = hook.compute_weight(mod, False), f"spectral_norm: {name}_orig / σ"
    return found


def effective_weight(mod: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The weight ``mod`` convolves with (``weight`` is its ``.weight``) and how it was derived
    (None: ``.weight`` as it is)."""
    how = None
    with torch.no_grad():
        hooked = _hooked(mod)
        if hooked is not None:
            weight, how = hooked
        if _std_conv(mod) and weight.dim() == 4:
            weight, std = _standardised(mod, weight)
            how = std if how is None else f"{how}, then {std}"
    return weight.detach(), how


def conditional_conv_error(mod: nn.Module, name: str, weight: Any) -> str | None:
    """Why a conv-like layer with a 2-D weight (timm's ``CondConv2d``: one row per expert) has no
    filters of its own to draw; None for other layers."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    if not hasattr(mod, "kernel_size") or isinstance(mod, nn.Linear):
        return None
    experts = getattr(mod, "num_experts", None)
    mix = f"its {experts} experts'" if experts else "several"
    return (
        f"layer '{name}' ({type(mod).__name__}) is a conditional conv: each input convolves with "
        f"its own mix of {mix} filters, weighted by routing weights computed from that input, so "
        "it has no single set of filters to draw; pick a plain Conv2d (see `netlens layers MODEL`)"
    )
