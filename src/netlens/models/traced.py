"""A ``torch.fx`` GraphModule recognised as the torchvision or timm architecture it was traced from.

``torch.fx.symbolic_trace(resnet18())`` makes a GraphModule named ``ResNet``; pickled whole
(``torch.save(gm, path)``), it unpickles as a ``GraphModule``, and neither its class nor the
model's ``pretrained_cfg`` says where it came from. What it keeps: the layers its graph calls
(``nn.Conv2d``, ``nn.ReLU``, ... of their own classes, under their original names: timm's
ResNet calls ``act1``, torchvision's ``relu``), and the weights under their original names (the
modules between are plain ``nn.Module`` containers). Shapes alone cannot tell timm's ResNet-18
from torchvision's (the same weights), so a candidate is taken only when, traced the same way,
it has exactly the traced model's layers (names and classes) and weights (names and shapes;
the classifier's may differ, a fine-tuned head). Candidates, found without building anything:
the torchvision builders whose default weights have as many parameters (its classifier counted
as theirs), and the timm architectures of the same names (timm's ``resnet18`` and
``efficientnet_b0`` have torchvision's parameter counts). Anything else (a timm model of its own
naming, a GraphModule edited after tracing, an Inception traced without its auxiliary head) is
not recognised, and its preprocessing stays a guess that says so.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import torch
from torch import fx, nn

from ..fx_trace import symbolic_trace
from ..preprocess.spec import Preprocess

__all__ = ["traced_arch", "traced_spec"]

_SKIP = "num_batches_tracked"  # used by a traced BatchNorm only in training mode


def traced_spec(gm: nn.Module) -> Preprocess | None:
    """The preprocessing of the torchvision or timm architecture a GraphModule was traced from
    (its weights' transforms; timm's default pretrained config), as its untraced twin gets it;
    None when it is not recognised for certain."""
    from ..preprocess.from_model import _fit_channels, timm_spec
    from ..preprocess.torchvision_spec import torchvision_spec

    found = traced_arch(gm)
    if found is None:
        return None
    arch, fresh = found
    if arch.startswith("tv:"):
        spec = torchvision_spec(arch[3:])
        if spec is None:
            return None
        note = f" (recognised as {arch} by its traced layers)"
    else:
        spec = timm_spec(fresh)
        note = f" (recognised as timm's {arch} by its traced layers{_tags_differ(arch)})"
    return _fit_channels(dataclasses.replace(spec, source=spec.source + note), gm)


def _tags_differ(arch: str) -> str:
    """What to say when ``arch``'s pretrained tags preprocess differently (a traced model does
    not record the tag it was made with: timm's default is taken, as ``create_model(arch)``
    makes it); nothing when they all preprocess alike."""
    from .factory import import_timm

    keys = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")
    seen = set()
    try:
        timm = import_timm()
        for name in timm.list_pretrained(f"{arch}.*"):
            cfg = timm.models.get_pretrained_cfg(name)
            seen.add(tuple(repr(getattr(cfg, k, None)) for k in keys))
    except Exception:  # noqa: BLE001 - timm without this registry: nothing to say
        return ""
    if len(seen) <= 1:
        return ""
    return (
        "; its pretrained tags preprocess differently and a traced model does not record "
        "which it was made with: the default tag's"
    )


def traced_arch(gm: nn.Module) -> tuple[str, nn.Module] | None:
    """(``tv:NAME`` or timm's ``NAME``, that architecture built on the meta device) for a
    GraphModule traced from exactly that architecture; None otherwise, or when several fit."""
    if not isinstance(gm, fx.GraphModule):
        return None
    try:
        own = _structure(gm)
        names = _torchvision_names(gm)
    except Exception:  # noqa: BLE001 - a GraphModule of unusual parts: not recognised
        return None
    fits: list[tuple[str, nn.Module]] = []
    for name in names:
        for arch in (f"tv:{name}", name):
            fresh = _built(arch)
            if fresh is not None and _same(own, fresh):
                fits.append((arch, fresh))
    return fits[0] if len(fits) == 1 else None


def _torchvision_names(gm: nn.Module) -> list[str]:
    """The torchvision builders whose default weights have as many parameters as the
    GraphModule, its classifier counted as theirs (a fine-tuned head): the candidates
    :func:`_same` decides between (their metadata only; nothing is built)."""
    import torchvision

    params = dict(gm.named_parameters())
    n = sum(p.numel() for p in params.values())
    weight = next((k for k in reversed(params) if k.endswith(".weight")), None)
    found = []
    listed = torchvision.models.list_models
    for name in listed(module=torchvision.models) + listed(module=torchvision.models.segmentation):
        try:
            meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        except (ValueError, KeyError, AttributeError):
            continue
        want, out = meta.get("num_params"), len(meta.get("categories") or ())
        sizes = {n}
        if weight is not None and out:  # its head with the weights' classes instead
            w, b = params[weight], params.get(weight[: -len("weight")] + "bias")
            sizes.add(
                n - w.numel() + w[0].numel() * out - (b.numel() - out if b is not None else 0)
            )
        if want in sizes:
            found.append(name)
    return found


def _built(arch: str) -> nn.Module | None:
    """``arch`` (``tv:NAME`` or a timm name) built on the meta device with its defaults (no
    download); None when it is not one, or does not build there."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if arch.startswith("tv:"):
                import torchvision

                builder = torchvision.models.get_model_builder(arch[3:])
                params = inspect.signature(builder).parameters
                options = {
                    k: v for k, v in (("weights_backbone", None), ("aux_loss", True)) if k in params
                }
                return builder(**options)
            from .factory import import_timm

            timm = import_timm()
            return timm.create_model(arch) if timm.is_model(arch) else None
    except Exception:  # noqa: BLE001 - not buildable on meta (or not installed): not a candidate
        return None


def _structure(model: nn.Module) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The layers of their own class (not the plain containers a trace leaves) by name, and
    the weights' shapes by name."""
    layers = {
        name: f"{type(m).__module__}.{type(m).__qualname__}"
        for name, m in model.named_modules()
        if name and type(m) is not nn.Module and not isinstance(m, fx.GraphModule)
    }
    shapes = {
        k: tuple(getattr(v, "shape", ()))
        for k, v in model.state_dict().items()
        if not k.endswith(_SKIP)
    }
    return layers, shapes


def _same(own: tuple[dict[str, str], dict[str, tuple[int, ...]]], fresh: nn.Module) -> bool:
    """Whether ``fresh``, traced as ``torch.fx.symbolic_trace`` does (in eval mode, else in
    training mode), has exactly the layers and weights ``own`` describes (the classifier's
    shapes aside: the last weight and bias)."""
    layers, shapes = own
    head = set(list(shapes)[-2:])
    for training in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = symbolic_trace(fresh.train(training))
        except Exception:  # noqa: BLE001 - not traceable: it cannot be what was traced
            return False
        their_layers, theirs = _structure(traced)
        if their_layers != layers or theirs.keys() != shapes.keys():
            continue
        if all(theirs[k] == v for k, v in shapes.items() if k not in head):
            return True
    return False
