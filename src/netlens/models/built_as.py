"""How a model was built, read off its weights where the architecture's name does not say.

A state_dict keeps tensors, not the options its model was built with. Some options show in
the tensors' names and shapes, and the model is built as they say: a first convolution taking
1 or 4 channels (timm's ``in_chans``, a torchvision stem replaced for X-rays), a head replaced
by one ``nn.Linear`` (``model.classifier = nn.Linear(1280, 5)``), no head at all (timm's
``num_classes=0``). Options that leave no trace in the tensors (``global_pool``) cannot be
read, and are the architecture's defaults unless the user gives them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .factory import create_arch

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost
    from .load import LoadRequest

__all__ = [
    "headless",
    "is_stem",
    "is_timm",
    "on_meta",
    "replace_stem",
    "set_module",
    "single_linear_head",
    "stem_channels",
]


def stem_channels(fresh: nn.Module, state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(name, channels) of the first convolution when the weights give it other input
    channels than the architecture's default (a timm model made with ``in_chans=1``, a
    torchvision model whose ``conv1`` was replaced for grayscale X-rays); None when they fit."""
    for name, m in fresh.named_modules():
        if isinstance(m, nn.Conv2d):
            w = state.get(f"{name}.weight")
            if w is None or w.ndim != 4 or w.shape[0] != m.out_channels:
                return None
            have = int(w.shape[1]) * m.groups
            return (name, have) if have != m.in_channels and 1 <= have <= 4 else None
    return None


def headless(state: dict[str, torch.Tensor], fresh: nn.Module) -> bool:
    """Whether ``state`` holds every weight of ``fresh`` but its classifier's (timm's
    ``get_classifier()``, when it has weights)."""
    get = getattr(fresh, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or not list(head.parameters()):
        return False
    name = next((n for n, m in fresh.named_modules() if m is head), None)
    if not name:
        return False
    missing = {k for k in fresh.state_dict() if k not in state}
    return bool(missing) and all(k.startswith(f"{name}.") for k in missing)


def is_stem(key: str, stem: tuple[str, int] | None) -> bool:
    return stem is not None and key == f"{stem[0]}.weight"


def on_meta(arch: str, n: int | None, req: LoadRequest, kwargs: dict[str, Any]) -> nn.Module:
    """``arch`` built on the meta device (no memory), or on the CPU where its constructor
    reads tensor values (torchvision's RegNet rounds its widths with ``.tolist()``)."""
    try:
        with torch.device("meta"):
            return create_arch(arch, n, req.host, **kwargs)
    except NotImplementedError:
        return create_arch(arch, n, req.host, **kwargs)


def is_timm(arch: str, host: PluginHost) -> bool:
    from .factory import parse_user_arch

    return not arch.startswith("tv:") and parse_user_arch(arch) is None and arch not in host.archs


def replace_stem(model: nn.Module, name: str, channels: int) -> None:
    """The first convolution again, taking ``channels`` inputs (its weights come from the file)."""
    old = model.get_submodule(name)
    new = nn.Conv2d(
        channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        old.dilation,  # type: ignore[arg-type]
        old.groups if old.groups == 1 else channels,
        old.bias is not None,
        old.padding_mode,
    )
    set_module(model, name, new)


def single_linear_head(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[str, nn.Linear] | None:
    """(name, new head) when the model's last module was replaced by one ``nn.Linear`` before
    training (``model.classifier = nn.Linear(1280, 5)`` for torchvision's EfficientNet, whose
    classifier is ``Dropout`` + ``Linear``; a biased ``Linear`` for MaxViT's unbiased one): the
    file's weights under that name are exactly a 2-d ``weight`` and maybe a ``bias``, fed by as
    many features as the original head's last ``Linear`` takes, and every other weight fits."""
    skip = "num_batches_tracked"
    own = model.state_dict()
    extra = [k for k in state if k not in own and not k.endswith(skip)]
    missing = [k for k in own if k not in state and not k.endswith(skip)]
    if not extra:
        return None
    module = ".".join(os.path.commonprefix([k.split(".")[:-1] for k in extra + missing]))
    held = {k for k in state if k.startswith(f"{module}.")}
    if not module or held not in ({f"{module}.weight"}, {f"{module}.weight", f"{module}.bias"}):
        return None
    ours = list(own)
    first = next((i for i, k in enumerate(ours) if k.startswith(f"{module}.")), None)
    if first is None or not all(k.startswith(f"{module}.") for k in ours[first:]):
        return None  # not the model's last module: not its head
    if any(k not in state or state[k].shape != own[k].shape for k in ours[:first]):
        return None  # the body differs too
    w, b = state[f"{module}.weight"], state.get(f"{module}.bias")
    old = model.get_submodule(module)
    lins = [m for m in ([old] + list(old.modules())) if isinstance(m, nn.Linear)]
    if w.dim() != 2 or not lins or lins[-1].in_features != w.shape[1]:
        return None
    if b is not None and tuple(b.shape) != (w.shape[0],):
        return None
    return module, nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=b is not None)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
