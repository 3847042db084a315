"""The input size a model was built for, read off its modules (helpers of
:mod:`netlens.preprocess.from_model`): ``img_size`` of a patch embedding, or, for timm models
whose attention is bound to the map's size (LeViT, GCViT), that size times the stride before
it, checked by a dry forward."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["fixed_size_hint", "patch_embed_size", "sized", "stage_size"]


def sized(size: Any) -> tuple[int, ...] | None:
    """``size`` (an int, or 2–3 ints) as a tuple of ints; None for anything else."""
    if isinstance(size, bool):
        return None
    if isinstance(size, int):
        return (size, size) if size > 0 else None
    if isinstance(size, (tuple, list, torch.Size)) and len(size) in (2, 3):
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            return tuple(int(v) for v in size)
    return None


def patch_embed_size(model: nn.Module) -> Any:
    """The ``img_size`` of the model's first ``patch_embed*`` module that records one."""
    embed = getattr(model, "patch_embed", None)
    if isinstance(embed, nn.Module) and getattr(embed, "img_size", None) is not None:
        return embed.img_size
    for name, m in model.named_modules():
        if name.rpartition(".")[2].startswith("patch_embed") and sized(
            getattr(m, "img_size", None)
        ):
            return m.img_size
    return None


def stage_size(model: nn.Module, configured: tuple[int, int]) -> tuple[int, int] | None:
    """The input size a timm model with size-bound attention was built for (its
    ``create_model(..., img_size=)``), when its data config's ``configured`` size does not
    run: the first module recording its map's size (LeViT's attention ``resolution``, GCViT's
    stage ``feat_size``) times the stride of the layers registered before it, if the model
    runs at that size (one dry forward at each size, only when they differ). None otherwise.
    """
    stride, feat = [1, 1], None
    for m in model.modules():
        for attr in ("feat_size", "resolution"):
            feat = sized(getattr(m, attr, None))
            if feat is not None and len(feat) == 2:
                break
            feat = None
        if feat is not None:
            break
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
            stride = [stride[0] * int(s[0]), stride[1] * int(s[-1])]
    if feat is None:
        return None
    size = (feat[0] * stride[0], feat[1] * stride[1])
    if size == tuple(configured) or _runs_at(model, configured) or not _runs_at(model, size):
        return None
    return size


def fixed_size_hint(model: nn.Module, shape: tuple[int, ...]) -> str | None:
    """What to do when an input of ``shape`` (N×C×H×W) failed a timm model that takes one size
    only (its ``pretrained_cfg`` says ``fixed_input_size``: ViT, DeiT, built without
    ``dynamic_img_size``): the size it was built for, and to drop the user's size. None for
    any other model, or when the size was the model's own."""
    from ..models.wrappers import unwrap

    inner = unwrap(model)[0]
    timm = next((m for m in inner.modules() if getattr(m, "pretrained_cfg", None)), None)
    if timm is None or getattr(timm, "dynamic_img_size", False):
        return None
    cfg = dict(timm.pretrained_cfg)
    built = sized(patch_embed_size(timm)) or sized(cfg.get("input_size"))
    if not cfg.get("fixed_input_size") or built is None or len(shape) < 3:
        return None
    (h, w), given = built[-2:], tuple(int(v) for v in shape[-2:])
    if given == (h, w):
        return None
    name = cfg.get("architecture") or type(timm).__name__
    side = str(given[0]) if given[0] == given[1] else f"{given[0]},{given[1]}"
    return (
        f"{name} takes {_channels(timm)}×{h}×{w} images only (timm's pretrained_cfg "
        f"fixed_input_size): drop --size {side} (--input-size; input_size= in Python)"
    )


def _runs_at(model: nn.Module, size: tuple[int, int]) -> bool:
    """Whether one zero image of ``size`` goes through the model (eval mode, no gradients)."""
    from ..layers import eval_mode

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if device.type == "meta":
        return False
    x = torch.zeros(1, _channels(model), *size, device=device, dtype=dtype)
    try:
        with torch.no_grad(), eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x)
    except Exception:  # noqa: BLE001 - any failure means: not this size
        return False
    return True


def _channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None and 1 <= conv.in_channels <= 4 else 3
