"""Turn a model source into a :class:`~netlens.lens.Lens`.

Sources, tried in order by loader plugins (netlens' own loaders last, so plugins can override):
a netlens checkpoint; a bare state_dict (``.pt``/``.pth``/``.safetensors``) plus ``arch``; a
whole pickled module, only with ``trust=True`` (unpickling runs code); an ``nn.Module``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafeModelError
from ..images import Preprocess
from ..lens import _check_task
from .checkpoint import check_checkpoint, is_checkpoint
from .factory import create_arch, head_num_classes

if TYPE_CHECKING:
    from ..lens import Lens
    from ..plugins.manager import PluginHost

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadedModel:
    """What a loader returns: the module and what is known about its input and classes."""

    model: nn.Module
    preprocess: Preprocess | None = None
    classes: list[str] | None = None
    card: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadRequest:
    """What the user asked for; ``payload`` reads the file once, safely, for all loaders."""

    source: Path
    host: PluginHost
    arch: str | None = None
    num_classes: int | None = None
    trust: bool = False

    @cached_property
    def payload(self) -> Any:
        """The file read with ``weights_only=True`` (an exception object when it refused)."""
        if self.source.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                return load_file(str(self.source))
            except Exception as exc:  # noqa: BLE001
                return ModelLoadError(f"cannot read {self.source} as safetensors: {exc}")
        try:
            return torch.load(self.source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if _is_pickle(self.source):
                return exc  # a real pickle beyond plain tensors: only with trust
            return ModelLoadError(f"cannot read {self.source}: not a PyTorch file or corrupt")
        except Exception as exc:  # noqa: BLE001 - corrupt or not a torch file
            return ModelLoadError(
                f"cannot read {self.source} as a PyTorch file ({type(exc).__name__}); "
                "is it a model file?"
            )


def _is_pickle(path: Path) -> bool:
    """True for a torch zip archive or a well-formed pickle stream (parsed, never executed)."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    try:
        with path.open("rb") as fh:
            for _ in pickletools.genops(fh):
                pass
    except Exception:  # noqa: BLE001 - anything unparsable is simply not a pickle
        return False
    return True


def default_preprocess(model: nn.Module, arch: str | None = None) -> Preprocess:
    """Preprocessing for a model that carries no spec: timm's data config, else ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg:
        from timm.data import resolve_data_config

        dc = resolve_data_config({}, model=model)
        c, h, w = dc["input_size"]
        return Preprocess(
            size=(h, w),
            channels=c,
            mean=tuple(dc["mean"]),
            std=tuple(dc["std"]),
            crop_pct=float(dc.get("crop_pct", 1.0)),
            interpolation=str(dc.get("interpolation", "bilinear")),
        )
    if arch and arch.startswith("tv:"):
        return Preprocess(size=(224, 224), crop_pct=0.875)
    from ..layers import guess_input_size

    c, h, w = guess_input_size(model)
    mean, std = ((0.5,) * c, (0.5,) * c) if c != 3 else (Preprocess.mean, Preprocess.std)
    return Preprocess(size=(h, w), channels=c, mean=mean, std=std)


# -- built-in loaders ------------------------------------------------------------------------
def load_netlens_checkpoint(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A netlens checkpoint (see :mod:`netlens.models.checkpoint`)."""
    ckpt = req.payload
    if not is_checkpoint(ckpt):
        return None
    check_checkpoint(ckpt, source)
    kwargs = dict(ckpt.get("arch_kwargs") or {})
    model = create_arch(ckpt["arch"], kwargs.pop("num_classes", None), req.host, **kwargs)
    _load_state(model, ckpt["state_dict"], source)
    pre = Preprocess.from_dict(ckpt["preprocess"]) if ckpt.get("preprocess") else None
    card = {
        "arch": ckpt["arch"],
        "arch_kwargs": ckpt.get("arch_kwargs") or {},
        "record": ckpt.get("record", {}),
    }
    return LoadedModel(model, pre or default_preprocess(model), ckpt.get("classes"), card)


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    return None


def load_state_dict_file(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A bare state_dict or safetensors file plus ``arch``; classes read off the head."""
    state = _state_dict_of(req.payload)
    if state is None:
        return None
    if not req.arch:
        raise ModelLoadError(
            f"{source.name} holds only weights (a state_dict); say which architecture with "
            "--arch NAME (a timm name like resnet18, tv:alexnet for torchvision, or a netlens "
            "arch like lenet5)"
        )
    n = req.num_classes
    if n is None:
        n = head_num_classes(state, create_arch(req.arch, None, req.host))
    model = create_arch(req.arch, n, req.host)
    _load_state(model, state, source)
    return LoadedModel(model, default_preprocess(model, req.arch), None, {"arch": req.arch})


def load_pickled_module(source: Path, req: LoadRequest) -> LoadedModel | None:
    """A whole pickled ``nn.Module``: refused unless ``trust=True`` (unpickling runs code)."""
    if not isinstance(req.payload, pickle.UnpicklingError):
        return None
    if not req.trust:
        raise UnsafeModelError(
            f"{source.name} is a pickled object, and unpickling runs whatever code it contains; "
            "load it only if you trust its author, with --trust (trust=True in Python)"
        )
    obj = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{source.name} unpickled to a {type(obj).__name__}, not a model")
    return LoadedModel(obj, default_preprocess(obj), None, {"arch": type(obj).__name__})


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ModelLoadError(
            f"the weights in {source.name} do not fit {type(model).__name__}: "
            f"{first[0].strip()[:200]}; check --arch (and --num-classes)"
        ) from None


# -- entry point -----------------------------------------------------------------------------
def load(
    source: str | Path | nn.Module | None = None,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    device: str | torch.device | None = None,
    host: PluginHost | None = None,
    task: str | None = None,
    output: str | int | None = None,
) -> Lens:
    """Load a model into a :class:`Lens`.

    Args:
        source: a file path, ``zoo:NAME``, an ``nn.Module``, or None for the default zoo model.
        arch: architecture for a bare state_dict (timm name, ``tv:NAME``, netlens arch).
        num_classes: override the class count read off the state_dict's head.
        trust: allow unpickling a whole module (runs code from the file).
        device: where to run; default CUDA when available, else CPU.
        task: ``multiclass``, ``multilabel``, ``binary``, ``regression`` or ``dense`` (default:
            read off the output's shape; see :mod:`netlens.targets`).
        output: which output to explain when forward returns a dict, tuple or object.

    Example:
        >>> lens = netlens.load("model.pt", arch="tv:alexnet")
        >>> lens.cam("cat.jpg").show()
    """
    from ..lens import Lens
    from ..plugins.manager import PluginHost

    host = host or PluginHost()
    if isinstance(source, nn.Module):
        return Lens(source, host=host, task=task, output=output)
    if source is None or str(source).startswith("zoo:"):
        from . import zoo

        lens = zoo.load_zoo(
            str(source or "").removeprefix("zoo:") or None, host=host, device=device
        )
        lens.task, lens.output_key = _check_task(task), output
        return lens
    loaded = load_file(Path(source), host, arch=arch, num_classes=num_classes, trust=trust)
    loaded.model.eval()
    lens = Lens(
        loaded.model,
        loaded.preprocess,
        loaded.classes,
        host=host,
        card={"source": str(source), **loaded.card},
        name=Path(source).stem,
        task=task,
        output=output,
    )
    return lens.to(device)


def load_file(
    path: Path,
    host: PluginHost,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Run the loaders on ``path`` until one answers."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path} (or use zoo:NAME; `netlens zoo list`)")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; pass the model file inside it")
    req = LoadRequest(path, host, arch=arch, num_classes=num_classes, trust=trust)
    for loader in host.loaders:
        loaded = loader(path, req)
        if loaded is not None:
            return loaded
    if isinstance(req.payload, Exception):
        err = req.payload
        raise err if isinstance(err, ModelLoadError) else ModelLoadError(str(err))
    raise ModelLoadError(
        f"{path.name} is neither a netlens checkpoint, a state_dict nor a module; "
        "save with netlens.save(...) or torch.save(model.state_dict(), path)"
    )
