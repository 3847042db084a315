"""The model a training run trains: built for the data's classes, channels and image size
(the options each kind of architecture needs: torchvision's auxiliary heads left out, a
fixed-size ViT built for the images; 1-channel images fed as 3 identical channels to a model
built for 3 that takes no channel count), checked on the first two readable images before any
training (one score per class per image), initialised from ``--init`` and frozen as asked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.items import BAD_ITEM, item_name
from ..errors import DataError, NetlensError
from ..models.factory import arch_accepts, create_arch, import_timm, parse_user_arch, tv_weights
from .config import TrainConfig
from .datasets import Splits, gray_as_rgb
from .evaluation import logits
from .transfer import call_order, count_params, freeze, inherited_arch_kwargs, init_notes, load_init

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = ["arch_kwargs", "build_model", "first_two", "model_to_train"]


def build_model(cfg: TrainConfig, splits: Splits, host: PluginHost) -> nn.Module:
    """A fresh model of ``cfg.arch`` for the data's classes, channels and image size."""
    kwargs = arch_kwargs(cfg, splits, host)
    try:
        return create_arch(cfg.arch, kwargs.pop("num_classes"), host, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        given = [k for k in ("in_chans", "in_channels") if k in cfg.arch_kwargs]
        if isinstance(exc, TypeError) and given and f"'{given[0]}'" in str(exc):
            raise NetlensError(
                f"--arch {cfg.arch} takes no {given[0]} option: leave --arch-opt {given[0]} out "
                "(netlens feeds 1-channel images to a model built for 3 as 3 identical channels)"
            ) from None
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise NetlensError(
            f"--arch {cfg.arch} cannot be built with {args}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}; check --arch-opt and --img-size"
        ) from None


# torchvision models whose auxiliary heads make training-mode outputs tuples: built without
# them, initialised as torchvision initialises them, and fed inputs as given (weights=None)
_TV_NO_AUX = {"aux_logits": False, "init_weights": True, "transform_input": False}


def arch_kwargs(cfg: TrainConfig, splits: Splits, host: PluginHost) -> dict[str, Any]:
    """The architecture's keyword arguments, as stored in the checkpoint."""
    kwargs = {**cfg.arch_kwargs, "num_classes": len(splits.classes)}
    channels, size = splits.preprocess.channels, splits.preprocess.size
    if cfg.arch in host.archs:
        kwargs.setdefault("in_chans", channels)
        kwargs.setdefault("img_size", size[0])
    elif cfg.arch.startswith("tv:"):
        arch, entry = tv_weights(cfg.arch)
        if entry is not None:
            raise NetlensError(
                f"--arch {cfg.arch}: @{entry} names the preprocessing of a model to explain; "
                f"train builds {arch} untrained with its own: give --arch {arch}"
            )
        name = arch[3:]
        if name in ("googlenet", "inception_v3"):
            kwargs = {**_TV_NO_AUX, **kwargs}
        if name.startswith("vit_") and size and size[0] == size[1] and size[0] != 224:
            kwargs.setdefault("image_size", size[0])  # torchvision's ViTs take 224 by default
    elif parse_user_arch(cfg.arch) is not None:
        if arch_accepts(cfg.arch, "in_chans"):
            kwargs.setdefault("in_chans", channels)
    else:
        kwargs.setdefault("in_chans", channels)
        fixed = _timm_fixed_size(cfg.arch)
        if fixed is not None and size and tuple(size) != fixed:  # a ViT of one input size
            kwargs.setdefault("img_size", size[0] if size[0] == size[1] else list(size))
    return kwargs


def _timm_fixed_size(name: str) -> tuple[int, int] | None:
    """The input size a timm model is built for, when it takes no other (ViTs, Swin)."""
    try:
        cfg = import_timm().models.get_pretrained_cfg(name.removeprefix("timm:"))
    except Exception:  # noqa: BLE001 - no pretrained config: nothing known about its size
        return None
    if cfg is None or not getattr(cfg, "fixed_input_size", False):
        return None
    return tuple(cfg.input_size[1:])  # type: ignore[return-value]


def first_two(splits: Splits) -> torch.Tensor:
    """The first two readable training images as one batch, as the model gets them."""
    images, bad = [], []
    for i in range(len(splits.train)):  # type: ignore[arg-type]
        if len(images) == 2 or len(bad) == 20:
            break
        try:
            images.append(torch.as_tensor(splits.train[i][0]))
        except BAD_ITEM as exc:
            bad.append(f"{item_name(splits.train, i)}: {exc}")
    if not images and bad:
        raise DataError(f"the first {len(bad)} training images cannot be read ({bad[0]})")
    if not images:
        return torch.empty(0)  # nothing to try it on
    return torch.stack(images)


def model_to_train(
    cfg: TrainConfig, splits: Splits, host: PluginHost, sample: torch.Tensor
) -> tuple[Any, ...]:
    """The model to train (from ``--init`` where given, frozen as asked), notes on it, and
    ``sample`` as that model takes it (gray images as 3 channels, see :func:`_fit_channels`)."""
    init = load_init(cfg.init, host, cfg.arch, cfg.arch_kwargs, cfg.trust) if cfg.init else None
    if init is not None and not cfg.arch_kwargs:
        cfg = replace(cfg, arch_kwargs=inherited_arch_kwargs(init, cfg.arch))
    model = build_model(cfg, splits, host)
    notes = _fit_channels(cfg, model, splits, host)
    if notes and sample.dim() == 4 and sample.shape[1] == 1:
        sample = sample.repeat(1, 3, 1, 1)  # what the data now gives
    order = _check_outputs(cfg, model, splits, sample)
    if init is not None:
        notes += init_notes(model, init, str(cfg.init), splits.classes, order)
    frozen = freeze(model, cfg.freeze, order)
    params = count_params(model)
    notes.append(f"parameters: {params[0]:,} total, {params[1]:,} trainable")
    return cfg, model, frozen, params, notes, sample


def _fit_channels(
    cfg: TrainConfig, model: nn.Module, splits: Splits, host: PluginHost
) -> list[str]:
    """1-channel data for an architecture built for 3 channels that takes no channel count
    (torchvision's, a user's without ``in_chans``/``in_channels``): the gray images are fed
    as 3 identical channels (:func:`~netlens.train.datasets.gray_as_rgb`), as the checkpoint's
    preprocessing records, so ``netlens.load`` feeds its images so too (a note when so)."""
    kwargs = arch_kwargs(cfg, splits, host)
    if splits.preprocess.channels != 1 or {"in_chans", "in_channels"} & set(kwargs):
        return []
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.in_channels != 3:
        return []
    if not gray_as_rgb(splits):
        raise DataError(
            f"--arch {cfg.arch} takes 3-channel images, but {cfg.data} gives 1-channel ones "
            "netlens cannot convert; give the dataset 3 channels or pick an architecture that "
            "takes in_chans (a timm one)"
        )
    return [f"1-channel images fed as 3 identical channels (--arch {cfg.arch} takes 3)"]


def _check_outputs(
    cfg: TrainConfig, model: nn.Module, splits: Splits, sample: torch.Tensor
) -> list[str] | None:
    """Run the fresh model once on ``sample`` (eval mode, no gradients): it must give one score
    per class per image. Returns the modules that own parameters in the order they ran (the
    last is the head, for ``--freeze backbone``); None when there was no sample."""
    if sample.dim() != 4:
        return None
    try:
        out, order = call_order(model, sample)
    except Exception as exc:  # noqa: BLE001 - any failure, as one line, before training
        shape = "×".join(map(str, sample.shape[1:]))
        raise NetlensError(
            f"--arch {cfg.arch} cannot run on {shape} images (channels×height×width): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}; check --img-size and --arch-opt"
        ) from None
    out, k = logits(out), len(splits.classes)
    if not isinstance(out, torch.Tensor):
        raise NetlensError(
            f"--arch {cfg.arch} returns a {type(out).__name__}, not a tensor of class scores; "
            "make its forward() return the logits"
        )
    if out.dim() == 2 and out.shape[1] == k:
        return order
    width = int(out.shape[1]) if out.dim() == 2 else "×".join(map(str, out.shape[1:]))
    if width == 1 and k == 2:
        raise NetlensError(
            f"--arch {cfg.arch} gives 1 output per image (a single-logit binary head); netlens "
            "trains with cross-entropy over the 2 classes: give it 2 outputs (num_classes=2)"
        )
    raise NetlensError(
        f"--arch {cfg.arch} gives {width} outputs per image but the data has {k} classes "
        f"({', '.join(splits.classes[:5])}{', ...' if k > 5 else ''}); build it with {k} "
        "outputs (a num_classes argument, which netlens passes)"
    )
