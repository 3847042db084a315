"""``netlens.save``: write a model (or Lens) as a netlens checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import NetlensError
from .checkpoint import make_checkpoint, write_checkpoint


def save(
    obj: Any,
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    record: dict[str, Any] | None = None,
) -> Path:
    """Save a Lens or ``nn.Module`` as a netlens checkpoint (loadable with ``netlens.load``).

    ``arch`` names how to rebuild the module (a timm name, ``tv:NAME`` or a netlens arch); a
    Lens loaded from a file knows it already.

    Example:
        >>> netlens.save(model, "model.pt", arch="resnet18", classes=["cat", "dog"])
    """
    from ..lens import Lens

    preprocess = None
    if isinstance(obj, Lens):
        arch = arch or obj.card.get("arch")
        arch_kwargs = arch_kwargs or obj.card.get("arch_kwargs")
        classes = classes if classes is not None else obj.classes
        record = record if record is not None else obj.card.get("record")
        preprocess = obj.transform.to_dict()
        obj = obj.model
    if not isinstance(obj, nn.Module):
        raise NetlensError(f"netlens.save takes a Lens or nn.Module, not a {type(obj).__name__}")
    if not arch:
        raise NetlensError("say how to rebuild the model: netlens.save(model, path, arch=NAME)")
    arch_kwargs = dict(arch_kwargs or {})
    if "num_classes" not in arch_kwargs:
        arch_kwargs["num_classes"] = len(classes) if classes else output_classes(obj, preprocess)
    ckpt = make_checkpoint(
        obj,
        arch=arch,
        arch_kwargs=arch_kwargs,
        classes=classes,
        preprocess=preprocess,
        record=record,
    )
    return write_checkpoint(ckpt, path)


def output_classes(model: nn.Module, preprocess: dict[str, Any] | None = None) -> int:
    """The number of outputs of a classifier, by one dry forward."""
    import torch

    from ..layers import eval_mode, example_input

    if preprocess:
        p = next(model.parameters())
        x = torch.zeros(1, preprocess["channels"], *preprocess["size"], device=p.device)
    else:
        x = example_input(model)
    with torch.no_grad(), eval_mode(model):
        return int(model(x).shape[-1])
