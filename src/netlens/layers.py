"""Layer selectors, close-name hints, the CAM layer search and the layer table.

Selectors: exact dotted names from ``named_modules()`` (``layer3.1.conv2``), globs
(``layer*.0.conv?``), module types (``type:Conv2d``), ``auto`` (the last layer with a spatial
output before global pooling), several of them comma-separated, or ``nn.Module`` objects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import LayerNotFoundError, NetlensError, hint

__all__ = [
    "LayerInfo",
    "auto_layer",
    "example_input",
    "guess_input_size",
    "layer_table",
    "resolve_layers",
    "trace_outputs",
    "eval_mode",
]


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape) if self.output_shape else None
        return d


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All sub-modules by dotted name (the root itself excluded)."""
    return {n: m for n, m in model.named_modules() if n}


def _by_type(layers: dict[str, nn.Module], type_name: str) -> list[str]:
    wanted = type_name.split(".")[-1].lower()
    return [n for n, m in layers.items() if type(m).__name__.lower() == wanted]


def _one_selector(
    model: nn.Module, layers: dict[str, nn.Module], sel: str, example: torch.Tensor | None
) -> list[str]:
    sel = sel.strip()
    if sel == "auto":
        return [auto_layer(model, example)]
    if sel in layers:
        return [sel]
    if sel.startswith("type:"):
        hits = _by_type(layers, sel[5:])
        if not hits:
            types = sorted({type(m).__name__ for m in layers.values()})
            raise LayerNotFoundError(
                f"no layer of type '{sel[5:]}' in {type(model).__name__}"
                f"{hint(sel[5:], types, 'type')} Types present: {', '.join(types[:12])}"
            )
        return hits
    if any(c in sel for c in "*?["):
        hits = [n for n in layers if fnmatch.fnmatchcase(n, sel)]
        if hits:
            return hits
    raise LayerNotFoundError(
        f"no layer '{sel}' in {type(model).__name__}{hint(sel, layers)} "
        "(run `netlens layers MODEL` to list the names)"
    )


def resolve_layers(
    model: nn.Module,
    selector: str | nn.Module | Sequence[str | nn.Module],
    *,
    example: torch.Tensor | None = None,
) -> list[str]:
    """Turn selectors into a list of unique dotted layer names, in the order given.

    Example:
        >>> resolve_layers(resnet, "layer4,type:Linear")
        ['layer4', 'fc']
    """
    layers = named_layers(model)
    ids = {id(m): n for n, m in layers.items()}
    items: list[str | nn.Module]
    if isinstance(selector, str):
        items = [s for s in selector.split(",") if s.strip()]
    elif isinstance(selector, nn.Module):
        items = [selector]
    else:
        items = list(selector)
    names: list[str] = []
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in ids:
                raise LayerNotFoundError(
                    f"module {type(item).__name__} is not part of {type(model).__name__}"
                )
            found = [ids[id(item)]]
        else:
            found = _one_selector(model, layers, item, example)
        names += [n for n in found if n not in names]
    if not names:
        raise LayerNotFoundError("no layer selected; give a layer name, a glob or type:NAME")
    return names


def guess_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) a model expects: its ``input_size``/timm config, else from the first conv."""
    size = getattr(model, "input_size", None)
    embed = getattr(model, "patch_embed", None)
    if size is None and getattr(embed, "img_size", None) is not None:
        chans = getattr(getattr(embed, "proj", None), "in_channels", 3)
        size = (chans, *embed.img_size)  # timm ViT/Swin built for another image size
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size")
    if size is not None:
        return tuple(int(s) for s in size)  # type: ignore[return-value]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 224, 224)
        if isinstance(m, nn.Linear):
            break
    return (3, 224, 224)


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input batch of the size the model expects, on the model's device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *guess_input_size(model), generator=gen)
    return x.to(_param_device(model))


@contextmanager
def eval_mode(model: nn.Module):  # noqa: ANN201
    """Put every sub-module in eval mode for the block, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def trace_outputs(
    model: nn.Module, example: torch.Tensor | None = None
) -> list[tuple[str, nn.Module, Any]]:
    """One dry forward; (name, module, output) for every called module in completion order."""
    x = example if example is not None else example_input(model)
    seen: list[tuple[str, nn.Module, Any]] = []
    handles = []
    try:
        for name, mod in named_layers(model).items():

            def hook(m: nn.Module, i: Any, out: Any, name: str = name) -> None:
                seen.append((name, m, out))

            handles.append(mod.register_forward_hook(hook))
        with torch.no_grad(), eval_mode(model):
            try:
                model(x)
            except Exception as exc:  # noqa: BLE001 - explained to the user below
                raise NetlensError(
                    f"a dry forward with input {tuple(x.shape)} failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]}); pass an example input of the right size"
                ) from exc
    finally:
        for h in handles:
            h.remove()
    return seen


def _is_spatial(out: Any) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1


def auto_layer(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The last layer with a spatial output: the usual CAM / feature-map layer.

    CNNs: the last N×C×H×W output with H·W > 1. Pooling layers themselves are skipped (AlexNet's
    ``avgpool`` keeps 6×6 but is no feature layer), so on AlexNet/VGG the ``features`` stack is
    chosen. Among modules that produce the very same tensor (a block and its last ReLU), the
    outermost is chosen, so ``layer4`` wins over ``layer4.1.act2`` on a ResNet. Token models
    (timm ViT): when numbered blocks whose tokens form a patch grid run after the last spatial
    layer (the patch embedding), the last such block is chosen.
    """
    traced = trace_outputs(model, example)
    spatial = [
        (i, n, out)
        for i, (n, m, out) in enumerate(traced)
        if _is_spatial(out) and "Pool" not in type(m).__name__
    ]
    tokens = [
        (i, n)
        for i, (n, _, out) in enumerate(traced)
        if n.rsplit(".", 1)[-1].isdigit() and _is_token_grid(out, model)
    ]
    if tokens and (not spatial or tokens[-1][0] > spatial[-1][0]):
        return tokens[-1][1]
    if not spatial:
        raise NetlensError(
            f"{type(model).__name__} has no layer with a spatial (N×C×H×W) output; "
            "name a layer with --layer (see `netlens layers MODEL`)"
        )
    _, name, out = spatial[-1]
    same = [n for _, n, o in spatial if o is out]
    return min(same, key=lambda n: n.count("."))


def _is_token_grid(out: Any, model: nn.Module) -> bool:
    """A 3-D token output that reshapes to a patch grid larger than 1×1."""
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        return False
    from .activations import is_spatial

    return is_spatial(out, model)


def layer_table(model: nn.Module, example: torch.Tensor | None = None) -> list[LayerInfo]:
    """Name, type, output shape (from one dry forward), parameter counts for every layer."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, _, out in trace_outputs(model, example):
        if isinstance(out, torch.Tensor) and name not in shapes:
            shapes[name] = tuple(out.shape)
    rows = []
    for name, mod in named_layers(model).items():
        params = list(mod.parameters())
        rows.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                output_shape=shapes.get(name),
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
            )
        )
    return rows
