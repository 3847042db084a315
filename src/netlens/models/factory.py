"""Build an architecture by name: netlens archs, ``tv:NAME``, timm names, or the user's own code.

``path/to/file.py:ClassName`` and ``package.module:factory`` name the user's own architecture
(a class or a function returning an ``nn.Module``), called with ``arch_kwargs``. Importing that
code runs it, which the user asked for by naming it; names read from inside a model file are
never imported (``user_code=False``). :func:`check_arch` checks a name before anything is built.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ModelLoadError, hint

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = [
    "arch_accepts",
    "aux_heads",
    "check_arch",
    "create_arch",
    "head_num_classes",
    "parse_user_arch",
    "tv_weights",
    "user_module",
]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def tv_weights(name: str) -> tuple[str, str | None]:
    """``"tv:resnet50@IMAGENET1K_V1"`` → ``("tv:resnet50", "IMAGENET1K_V1")``: the architecture
    to build and the torchvision weights entry whose transforms the model's input takes (the
    default's when None); any other name is returned as it is, with None."""
    if not name.startswith("tv:") or "@" not in name:
        return name, None
    arch, _, entry = name.partition("@")
    return arch, entry


def parse_user_arch(name: str) -> tuple[str, str] | None:
    """``"models.py:Net"`` → ``("models.py", "Net")``; None for a netlens/timm/torchvision name."""
    if name.startswith(("tv:", "timm:")) or ":" not in name:
        return None
    target, attr = name.rsplit(":", 1)
    if not _DOTTED.fullmatch(attr):
        return None
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    return (target, attr) if is_file or _DOTTED.fullmatch(target) else None


def check_arch(name: str, host: PluginHost, *, user_code: bool = True) -> None:
    """Fail fast, with hints from the same family, on an architecture name nothing can build.

    Nothing is built: torchvision and timm names are looked up in their registries; the user's
    own ``file.py:Name`` is only checked for the file (its code runs when the model is built).
    """
    if not isinstance(name, str):  # a model object where a name belongs
        what = f"a {type(name).__name__} object" if name is not None else "None"
        raise ModelLoadError(
            f"arch takes an architecture name (resnet18, timm:…, tv:…) or FILE.py:Class, not "
            f"{what}; a model object is loaded as it is (netlens.load(model)), and fine-tuned "
            "from its saved state_dict (--init FILE with the --arch it was built as)"
        )
    user = parse_user_arch(name)
    if user is not None:
        if not user_code:
            raise ModelLoadError(
                f"the file names the architecture '{name}', the user's own code; netlens never "
                "imports code named inside a model file: pass arch (--arch) yourself to run it"
            )
        target = user[0]
        if target.endswith(".py") and not Path(target).expanduser().is_file():
            raise ModelLoadError(f"architecture file not found: {target} (--arch FILE.py:NAME)")
        return
    if name.startswith("tv:"):
        _check_torchvision(*tv_weights(name))
    elif name not in host.archs:
        _check_timm(name.removeprefix("timm:"), host)


def create_arch(
    name: str,
    num_classes: int | None,
    host: PluginHost,
    *,
    user_code: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A freshly initialised (never pretrained) model of architecture ``name``.

    ``tv:alexnet`` → torchvision, a registered netlens arch by its name, ``timm:NAME`` or any
    other timm model name → timm, ``file.py:Class`` / ``package.module:factory`` → the user's own
    code, called with ``kwargs``. ``num_classes=None`` keeps the architecture's default.
    """
    check_arch(name, host, user_code=user_code)
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    user = parse_user_arch(name)
    if user is not None:
        return _call_user(name, _user_factory(*user), extra, num_classes)
    if name.startswith("tv:"):
        import torchvision

        builder = torchvision.models.get_model_builder(tv_weights(name)[0][3:])
        if "weights_backbone" in inspect.signature(builder).parameters:
            extra["weights_backbone"] = None  # segmentation/detection: no ImageNet download
        return builder(weights=None, **extra)
    if name in host.archs:
        return host.archs.get(name)(**extra)
    timm = import_timm()
    return timm.create_model(name.removeprefix("timm:"), pretrained=False, **extra)


# torchvision architectures whose auxiliary heads are optional: the flag and the heads' names
_TV_AUX = {
    "inception_v3": ("aux_logits", ("AuxLogits.",)),
    "googlenet": ("aux_logits", ("aux1.", "aux2.")),
}
_TV_AUX_LOSS = ("aux_loss", ("aux_classifier.",))  # the segmentation models


def aux_heads(name: str, state: dict[str, Any]) -> dict[str, bool]:
    """The torchvision auxiliary-head flag a state_dict was saved with (``aux_loss`` of the
    segmentation models, ``aux_logits`` of Inception v3 and GoogLeNet): whether it holds the
    heads' weights. Empty for other architectures. Built with the default flag instead, the
    strict load fails on the heads' keys (or on their absence)."""
    if not name.startswith("tv:"):
        return {}
    arch = tv_weights(name)[0][3:]
    import torchvision

    if arch in _TV_AUX:
        flag, heads = _TV_AUX[arch]
    elif arch in torchvision.models.list_models(module=torchvision.models.segmentation):
        flag, heads = _TV_AUX_LOSS
    else:
        return {}
    held = any(k.startswith(h) or f".{h}" in k for k in state for h in heads)
    return {flag: held}


def stale_aux_heads(name: str, state: dict[str, Any], num_classes: int | None) -> tuple[str, ...]:
    """The name prefixes of torchvision auxiliary heads (Inception v3's, GoogLeNet's) whose
    class count is not the model's: a fine-tune that replaced ``model.fc`` only, as most do,
    keeps the 1000-class ImageNet heads beside its new one. They serve training alone (the
    model in eval mode returns its main head's logits), so the model is built without them;
    empty when they fit or are absent."""
    arch = tv_weights(name)[0].removeprefix("tv:")
    if not name.startswith("tv:") or arch not in _TV_AUX or num_classes is None:
        return ()
    heads = _TV_AUX[arch][1]
    last = {k: v for k, v in state.items() if k.startswith(heads) and k.endswith("fc.weight")}
    last |= {k: v for k, v in state.items() if k.startswith(heads) and k.endswith("fc2.weight")}
    if any(getattr(v, "ndim", 0) == 2 and v.shape[0] != num_classes for v in last.values()):
        return heads
    return ()


# torchvision architectures that rescale their input inside when built for their ImageNet
# weights (``transform_input=True``: ImageNet-normalised pixels → the [-1, 1] Google trained on)
TV_TRANSFORM_INPUT = ("inception_v3", "googlenet")


def tv_input_transform(name: str, given: dict[str, Any]) -> dict[str, bool]:
    """``{"transform_input": True}`` for torchvision's Inception v3 and GoogLeNet when the user
    did not say: torchvision builds them so for their weights (and so for every model
    fine-tuned from them), which a state_dict does not record; built without it, such a model
    sees other inputs than it was trained on. Empty for other architectures."""
    arch = tv_weights(name)[0]
    if arch.removeprefix("tv:") not in TV_TRANSFORM_INPUT or not arch.startswith("tv:"):
        return {}
    return {} if "transform_input" in given else {"transform_input": True}


# -- name checks -----------------------------------------------------------------------------
def _close(name: str, pool: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.75)


def _check_torchvision(arch: str, entry: str | None = None) -> None:
    """``arch`` (``tv:NAME``) a torchvision builder, and ``entry`` (``IMAGENET1K_V1``) one of
    its weights enum's members when given; one line otherwise."""
    import torchvision

    name = arch[3:]
    known = torchvision.models.list_models()
    if name not in known:
        hits = [f"tv:{h}" for h in _close(name, known)]
        tip = f"; did you mean {', '.join(hits)}?" if hits else " (see list_models())"
        raise ModelLoadError(f"unknown torchvision architecture 'tv:{name}'{tip}")
    if entry is not None:
        tv_weights_entry(name, entry)


def tv_weights_entry(name: str, entry: str) -> Any:
    """Member ``entry`` of torchvision architecture ``name``'s weights enum (no download);
    one line listing the valid ones otherwise."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError, AttributeError):
        raise ModelLoadError(
            f"tv:{name} has no weights enum, so tv:{name}@{entry} names nothing: use tv:{name}"
        ) from None
    members = list(enum.__members__)  # DEFAULT is an alias: not listed
    if entry not in members:
        raise ModelLoadError(
            f"unknown weights entry '{entry}' for tv:{name} (tv:{name}@ENTRY takes one of "
            f"{', '.join(m for m in members if m != 'DEFAULT')}, or DEFAULT)"
        )
    return enum[entry]


def import_timm() -> Any:
    """``import timm`` without the "IProgress not found ... ipywidgets" warning that its hub
    client's ``tqdm.auto`` prints in Jupyter (netlens draws no tqdm bars, needs no ipywidgets)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import timm
    return timm


def _check_timm(name: str, host: PluginHost) -> None:
    timm = import_timm()

    if timm.is_model(name):
        return
    ours = list(host.archs)
    hits = _close(name, ours + timm.list_models())
    tv = _torchvision_names()
    if name in tv:
        tip = f"; torchvision's {name} is tv:{name}"
    elif hits:
        tip = f"; did you mean {', '.join(hits)}?"
    else:
        tv_hits = _close(name, tv, n=3)
        tip = f"; did you mean {', '.join('tv:' + h for h in tv_hits)}?" if tv_hits else ""
    raise ModelLoadError(
        f"unknown architecture '{name}'{tip} (netlens: {', '.join(ours) or 'none'}; torchvision "
        "as tv:NAME; any timm model name; your own as file.py:Class)"
    )


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models()


# -- the user's own code ---------------------------------------------------------------------
def user_module(target: str) -> Any:
    """The file (``models.py``) or module (``pkg.models``) an ``--arch TARGET:NAME`` names,
    imported."""
    return _import_file(Path(target)) if target.endswith(".py") else _import_module(target)


def _user_factory(target: str, attr: str) -> Callable[..., Any]:
    module = user_module(target)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            pool = [
                n
                for n, v in vars(module).items()
                if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
            ]
            raise ModelLoadError(f"{target} has no '{attr}'{hint(attr, pool)}")
    if not callable(obj):
        raise ModelLoadError(f"{target}:{attr} is a {type(obj).__name__}, not a class or function")
    return obj


def _import_file(path: Path) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"architecture file not found: {path} (--arch FILE.py:NAME)")
    tag = hashlib.sha1(f"{path}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:10]
    modname = f"netlens_user_arch_{path.stem}_{tag}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path} as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error, one line
        del sys.modules[modname]
        raise ModelLoadError(f"importing {path.name} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _import_module(name: str) -> Any:
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # `package.module` in the current folder, as `python -m` finds it
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ModelLoadError(
                f"cannot import module '{name}': not installed and not in {cwd} "
                "(or name a file: --arch path/to/file.py:NAME)"
            ) from None
        raise ModelLoadError(f"importing {name} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's code: any error, one line
        raise ModelLoadError(f"importing {name} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _call_user(
    name: str, factory: Callable[..., Any], kwargs: dict[str, Any], num_classes: int | None
) -> nn.Module:
    if num_classes is not None and not _accepts(factory, "num_classes"):
        kwargs.pop("num_classes")  # the state_dict's head decides whether it fits
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error, one line
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ModelLoadError(
            f"{name}({args}) failed: {type(exc).__name__}: {exc}; check --arch-kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{name} returned a {type(model).__name__}, not an nn.Module")
    return model


def arch_accepts(name: str, arg: str) -> bool:
    """Whether the user architecture ``name`` (``file.py:Class``, ``package.module:factory``)
    takes the keyword ``arg``; False for any other name."""
    user = parse_user_arch(name)
    return user is not None and _accepts(_user_factory(*user), arg)


def _accepts(factory: Callable[..., Any], arg: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == arg or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def head_num_classes(state: dict[str, Any], fresh: nn.Module) -> int | None:
    """Number of classes a state_dict was trained for, read off where it differs from ``fresh``.

    The classifier is the last weight whose shape differs from the freshly built model's; its
    first dimension is the class count. When every shared shape matches, the last weight
    ``fresh`` lacks (an architecture built without a head by default, such as timm's SigLIP
    and DINOv2 encoders, ``num_classes=0``) is the classifier. None when the file has neither.
    """
    ref = fresh.state_dict()

    def is_weight(k: str, v: Any) -> bool:
        return hasattr(v, "shape") and k.endswith("weight")

    differing = [
        k
        for k, v in state.items()
        if k in ref and is_weight(k, v) and tuple(v.shape) != tuple(ref[k].shape)
    ]
    extra = [k for k, v in state.items() if k not in ref and is_weight(k, v) and v.dim() >= 2]
    found = differing or extra
    if not found:
        return None
    return int(state[found[-1]].shape[0])
