"""What to ablate: the default units of a model, residual-block recognition, identity functions.

The default units are a model's natural blocks: every residual block (timm / torchvision ResNets,
netlens' ``resnet`` arch, anything built the same way), else every top-level child with
parameters of the feature stack (``model.features``, or the model itself).

Identity for a residual block follows Veit et al. (2016): the residual branch is removed and the
shortcut kept, so the block computes ``act(shortcut(x))``. These blocks apply their ReLU after
the sum, so the ReLU stays: that is exactly what the block computes when its branch outputs zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import AnalyzerError
from ...layers import resolve_layers

__all__ = [
    "IDENTITY_FNS",
    "Unit",
    "default_units",
    "identity_output",
    "is_residual_block",
    "register_identity",
    "select_units",
]

IdentityFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

#: Block class (``module.qualname``) → function computing the block without its residual branch.
IDENTITY_FNS: dict[str, IdentityFn] = {}

_HEAD_NAMES = {"fc", "head", "classifier", "last_linear", "pool", "global_pool", "flatten"}
_SHORTCUT_ATTRS = ("downsample", "shortcut")


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def register_identity(qualname: str, fn: IdentityFn) -> None:
    """Teach netlens how to skip the residual branch of a block class.

    Example:
        >>> register_identity("mylib.Block", lambda m, x: m.act(m.proj(x)))
    """
    IDENTITY_FNS[qualname] = fn


def _shortcut(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for attr in _SHORTCUT_ATTRS:
        branch = getattr(module, attr, None)
        if isinstance(branch, nn.Module):
            return branch(x)
    return x


def _final_act(module: nn.Module) -> nn.Module | None:
    """The activation applied after the sum: the last ``act*``/``relu`` child, if any."""
    acts = [m for n, m in module.named_children() if n.startswith("act") or n == "relu"]
    return acts[-1] if acts else None


def _structural_identity(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = _shortcut(module, x)
    act = _final_act(module)
    return act(out) if act is not None else out


def _act_after(name: str) -> IdentityFn:
    def fn(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return getattr(module, name)(_shortcut(module, x))

    return fn


register_identity("timm.models.resnet.BasicBlock", _act_after("act2"))
register_identity("timm.models.resnet.Bottleneck", _act_after("act3"))
register_identity("torchvision.models.resnet.BasicBlock", _act_after("relu"))
register_identity("torchvision.models.resnet.Bottleneck", _act_after("relu"))
register_identity("netlens.models.archs.BasicBlock", _act_after("act2"))


def is_residual_block(module: nn.Module) -> bool:
    """A registered block class, or a module with a ``downsample``/``shortcut`` attribute and at
    least two conv children (the timm / torchvision / netlens ResNet block layout)."""
    if _qualname(module) in IDENTITY_FNS:
        return True
    if not any(hasattr(module, a) for a in _SHORTCUT_ATTRS):
        return False
    convs = [m for m in module.children() if isinstance(m, nn.Conv2d)]
    return len(convs) >= 2


def identity_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's output with its residual branch removed (``act(shortcut(x))``)."""
    fn = IDENTITY_FNS.get(_qualname(module), _structural_identity)
    return fn(module, x)


@dataclass(frozen=True)
class Unit:
    """One part of the model to switch off."""

    name: str
    kind: str  # "residual" or "layer"
    downsample: bool = False

    @property
    def residual(self) -> bool:
        return self.kind == "residual"


def _unit(model: nn.Module, name: str) -> Unit:
    module = model.get_submodule(name)
    if is_residual_block(module):
        down = any(isinstance(getattr(module, a, None), nn.Module) for a in _SHORTCUT_ATTRS)
        return Unit(name, "residual", down)
    return Unit(name, "layer", False)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _feature_stack(model: nn.Module) -> tuple[str, nn.Module]:
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module) and len(list(features.children())) > 1:
        return "features.", features
    return "", model


def _expand_repeats(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """A stack of repeated blocks (a ViT's ``blocks``, a ConvNeXt stage) → its blocks."""
    kids = list(module.named_children())
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(kids) >= 2:
        if len({type(m) for _, m in kids}) == 1 and all(_has_params(m) for _, m in kids):
            return [(f"{name}.{n}", m) for n, m in kids]
    return [(name, module)]


def default_units(model: nn.Module) -> list[Unit]:
    """Every residual block (outermost), else each parameterised child of the feature stack
    (a stack of repeated blocks, like a ViT's ``blocks``, counts as its blocks)."""
    blocks: list[str] = []
    for name, module in model.named_modules():
        if name and is_residual_block(module) and not any(name.startswith(b + ".") for b in blocks):
            blocks.append(name)
    if blocks:
        return [_unit(model, n) for n in blocks]
    prefix, stack = _feature_stack(model)
    children = [(n, m) for n, m in stack.named_children() if _has_params(m)]
    if not prefix:
        children = [(n, m) for n, m in children if n not in _HEAD_NAMES]
        if children and isinstance(children[-1][1], nn.Linear):
            children = children[:-1]  # the classifier: removing it leaves no logits
    children = [item for n, m in children for item in _expand_repeats(n, m)]
    if not children:
        raise AnalyzerError(
            f"found no blocks to ablate in {type(model).__name__}; pick layers with --layers"
        )
    return [_unit(model, prefix + n) for n, _ in children]


def select_units(model: nn.Module, layers: object = None) -> tuple[list[Unit], bool]:
    """Units from a selector (None: the default units); also whether they were chosen by hand."""
    if layers is None or layers == "" or layers == "blocks":
        return default_units(model), False
    names = resolve_layers(model, layers)  # type: ignore[arg-type]
    return [_unit(model, n) for n in names], True
