"""The netlens checkpoint: one ``.pt`` dict that ``torch.load(weights_only=True)`` can read.

Keys: ``format`` (``"netlens-checkpoint"``), ``version``, ``arch`` and ``arch_kwargs``,
``state_dict``, ``classes``, ``preprocess`` (a :class:`~netlens.images.Preprocess` dict) and
``record`` (free-form JSON-able training record: command, data, epochs, metrics, device, time).

Reading one never trusts its metadata: :func:`~.validate.validate_checkpoint` checks every
field, and :func:`build_checkpoint_model` builds the model only once its shapes, computed on
the meta device, match the tensors in the file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..naming import display_path
from .meta import build_within, shapes_on_meta
from .validate import FORMAT, VERSION, CheckpointMeta, validate_checkpoint

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointMeta",
    "build_checkpoint_model",
    "is_checkpoint",
    "make_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
]

_BUILD_SLACK = 64 << 20  # init temporaries of an honest model (its buffers are in the shapes)


def is_checkpoint(obj: Any) -> bool:
    """True for a dict written by :func:`write_checkpoint`."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (tensors copied to CPU, contiguous): the network inside
    its ``torch.compile`` / DataParallel wrappers, with the effective weights of pruned and
    weight- or spectral-normed layers (see :mod:`.effective_weights`), so that the ``arch``
    rebuilt loads them as they are."""
    from .effective_weights import effective_state
    from .wrappers import unwrap

    net = unwrap(model)[0]
    state = effective_state(net.state_dict(), f"the {type(net).__name__}", note=False)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": state,
        "classes": list(classes) if classes is not None else None,
        "preprocess": dict(preprocess or {}),
        "record": dict(record or {}),
    }


def write_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (a temp file renamed into place), so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(
    ckpt: dict[str, Any], path: Path, host: PluginHost, build_arch: str | None = None
) -> CheckpointMeta:
    """Validate a loaded checkpoint dict for building ``build_arch`` (default: its own arch).

    A netlens arch's own parameters are allowed as ``arch_kwargs`` too; for the user's own
    ``file.py:Class`` (named by the user) any option name that does not load files is.
    """
    from .arch_options import signature_options
    from .effective_weights import effective_state
    from .factory import parse_user_arch

    arch = build_arch or ckpt.get("arch")
    extra: list[str] | None = []
    if isinstance(arch, str) and parse_user_arch(arch) is not None:
        extra = None
    elif isinstance(arch, str) and arch in host.archs:
        extra = signature_options(host.archs.get(arch))
    meta = validate_checkpoint(ckpt, path, extra)
    # an earlier netlens.save of a pruned or weight-normed model kept the parts of its weights
    state = effective_state(meta.state_dict, display_path(Path(path).name))
    return meta if state is meta.state_dict else replace(meta, state_dict=state)


def build_checkpoint_model(
    meta: CheckpointMeta,
    host: PluginHost,
    path: Path,
    *,
    arch: str | None = None,
    user_code: bool = False,
) -> nn.Module:
    """The model ``meta`` describes (or ``arch`` with its kwargs), built only when it fits the
    weights in the file.

    Shapes come from a build on the meta device first (no memory); a mismatch with the file is
    one line. Where an architecture cannot be built on meta (and for the user's own code, which
    is never imported under the meta device), the real build runs under an allocation budget
    of twice the file's weights (plus slack) instead.
    """
    from .deploy_form import deployed, in_deploy_form
    from .factory import check_arch, create_arch, parse_user_arch

    arch = arch or meta.arch
    kwargs = dict(meta.arch_kwargs)
    num_classes = kwargs.pop("num_classes", None)
    name = display_path(path.name)
    check_arch(arch, host, user_code=user_code)  # imports registries outside the meta device

    deploy = in_deploy_form(meta.state_dict)  # timm's fused RepVGG/MobileOne/FastViT

    def build() -> nn.Module:
        return deployed(create_arch(arch, num_classes, host, user_code=user_code, **kwargs), deploy)

    shapes = None if parse_user_arch(arch) else shapes_on_meta(build)
    if shapes is not None:
        problem = shapes.mismatch(meta.state_dict)
        if problem:
            raise ModelLoadError(
                f"the weights in {name} do not fit the architecture its metadata describes "
                f"({arch}{_kwargs_text(meta.arch_kwargs)}): {problem}; the checkpoint is "
                "inconsistent (re-save it with netlens.save)"
            )
    limit = 2 * max(meta.nbytes, shapes.nbytes if shapes else 0) + _BUILD_SLACK
    limit *= 4 if deploy else 1  # built unfused, then fused: both forms and the fusion's copies
    model = build_within(build, limit, f"'{arch}' from {name}")
    dtype = saved_dtype(meta.state_dict)
    return model.to(dtype) if dtype is not None else model


def saved_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The one floating precision other than float32 that every floating tensor in ``state``
    has (a ``model.half()`` saved with netlens.save), else None: the model is built in it, so
    that it computes as the saved one did."""
    found = {t.dtype for t in state.values() if t.is_floating_point()}
    return next(iter(found)) if len(found) == 1 and torch.float32 not in found else None


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return ""
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f" with {text[:120]}{'...' if len(text) > 120 else ''}"
