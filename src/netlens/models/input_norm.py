"""Models that normalise their own input: ``nn.Sequential(Normalize(mean, std), network)``.

Robustness benchmarks and attack libraries ship models this way (RobustBench's
``ImageNormalizer``, torchvision's ``transforms.Normalize`` as a first layer, kornia's
``Normalize``) so that they take pixels in [0, 1]; so do wrappers that keep a ``Normalize``
(or ``mean``/``std`` buffers of their own) beside a backbone and apply it in ``forward``.
Preprocessing them with the network's own mean and std normalises twice: every input is
shifted and squeezed, and every map, score and metric is of images the model never sees.
:func:`input_normalizer` finds such a normaliser; the preprocessing then keeps pixels in
[0, 1] (mean 0, std 1) and says why.

What runs first is what ``forward`` calls first, not what ``__init__`` defines first: outside
a chain of ``nn.Sequential`` a short dry forward (stopped at the first layer with weights)
tells which normaliser, if any, the input goes through before the network's first layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InputNorm", "find_input_norm", "input_normalizer", "statistics_in"]

# a normaliser's statistics, as RobustBench's ImageNormalizer, detectron2 and mmdet name them
_BUFFER_PAIRS = (("mean", "std"), ("pixel_mean", "pixel_std"))


@dataclass(frozen=True)
class InputNorm:
    """A model's normalising first step.

    Attributes:
        name: the layer's name in the model (``0``, ``normalize``), or the model's buffers'
            (``mean/std buffers``) when its ``forward`` normalises with them.
        mean, std: what it subtracts and divides by.
        network: the model's one other part with weights (whose preprocessing the model's
            is, but for the normalisation), or None when that is not one module.
        layer: whether ``name`` is a layer (else buffers of the model's own).
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    network: nn.Module | None
    layer: bool = True


def input_normalizer(model: nn.Module) -> InputNorm | None:
    """The normaliser the model's input goes through before its first layer with weights
    (see :func:`find_input_norm`), or None."""
    return find_input_norm(model)[0]


def find_input_norm(model: nn.Module) -> tuple[InputNorm | None, str | None]:
    """The model's normaliser (or None), and a doubt (or None): a sentence saying that the
    model holds ``mean``/``std`` buffers of its own that netlens could not tell whether its
    ``forward`` applies.

    A normalising leaf (:func:`_mean_std`) counts when it is the first leaf of a chain of
    ``nn.Sequential``, or when a dry forward calls it before any layer with weights; the
    model's own ``mean``/``std`` (or ``pixel_mean``/``pixel_std``) buffers count when the dry
    forward's first layer with weights receives ``(x - mean) / std``.
    """
    from .wrappers import unwrap

    model = unwrap(model)[0]
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(m.children())]
    layers = [(n, m, s) for n, m in leaves if (s := _mean_std(m)) is not None]
    buffers = _own_stats(model)
    if not layers and buffers is None:
        return None, None
    if layers and leaves[0][0] == layers[0][0] and _sequential_head(model, layers[0][0]):
        name, _, stats = layers[0]
        return InputNorm(name, *stats, network=_network(model, name)), None
    traced = _first_calls(model)
    if traced is None:  # the model does not run on a guessed input: its definition order
        if layers and leaves[0][0] == layers[0][0]:
            name, _, stats = layers[0]
            return InputNorm(name, *stats, network=_network(model, name)), None
        return None, _doubt(buffers, "a dry forward on a guessed input failed")
    called, x, first_input = traced
    ids = {id(m): (n, s) for n, m, s in layers}
    hit = next((ids[id(m)] for m in called if id(m) in ids), None)
    if hit is not None:
        name, stats = hit
        return InputNorm(name, *stats, network=_network(model, name)), None
    if buffers is None:
        return None, None
    names, mean, std = buffers
    if first_input is None or first_input.shape != x.shape:
        return None, _doubt(buffers, "its first layer with weights does not take the image")
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    seen, x = first_input.detach().double(), x.double()
    if _close(seen, (x - m) / s):
        return InputNorm(names, mean, std, network=_network(model, ""), layer=False), None
    if _close(seen, x):  # buffers not applied to the input (used elsewhere)
        return None, None
    return None, _doubt(buffers, "its first layer with weights receives something else")


def statistics_in(
    state: dict[str, torch.Tensor], keys: list[str], channels: int
) -> tuple[str, str, str, tuple[float, ...], tuple[float, ...]] | None:
    """A normaliser's statistics among ``keys`` of a state dict: ``(owner, mean name, std
    name, mean, std)`` for the first ``OWNER.mean``/``OWNER.std`` (or ``pixel_mean``/
    ``pixel_std``) pair of 1 or ``channels`` values, std positive; None without one."""
    for m_name, s_name in _BUFFER_PAIRS:
        for k in keys:
            owner = k[: -len(m_name)] if k.endswith(m_name) else None
            if owner is None or (owner and not owner.endswith(".")) or owner + s_name not in state:
                continue
            stats = _stats(state[k], state[owner + s_name])
            if stats is not None and len(stats[0]) in (1, channels):
                return owner, m_name, s_name, *stats
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1.0)))


def _doubt(
    buffers: tuple[str, tuple[float, ...], tuple[float, ...]] | None, why: str
) -> str | None:
    if buffers is None:
        return None
    names, mean, std = buffers
    shown = f"mean {', '.join(f'{v:g}' for v in mean)}, std {', '.join(f'{v:g}' for v in std)}"
    return (
        f"the model holds {names} of its own ({shown}) and netlens cannot tell whether its "
        f"forward normalises its input with them ({why}); if it does, feed it unnormalised "
        "pixels (mean 0, std 1: --mean 0,0,0 --std 1,1,1)"
    )


def _own_stats(
    model: nn.Module,
) -> tuple[str, tuple[float, ...], tuple[float, ...]] | None:
    """The model's own (not a sub-module's) per-channel statistics buffers: ``mean``/``std``
    or ``pixel_mean``/``pixel_std``, 1 or 3 values each, std positive; None without them."""
    own = dict(model.named_buffers(recurse=False))
    for m_name, s_name in _BUFFER_PAIRS:
        mean, std = own.get(m_name), own.get(s_name)
        if mean is None or std is None:
            continue
        stats = _stats(mean, std)
        if stats is not None:
            return f"{m_name}/{s_name} buffers", *stats
    return None


def _sequential_head(model: nn.Module, name: str) -> bool:
    """Whether the leaf ``name`` is the first of a chain of ``nn.Sequential`` from the model
    down (``Sequential(Normalize, net)``): then it runs first, without running anything."""
    parent = model
    for part in name.split("."):
        if not isinstance(parent, nn.Sequential) or next(iter(parent._modules), None) != part:
            return False
        parent = parent._modules[part]  # type: ignore[assignment]
    return True


def _network(model: nn.Module, name: str) -> nn.Module | None:
    """The model's one top-level part with weights, the normaliser's own aside."""
    top = name.split(".")[0]
    parts = [m for n, m in model.named_children() if n != top and any(True for _ in m.parameters())]
    return parts[0] if len(parts) == 1 else None


class _Stop(Exception):  # noqa: N818 - control flow, never seen outside _first_calls
    pass


def _first_calls(
    model: nn.Module,
) -> tuple[list[nn.Module], torch.Tensor, torch.Tensor | None] | None:
    """A dry forward on random pixels in [0, 1], stopped when the first leaf with weights is
    called: the leaves called before it (and it), the input, and what that leaf received
    (None when none was called); None when the model does not run on such an input."""
    from ..layers import eval_mode, guess_input_size

    sized = next(
        (
            m
            for m in model.modules()
            if getattr(m, "pretrained_cfg", None) or getattr(m, "input_size", None) is not None
        ),
        model,
    )
    try:
        size = guess_input_size(sized)
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, *size, generator=gen).to(device=device, dtype=dtype)
    except Exception:  # noqa: BLE001 - no input to try
        return None
    called: list[nn.Module] = []
    received: list[torch.Tensor | None] = []

    def pre(m: nn.Module, args: tuple) -> None:
        called.append(m)
        if any(True for _ in m.parameters(recurse=False)):
            received.append(next((a for a in args if isinstance(a, torch.Tensor)), None))
            raise _Stop

    handles = []
    try:
        for _, m in model.named_modules():
            if m is not model and not any(m.children()):
                handles.append(m.register_forward_pre_hook(pre))
        with torch.no_grad(), eval_mode(model):
            model(x.clone())  # x kept as drawn: a forward may write into its input
    except _Stop:
        pass
    except Exception:  # noqa: BLE001 - the model needs another input: not known
        return None
    finally:
        for h in handles:
            h.remove()
    return called, x, received[0] if received else None


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
    return _stats(mean, std)


def _stats(mean: object, std: object) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``mean`` and ``std`` as tuples of 1 or 3 floats (std positive), else None."""
    try:
        m = torch.as_tensor(mean, dtype=torch.float64).flatten()
        s = torch.as_tensor(std, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        return None
    if len(m) != len(s) or len(m) not in (1, 3) or not bool((s > 0).all()):
        return None
    return tuple(m.tolist()), tuple(s.tolist())
