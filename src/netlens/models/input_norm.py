"""Models that normalise their own input: ``nn.Sequential(Normalize(mean, std), network)``.

Robustness benchmarks and attack libraries ship models this way (RobustBench's
``ImageNormalizer``, torchvision's ``transforms.Normalize`` as a first layer, kornia's
``Normalize``) so that they take pixels in [0, 1]. Preprocessing them with the network's own
mean and std normalises twice: every input is shifted and squeezed, and every map, score and
metric is of images the model never sees. :func:`input_normalizer` finds such a first layer;
the preprocessing then keeps pixels in [0, 1] (mean 0, std 1) and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InputNorm", "input_normalizer"]


@dataclass(frozen=True)
class InputNorm:
    """A model's normalising first layer.

    Attributes:
        name: the layer's name in the model (``0``, ``normalize``).
        mean, std: what it subtracts and divides by.
        network: the model's one other part with weights (whose preprocessing the model's
            is, but for the normalisation), or None when that is not one module.
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    network: nn.Module | None


def input_normalizer(model: nn.Module) -> InputNorm | None:
    """The normalising layer the model starts with (its first leaf module in definition
    order, which in a ``Sequential`` is also the first to run), or None."""
    first = next(((n, m) for n, m in model.named_modules() if not any(m.children())), None)
    if first is None or first[1] is model:
        return None
    name, layer = first
    stats = _mean_std(layer)
    if stats is None:
        return None
    top = name.split(".")[0]
    parts = [m for n, m in model.named_children() if n != top and any(True for _ in m.parameters())]
    return InputNorm(name, *stats, network=parts[0] if len(parts) == 1 else None)


def _mean_std(layer: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A normalising layer's (mean, std): torchvision's and kornia's ``Normalize``, or any
    weightless layer holding per-channel ``mean`` and ``std`` (RobustBench's
    ``ImageNormalizer``); None for any other layer."""
    if any(True for _ in layer.parameters()):
        return None
    kind = type(layer).__name__.lower()
    mean, std = getattr(layer, "mean", None), getattr(layer, "std", None)
    if mean is None or std is None or "norm" not in kind:
        return None
    try:
        m = torch.as_tensor(mean, dtype=torch.float64).flatten()
        s = torch.as_tensor(std, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        return None
    if len(m) != len(s) or len(m) not in (1, 3) or not bool((s > 0).all()):
        return None
    return tuple(m.tolist()), tuple(s.tolist())
