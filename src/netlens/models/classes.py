"""Class names for any model: read from a list or file, checked against the model's outputs."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..preprocess import Preprocess

__all__ = ["check_class_names", "head_width", "output_count"]


def output_count(model: nn.Module, spec: Preprocess | None = None) -> int | None:
    """How many classes ``model`` outputs; None when that cannot be told without running it.

    timm models say it (``num_classes``); otherwise one dry forward at the spec's input size,
    or, with no known size, the width of the last layer with weights when that is an
    ``nn.Linear`` or, as in SqueezeNet, a 1×1 ``nn.Conv2d`` (pooling, flattening, dropout and
    activations after it have no weights).
    """
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and hasattr(model, "get_classifier"):
        return n
    if spec is not None and spec.size is not None:
        return _dry_forward_count(model, spec)
    return head_width(model)


def head_width(model: nn.Module) -> int | None:
    """The class count a model's last layer says without running it: timm's ``num_classes``,
    the width of a last ``nn.Linear`` or 1×1 ``nn.Conv2d``; None otherwise."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and hasattr(model, "get_classifier"):
        return n
    last = _last_weighted_leaf(model)
    if isinstance(last, nn.Linear) or (_quantized(last) and hasattr(last, "out_features")):
        return int(last.out_features)
    conv = isinstance(last, nn.Conv2d) or (_quantized(last) and hasattr(last, "out_channels"))
    if conv and tuple(last.kernel_size) == (1, 1):
        return int(last.out_channels)
    return None


def headless(model: nn.Module) -> str | None:
    """Why ``model``'s output looks like features rather than class scores, or None: a timm
    model built with ``num_classes=0``, or a network whose last layer with weights is a
    normalisation layer (its head replaced by ``nn.Identity``)."""
    if hasattr(model, "get_classifier"):  # timm says it
        timm_headless = getattr(model, "num_classes", None) == 0
        return "a timm model built with num_classes=0" if timm_headless else None
    last = _last_weighted_leaf(model)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    if isinstance(last, norms):
        return f"its last layer with weights is a {type(last).__name__}; a head set to nn.Identity?"
    return None


def _quantized(m: nn.Module | None) -> bool:
    """A ``torch.ao`` quantized layer (static or dynamic): its weights are packed, not
    parameters, and it may hold its packed parameters as a child module."""
    return m is not None and type(m).__module__.startswith("torch.ao.nn.quantized")


def _last_weighted_leaf(model: nn.Module) -> nn.Module | None:
    """The last registered module without children that has weights (the head, usually); a
    quantized layer counts as one (``quantize_dynamic``'s Linear: packed weights, no
    parameters)."""
    leaves = [
        m
        for m in model.modules()
        if (_quantized(m) and callable(getattr(m, "weight", None))) or not list(m.children())
    ]
    weighted = lambda m: any(True for _ in m.parameters()) or _quantized(m)  # noqa: E731
    return next((m for m in reversed(leaves) if weighted(m) and not _packed(m)), None)


def _packed(m: nn.Module) -> bool:
    """A quantized layer's packed-parameters holder (a child of the layer, not a layer)."""
    return "PackedParams" in type(m).__name__


def _dry_forward_count(model: nn.Module, spec: Preprocess) -> int | None:
    from ..layers import eval_mode

    # in the model's precision and on its device, as Lens.place feeds it (float32 zeros make
    # a half-precision model's forward raise, and its class count go unchecked)
    p = next(model.parameters(), None)
    dtype = next(
        (
            t.dtype
            for t in itertools.chain(model.parameters(), model.buffers())
            if t.is_floating_point()
        ),
        torch.float32,
    )
    # two images: one image's 1×K comes out as K values from a forward that ends in .squeeze()
    size = tuple(spec.size or ())
    x = torch.zeros(
        2, spec.channels, *size, dtype=dtype, device=p.device if p is not None else "cpu"
    )
    try:
        with torch.no_grad(), eval_mode(model):
            out: Any = model(x)
    except Exception:  # noqa: BLE001 - a model that cannot run here is reported by the analyses
        return None
    from ..errors import NetlensError
    from ..targets import model_output

    try:
        out = model_output(out)
    except NetlensError:
        return None
    rows = out.dim() == 2 and out.shape[0] == 2  # not one row per image (.flatten()): unknown
    return int(out.shape[1]) if rows else None


def check_class_names(names: list[str], model: nn.Module, spec: Preprocess | None) -> None:
    """One line when the number of names differs from the model's outputs (or names repeat).

    A single-logit (binary) model takes two names: the negative class's, then the positive's.
    Only a count the model itself gives is checked here (timm's ``num_classes``, or a dry
    forward at the spec's size): the width of a last ``nn.Linear`` is a guess a forward that
    slices its head (``fc(x)[:, :3]``) contradicts, so without a size the count is checked on
    the first forward (``Lens._check_class_count``).
    """
    n = output_count(model, spec) if spec is not None and spec.size is not None else None
    if n is None and hasattr(model, "get_classifier"):
        n = head_width(model)  # timm's num_classes
    if n is not None and n != len(names) and not (n == 1 and len(names) == 2):
        per = "two names (negative, positive) or " if n == 1 else ""
        raise ModelLoadError(
            f"{len(names)} class names given but the model has {n} outputs; give {per}one name "
            "per output, in output order"
        )
    seen: set[str] = set()
    dup = next((c for c in names if c in seen or seen.add(c)), None)  # type: ignore[func-returns-value]
    if dup is not None:
        raise ModelLoadError(f"class name '{dup}' is given twice; class names must be distinct")
