"""Bring layer activations into N×C×H×W form, whatever the architecture.

CNN layers already are. timm ViT blocks give N×L×D tokens: prefix tokens (class, register,
distillation) are dropped and the rest reshaped to the patch grid. timm Swin / ConvNeXt-style
stages that keep channels last (N×H×W×C) are permuted. Models needing something else can set
``model.netlens_reshape = fn(tensor, layer_name) -> N×C×H×W``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import AnalyzerError

__all__ = ["is_spatial", "to_spatial"]


def _token_layout(model: nn.Module, length: int) -> tuple[int, int, int] | None:
    """(prefix tokens, grid height, grid width) of ``length`` tokens; None when no grid fits.

    The patch embedding's grid decides when it fits with at most ``num_prefix_tokens`` (class,
    register, distillation) tokens in front: CaiT's self-attention blocks carry no class token
    although the model has one. Otherwise a square grid after ``num_prefix_tokens`` (0–2 when
    the model does not say) tokens.
    """
    n = getattr(model, "num_prefix_tokens", None)
    most = int(n) if n is not None else 2
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid:
        h, w = int(grid[0]), int(grid[1])
        if 0 <= length - h * w <= most:
            return length - h * w, h, w
    for k in ([most] if n is not None else []) + list(range(most + 1)):
        side = math.isqrt(max(length - k, 0))
        if side * side == length - k and side > 0:
            return k, side, side
    return None


def _channels_last(model: nn.Module) -> bool:
    return str(getattr(model, "output_fmt", "")).upper() == "NHWC"


def to_spatial(t: torch.Tensor, model: nn.Module, layer: str = "") -> torch.Tensor:
    """An activation as N×C×H×W (a view or reshape; gradients flow through it).

    Raises AnalyzerError with a one-line explanation when the layer has no spatial extent.
    """
    custom = getattr(model, "netlens_reshape", None)
    if custom is not None:
        return custom(t, layer)
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if _channels_last(model) else t
    if t.dim() == 3:
        n, length, d = t.shape
        layout = _token_layout(model, length)
        if layout is None:
            raise AnalyzerError(
                f"layer '{layer}' gives {length} tokens that do not form a square patch grid; "
                "set model.netlens_reshape or pick another layer"
            )
        k, h, w = layout
        return t[:, k:, :].reshape(n, h, w, d).permute(0, 3, 1, 2)
    raise AnalyzerError(
        f"layer '{layer}' has no spatial extent (output shape {tuple(t.shape)}); pick a "
        "convolutional or transformer-block layer (see `netlens layers MODEL`)"
    )


def is_spatial(t: torch.Tensor, model: nn.Module) -> bool:
    """True when :func:`to_spatial` gives a map larger than 1×1."""
    try:
        s = to_spatial(t, model)
    except AnalyzerError:
        return False
    return s.shape[-1] * s.shape[-2] > 1
