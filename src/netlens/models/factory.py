"""Build an architecture by name: netlens archs, ``tv:NAME`` (torchvision) or timm names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ModelLoadError, hint

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost


def create_arch(name: str, num_classes: int | None, host: PluginHost, **kwargs: Any) -> nn.Module:
    """A freshly initialised (never pretrained) model of architecture ``name``.

    ``tv:alexnet`` → torchvision, a registered netlens arch by its name, ``timm:NAME`` or any
    other timm model name → timm. ``num_classes=None`` keeps the architecture's default.
    """
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if name.startswith("tv:"):
        return _torchvision(name[3:], extra)
    if name in host.archs:
        return host.archs.get(name)(**extra)
    return _timm(name.removeprefix("timm:"), extra, host)


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise ModelLoadError(f"unknown torchvision architecture '{name}'{hint(name, known)}")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def import_timm() -> Any:
    """``import timm`` without the "IProgress not found ... ipywidgets" warning that its hub
    client's ``tqdm.auto`` prints in Jupyter (netlens draws no tqdm bars, needs no ipywidgets)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import timm
    return timm


def _timm(name: str, kwargs: dict[str, Any], host: PluginHost) -> nn.Module:
    timm = import_timm()

    if not timm.is_model(name):
        pool = list(host.archs) + timm.list_models()
        raise ModelLoadError(
            f"unknown architecture '{name}'{hint(name, pool)} (netlens: "
            f"{', '.join(host.archs) or 'none'}; torchvision as tv:NAME; any timm model name)"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def head_num_classes(state: dict[str, Any], fresh: nn.Module) -> int | None:
    """Number of classes a state_dict was trained for, read off where it differs from ``fresh``.

    The classifier is the last weight whose shape differs from the freshly built model's; its
    first dimension is the class count. None when every shape already matches.
    """
    ref = fresh.state_dict()
    differing = [
        k
        for k, v in state.items()
        if k in ref
        and hasattr(v, "shape")
        and tuple(v.shape) != tuple(ref[k].shape)
        and k.endswith("weight")
    ]
    if not differing:
        return None
    return int(state[differing[-1]].shape[0])
