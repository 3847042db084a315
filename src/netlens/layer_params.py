"""Columns of the layer table (:func:`netlens.layers.layer_table`): parameter counts,
quantized layers included, and how netlens reads each call's output (NCHW, NHWC, NLC, NCL).

A statically or dynamically quantized layer (``torch.ao.nn.quantized``: Conv2d, Linear, ...)
keeps its weight and bias packed, outside ``parameters()``; they are read through its
``weight()``/``bias()`` methods and count as frozen (not trainable).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["layout_name", "param_counts"]


def _packed(mod: nn.Module) -> int:
    """How many weights ``mod`` holds packed (a quantized layer), 0 for other modules."""
    if not type(mod).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")):
        return 0
    n = 0
    for attr in ("weight", "bias"):
        get = getattr(mod, attr, None)
        if not callable(get) or isinstance(get, torch.Tensor):
            continue  # a float parameter (quantized LayerNorm, BatchNorm): parameters() has it
        try:
            value = get()
        except Exception:  # noqa: BLE001 - not a packed-weight accessor after all
            continue
        n += value.numel() if isinstance(value, torch.Tensor) else 0
    return n


def param_counts(mod: nn.Module) -> tuple[int, int]:
    """All and trainable parameters of ``mod`` and its sub-modules, quantized layers' packed
    weights and biases among all."""
    params = list(mod.parameters())
    packed = sum(_packed(m) for m in mod.modules())
    return packed + sum(p.numel() for p in params), sum(
        p.numel() for p in params if p.requires_grad
    )


def layout_name(model: nn.Module, name: str, k: int, shape: tuple[int, ...] | None, n: int) -> str:
    """How netlens reads call ``k`` (of ``n``) of layer ``name``'s output: NCHW, NHWC, NLC,
    NCL; "" for other ranks."""
    from .activations import channels_last

    call = f"{name}@{k}" if n > 1 else name
    if shape is not None and len(shape) == 3:
        return "NLC" if channels_last(model, call, 3) else "NCL"
    if shape is not None and len(shape) == 4:
        return "NHWC" if channels_last(model, call) else "NCHW"
    return ""
