"""Transfer learning: start from another checkpoint (``--init``) and freeze layers (``--freeze``).

``--freeze backbone`` trains only the head: the last module with parameters to run in the
model's forward pass (on a sample batch), else the last one defined;
``--freeze up-to LAYER`` freezes every module up to and including ``LAYER`` (in definition
order). Parameters the model's root module owns itself (a ViT's ``cls_token``, ``pos_embed``,
``dist_token``, ``reg_token``; torchvision's ``class_token``) belong to the backbone: frozen by
``backbone``, and by ``up-to LAYER`` past the first module. Frozen modules also stay in eval
mode during training, so their BatchNorm statistics are kept too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import NetlensError, hint

if TYPE_CHECKING:
    from ..lens import Lens
    from ..plugins.manager import PluginHost

__all__ = [
    "call_order",
    "count_params",
    "freeze",
    "head_name",
    "inherited_arch_kwargs",
    "init_from",
    "load_init",
]


def _owners(model: nn.Module) -> list[str]:
    """The modules that own parameters directly, in definition order."""
    return [
        n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))
    ]


def call_order(model: nn.Module, x: torch.Tensor) -> tuple[Any, list[str]]:
    """``model(x)`` in eval mode without gradients (train/eval flags restored), and the modules
    owning parameters in the order they finished running (a module run twice counts last)."""
    modules = dict(model.named_modules())
    order: dict[str, None] = {}

    def hook(name: str) -> Any:
        def done(*_: Any) -> None:
            order.pop(name, None)
            order[name] = None

        return done

    handles = [modules[n].register_forward_hook(hook(n)) for n in _owners(model)]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    return out, list(order)


def head_name(model: nn.Module, order: list[str] | None = None) -> str:
    """The classifier: the last module owning parameters to run (``order``, from
    :func:`call_order`), else the last one defined."""
    owners = _owners(model)
    if not owners:
        raise NetlensError(f"{type(model).__name__} has no parameters to train")
    ran = [n for n in order or [] if n in owners]
    return ran[-1] if ran else owners[-1]


def freeze(model: nn.Module, spec: str | None, order: list[str] | None = None) -> list[str]:
    """Set ``requires_grad=False`` per ``spec`` (``backbone`` or ``up-to:LAYER``); frozen names.

    ``order``: the modules in the order they ran (:func:`call_order`), to find the head by.
    Only the trainer's own fresh model is changed, never a user's.
    """
    if not spec:
        return []
    names = [n for n, _ in model.named_modules() if n]
    if spec == "backbone":
        head = head_name(model, order)
        frozen = [
            n
            for n in names
            if n != head and not n.startswith(head + ".") and not head.startswith(n + ".")
        ]
    elif spec.startswith(("up-to:", "up-to ", "upto:")):
        layer = spec.split(":", 1)[-1].split(" ", 1)[-1].strip()
        if layer not in names:
            raise NetlensError(f"--freeze up-to: no layer '{layer}'{hint(layer, names)}")
        stop = names.index(layer)
        frozen = [n for n in names[: stop + 1] if not layer.startswith(n + ".")]
        frozen += [n for n in names if n.startswith(layer + ".")]
    else:
        raise NetlensError(f"--freeze takes 'backbone' or 'up-to:LAYER', not '{spec}'")
    modules = dict(model.named_modules())
    for n in frozen:
        for p in modules[n].parameters(recurse=False):
            p.requires_grad_(False)
    first = names[0].split(".")[0] if names else ""
    if spec == "backbone" or any(n.split(".")[0] != first for n in frozen):
        for p in model.parameters(recurse=False):  # the root's own: ahead of every layer
            p.requires_grad_(False)
    return frozen


def set_frozen_eval(model: nn.Module, frozen: list[str]) -> None:
    """Put frozen modules in eval mode (call after ``model.train()``)."""
    modules = dict(model.named_modules())
    for n in frozen:
        modules[n].eval()


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def load_init(
    source: str | Path,
    host: PluginHost,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> Lens:
    """The model ``--init`` names (a checkpoint path or ``zoo:NAME``), on CPU.

    A file that names no architecture (a bare state_dict, a ``.safetensors``) is built as the
    run's ``arch`` (with its ``arch_kwargs``); a checkpoint that names one is built as it says.
    """
    from ..models.load import load

    try:
        return load(str(source), host=host, device="cpu")
    except NetlensError as exc:
        if not arch or "holds only weights" not in str(exc):
            raise
    return load(str(source), arch=arch, arch_kwargs=arch_kwargs or None, host=host, device="cpu")


def inherited_arch_kwargs(init: Lens, arch: str) -> dict[str, Any]:
    """The ``--init`` model's architecture options when it is the same architecture.

    So ``--arch resnet --init zoo:fmnist-resnet`` builds the zoo model's widths without
    repeating them; the class count, channels and image size still come from the new data.
    """
    if init.card.get("arch") != arch:
        return {}
    own = ("num_classes", "in_chans", "img_size")
    return {k: v for k, v in (init.card.get("arch_kwargs") or {}).items() if k not in own}


def init_from(model: nn.Module, init: Lens, source: str) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape match from the ``--init`` model.

    Returns the number of tensors copied and the names left fresh (typically the head, when
    the class count differs).
    """
    other = init.model.state_dict()
    own = model.state_dict()
    fit = {k: v for k, v in other.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fit:
        raise NetlensError(f"--init {source}: no weight matches this architecture by name/shape")
    model.load_state_dict(fit, strict=False)
    return len(fit), sorted(set(own) - set(fit))
