"""What to ablate: a model's natural units, found from one surveyed forward pass.

The default units are the outermost *residual blocks*, recognised by what they compute (a block
whose output adds its input back, :mod:`.residual`), whichever library defined them: timm and
torchvision ResNets, RegNets, EfficientNet / MobileNet inverted residuals, ConvNeXt, ViT and
Swin blocks, a user's own. A model without any gets each parameterised child of its feature
stack instead (a stack of repeated blocks, like a ViT's ``blocks`` or an
``nn.TransformerEncoder``, counts as its blocks).
Normalisation layers are never default units: switching one off tests the scale of its input,
not what the network learned.

Identity ablation of a residual block removes its branch and keeps the shortcut (Veit et al.,
2016); ``identity_fns`` (per study, never global) says how for a block netlens cannot trace.
PyTorch's own ``nn.TransformerEncoderLayer`` does not trace (its fast path), but its skip is
known from its ``norm_first``: pre-LN ``x``, post-LN ``norm2(norm1(x))``.

A block that returns a tuple whose first element is a tensor (Hugging Face Swin and
Data2VecVision layers: ``(hidden_states, attentions or None)``) is recognised by that element:
its forward is traced through :class:`_FirstOutput`, and its skip makes the first element only
(the engine keeps the rest of the tuple).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import AnalyzerError
from ...few_images import on_fewest
from ...layers import resolve_layers
from ..stats_layers import not_run
from .heads import Heads, output_heads
from .residual import find_residual
from .survey import Call, survey

__all__ = ["IdentityFn", "Unit", "find_units", "is_norm"]

IdentityFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Skip = Callable[[torch.Tensor], torch.Tensor]

_HEAD_NAMES = frozenset(
    {"fc", "head", "classifier", "last_linear", "pool", "global_pool", "flatten"}
)
_NORMS = (
    nn.modules.batchnorm._NormBase,  # batch and instance norms
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass(frozen=True)
class Unit:
    """One part of the model to switch off.

    Attributes:
        name: its dotted module name.
        kind: ``"residual"`` (a block that adds its input back) or ``"layer"``.
        downsample: a residual block whose shortcut carries weights or changes the shape.
        skip: the block without its residual branch (residual units only).
        shape_in, shape_out: what it mapped in the surveyed forward (its first call).
        call_shapes: the output shape of each of its calls in that forward.
    """

    name: str
    kind: str
    downsample: bool = False
    skip: Skip | None = field(default=None, compare=False, repr=False)
    shape_in: tuple[int, ...] | None = field(default=None, compare=False)
    shape_out: tuple[int, ...] | None = field(default=None, compare=False)
    call_shapes: tuple[tuple[int, ...] | None, ...] = field(default=(), compare=False)

    @property
    def residual(self) -> bool:
        return self.kind == "residual"


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (batch, instance, layer, group, RMS; frozen BN by its buffers)."""
    if isinstance(module, _NORMS):
        return True
    buffers = {n for n, _ in module.named_buffers(recurse=False)}
    return {"running_mean", "running_var"} <= buffers and next(module.children(), None) is None


def _user_fn(name: str, module: nn.Module, fns: Mapping[Any, IdentityFn]) -> Skip | None:
    fn = fns.get(name) or fns.get(type(module))
    return (lambda x: fn(module, x)) if fn is not None else None


def _torch_encoder_skip(module: nn.Module) -> Skip | None:
    """PyTorch's own ``nn.TransformerEncoderLayer`` without its two residual branches.

    Its ``forward`` does not trace (the fast path's checks), so :mod:`.residual` cannot find
    the additions; its source says where they are: pre-LN ``x + sa(norm1(x))``,
    ``x + ff(norm2(x))`` keeps ``x``; post-LN ``norm1(x + sa(x))``, ``norm2(x + ff(x))`` keeps
    ``norm2(norm1(x))``."""
    if not isinstance(module, nn.TransformerEncoderLayer):
        return None
    if module.norm_first:
        return lambda x: x
    return lambda x: module.norm2(module.norm1(x))


class _FirstOutput(nn.Module):
    """A block's own forward (traced through, not a leaf: its submodules stay leaves) that
    keeps only the first element of the tuple it returns."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.block.forward(x, *args, **kwargs)[0]


def _unit(name: str, module: nn.Module, call: Call, fns: Mapping[Any, IdentityFn]) -> Unit:
    """``module`` as a unit: residual when it adds its input back, else a plain layer."""
    shapes = {"shape_in": call.shape_in, "shape_out": call.shape_out}
    shapes["call_shapes"] = tuple(call.shapes_out)
    own = _user_fn(name, module, fns) or _torch_encoder_skip(module)
    if own is not None:
        return Unit(name, "residual", call.shape_in != call.shape_out, own, **shapes)
    if call.x is not None:
        block = _FirstOutput(module) if call.tuple_out else module
        found = find_residual(block, call.x, call.out, call.args, call.kwargs)
        if found is not None:
            return Unit(name, "residual", found.projection, found.skip, **shapes)
    return Unit(name, "layer", **shapes)


def _residual_blocks(
    model: nn.Module, calls: dict[str, Call], fns: Mapping[Any, IdentityFn]
) -> list[Unit]:
    """The outermost residual blocks, top down."""
    found: list[Unit] = []

    def visit(prefix: str, parent: nn.Module) -> None:
        for child_name, child in parent.named_children():
            name = f"{prefix}{child_name}"
            if name not in calls:  # never called itself: a ModuleList, or a Sequential
                visit(f"{name}.", child)  # whose blocks the parent calls one by one
                continue
            unit = _unit(name, child, calls[name], fns)
            if unit.residual:
                found.append(unit)
            else:
                visit(f"{name}.", child)

    visit("", model)
    return found


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _feature_stack(model: nn.Module) -> tuple[str, nn.Module]:
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module) and len(list(features.children())) > 1:
        return "features.", features
    return "", model


def _expand_repeats(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """A stack of repeated blocks (a ViT's ``blocks``, a ConvNeXt stage) → its blocks; so is a
    module whose one child (norms aside) is such a stack, like ``nn.TransformerEncoder``
    (its ``layers``, and its final ``norm``, never a unit)."""
    kids = list(module.named_children())
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(kids) >= 2:
        if len({type(m) for _, m in kids}) == 1 and all(_has_params(m) for _, m in kids):
            return [(f"{name}.{n}", m) for n, m in kids]
    others = [(n, m) for n, m in kids if not is_norm(m)]
    if len(others) == 1 and isinstance(others[0][1], (nn.Sequential, nn.ModuleList)):
        blocks = _expand_repeats(f"{name}.{others[0][0]}", others[0][1])
        if len(blocks) > 1:
            return blocks
    return [(name, module)]


def _plain_layers(model: nn.Module, heads: Heads | None = None) -> list[str]:
    """Each parameterised, non-normalisation child of the feature stack (heads left out: the
    modules that make the model's outputs, from its autograd graph, else the last Linear)."""
    prefix, stack = _feature_stack(model)
    children = [(n, m) for n, m in stack.named_children() if _has_params(m) and not is_norm(m)]
    if not prefix:
        children = [(n, m) for n, m in children if n not in _HEAD_NAMES]
        if heads is not None and heads.heads:  # every output's head (O-Net has three)
            children = [(n, m) for n, m in children if n not in heads.heads]
        elif children and isinstance(children[-1][1], nn.Linear):
            children = children[:-1]  # the classifier: removing it leaves no logits
    return [prefix + n for c in children for n, _ in _expand_repeats(*c)]


def _default_units(
    model: nn.Module,
    calls: dict[str, Call],
    fns: Mapping[Any, IdentityFn],
    heads: Heads | None = None,
) -> list[Unit]:
    blocks = _residual_blocks(model, calls, fns)
    if heads is not None and heads.needed is not None:  # what the explained output reads
        blocks = [b for b in blocks if b.name in heads.needed]
    if blocks:
        return blocks
    names = [n for n in _plain_layers(model, heads) if n in calls]
    if heads is not None and heads.needed is not None:
        names = [n for n in names if n in heads.needed]
    if not names:
        raise AnalyzerError(
            f"found no blocks to ablate in {type(model).__name__}; pick layers with --layers"
        )
    return [_unit(n, model.get_submodule(n), calls[n], fns) for n in names]


def find_units(
    model: nn.Module,
    x: torch.Tensor,
    layers: object = None,
    identity_fns: Mapping[Any, IdentityFn] | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[list[Unit], bool]:
    """The units to ablate (None: the default units) and whether they were chosen by hand.

    Args:
        model: the model (in eval mode).
        x: one input batch (its first image is surveyed).
        layers: a layer selector (names, globs, ``type:X``), None or ``"blocks"``.
        identity_fns: ``{unit name or block class: fn(module, x)}``, the block's output without
            its residual branch, for blocks netlens cannot trace.
        output: raw model output → the explained tensor (``Lens.reader``); when given, the
            default units leave out those the explained output does not depend on (another
            head's branch, whose drop is exactly 0).
    """
    fns = dict(identity_fns or {})
    calls = on_fewest(lambda few: survey(model, few), x)
    if layers is None or layers == "" or layers == "blocks":
        heads = on_fewest(lambda few: output_heads(model, few, output), x)
        return _default_units(model, calls, fns, heads), False
    names = resolve_layers(model, layers)  # type: ignore[arg-type]
    consumed = [str(n) for n in names if n.consumed]
    if consumed:
        raise AnalyzerError(
            f"ablation switches modules off; {', '.join(consumed)} selects what the model "
            "reads after an in-place rewrite outside any module, which is no module's output: "
            f"ablate {consumed[0].split(':')[0]}, the output that was rewritten (with --mode "
            "zero the same as the rewrite's when it is a ReLU: ReLU(0) = 0)"
        )
    calls_named = [str(n) for n in names if n.call is not None]
    if calls_named:
        raise AnalyzerError(
            f"ablation switches whole modules off; {', '.join(calls_named)} selects one call of "
            "a module: ablate the module (every call) or the block that contains that call"
        )
    names = [n.name for n in names]
    idle = [n for n in names if n not in calls]
    if idle:
        raise not_run(model, idle, ran=calls)
    return [_unit(n, model.get_submodule(n), calls[n], fns) for n in names], True
