"""Find a model's own preprocessing: timm data config, torchvision weights, its own attributes.

Order: a torchvision architecture named ``tv:NAME`` → the transforms of its weights enum; a timm
model (it carries ``pretrained_cfg``) → its data config, applied by timm's own transform; a
Hugging Face model → its image processor's settings (or its config's ``image_size``); a
torchvision module not named → the transforms of the torchvision architecture its layers'
shapes identify (:func:`torchvision_name`), else the ImageNet convention; a ``torch.fx``
GraphModule → that of the torchvision or timm architecture it was traced from, when its layers
say so exactly (:mod:`netlens.models.traced`); anything else
→ the model's ``input_size`` attribute when it has one, else no resize (the size of the first
image). Nothing is downloaded: weights enums and timm configs are plain metadata.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import warnings
from collections.abc import Iterable
from typing import Any

from torch import fx, nn

from ..errors import NetlensError
from .built_size import patch_embed_size, sized, stage_size
from .spec import IMAGENET_MEAN, IMAGENET_STD, MAX_SIDE, Preprocess, _per_channel
from .torchvision_spec import (
    at_built_size,
    built_for,
    torchvision_backbone,
    torchvision_name,
    torchvision_spec,
)

__all__ = [
    "model_channels",
    "model_input_size",
    "preprocess_for",
    "TIMM_DATA_KEYS",
    "timm_spec",
    "torchvision_spec",
    "with_overrides",
]


def preprocess_for(model: nn.Module, arch: str | None = None) -> Preprocess:
    """The preprocessing ``model`` was made for (see the module doc for the order).

    Example:
        >>> preprocess_for(timm.create_model("resnet50")).source
        'timm data config of resnet50.a1_in1k'
    """
    from ..models.wrappers import unwrap

    model = unwrap(model)[0]  # DataParallel, DDP, torch.compile: the network inside decides
    if arch and arch.startswith("tv:"):
        spec = torchvision_spec(arch[3:])  # NAME@ENTRY: that weights entry's transforms
        built = built_for(model)  # torchvision's ViT: built for one size (its weights' if any)
        if spec is not None and built is not None:
            name = arch[3:].partition("@")[0]
            spec = at_built_size(name, spec, (built, built), "as the model was built")
        if spec is not None:
            return _fit_channels(spec, model)
    from ..models.wrappers import activated_network

    inner = activated_network(model)
    if inner is not None:  # nn.Sequential(resnet, nn.Softmax(1)): the network's own
        spec = preprocess_for(inner)
        return dataclasses.replace(spec, source=f"{spec.source}, of the network it wraps")
    from ..models.input_norm import find_input_norm

    norm, doubt = find_input_norm(model)
    if doubt:
        from ..errors import NetlensWarning

        warnings.warn(doubt, NetlensWarning, stacklevel=2)
    if norm is not None:  # nn.Sequential(Normalize(mean, std), resnet): pixels in [0, 1]
        spec = preprocess_for(norm.network) if norm.network is not None else guessed_spec(model)
        c = spec.channels
        stats = f"mean {', '.join(f'{v:g}' for v in norm.mean)}, std "
        stats += ", ".join(f"{v:g}" for v in norm.std)
        # its normalisation is known, not guessed: what the network's spec guessed goes
        known = [p for p in spec.source.split("; ") if GUESSED not in p and norm.network]
        source = "; ".join(known) or "model records no input size"
        # stats above 1 are of 0..255 pixels (mmcv's, Caffe ports'): feed those, x / (1/255)
        scale = 255.0 if max(*norm.mean, *norm.std) > 1.0 else 1.0
        pixels = "0..255" if scale == 255.0 else "[0, 1]"
        who = (
            f"the model's first layer ({norm.name})"
            if norm.layer
            else f"the model's forward, with its {norm.name},"
        )
        return dataclasses.replace(
            spec,
            mean=(0.0,) * c,
            std=(1.0 / scale,) * c,
            source=f"{source}; pixels in {pixels}, not normalised: {who} normalises them "
            f"itself ({stats})",
        )
    if getattr(model, "pretrained_cfg", None):
        return timm_spec(model)
    if type(model).__module__.startswith("transformers."):
        from ..models.hf import hf_model_preprocess

        spec = hf_model_preprocess(model)
        if spec is not None:
            return _fit_channels(spec, model)
    tv = type(model).__module__.startswith("torchvision.models")
    if tv and getattr(model, "input_size", None) is None and flattened_image(model) is None:
        name = torchvision_name(model) or (
            built_for(model) and torchvision_name(model, built_for(model))
        )
        spec = torchvision_spec(name) if name else None
        note = f" (recognised as tv:{name} by its layers' shapes)"
        if spec is not None:
            spec = dataclasses.replace(spec, source=spec.source + note)
        else:
            name = None  # no weights: the convention's ratio and filter at any built size
            spec = Preprocess(
                size=(224, 224),
                crop_pct=224 / 256,
                crop_mode="center",
                source="torchvision ImageNet convention (resize 256, crop 224); name the "
                "architecture (tv:NAME) for its own weights' transforms",
            )
        built = model_input_size(model)  # torchvision's ViT: its image_size (its weights' if any)
        if built is not None:
            why = "as the model was built (its image_size)"
            spec = at_built_size(name, spec, tuple(built[-2:]), why, note)
        return _fit_channels(spec, model)
    if isinstance(model, fx.GraphModule):  # torch.fx.symbolic_trace(resnet18()), pickled
        from ..models.traced import traced_spec

        spec = traced_spec(model)
        if spec is not None:
            return spec
    backbone = timm_backbone(model)
    if backbone is not None:  # class Net(nn.Module): self.model = timm.create_model(...)
        name, inner = backbone
        spec = timm_spec(inner)
        source = f"{spec.source}, of its timm backbone '{name}'"
        return _fit_channels(dataclasses.replace(spec, source=source), model)
    found = torchvision_backbone(model)
    if found is not None:  # class Net(nn.Module): self.backbone = torchvision.models.resnet18()
        spec = preprocess_for(found[1])
        source = f"{spec.source}, of its torchvision backbone '{found[0]}'"
        return _fit_channels(dataclasses.replace(spec, source=source), model)
    return guessed_spec(model)


# the data options timm's scripts record and resolve_data_config reads
TIMM_DATA_KEYS = ("input_size", "img_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")


def timm_backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The timm model a user's wrapper holds (``self.model = timm.create_model(...)``, a new head
    beside it) when it holds the first registered convolution and most of the weights: the
    model's input is that backbone's; None otherwise."""
    found = next(
        ((n, m) for n, m in model.named_modules() if n and getattr(m, "pretrained_cfg", None)),
        None,
    )
    if found is None:
        return None

    def size(module: nn.Module) -> int:  # a lazy module's unmade weights count nothing
        made = (p for p in module.parameters() if not isinstance(p, nn.UninitializedParameter))
        return sum(p.numel() for p in made)

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    holds_first = first is None or any(c is first for c in found[1].modules())
    return found if holds_first and size(found[1]) * 2 > size(model) else None


def timm_spec(
    model: nn.Module,
    args: dict[str, Any] | None = None,
    what: str = "train.py options",
    owner: str = "the checkpoint's",
) -> Preprocess:
    """A timm model's data config (``resolve_model_data_config``), applied by timm's transform.

    ``args``: the options of timm's ``train.py`` that a checkpoint records (``--img-size``,
    ``--mean``, ``--std``, ``--crop-pct``, ``--interpolation``); resolved with the model as
    timm's own scripts do (``resolve_data_config(vars(args), model=model)``), so a model trained
    at 160² or with its own mean/std is fed as it was. ``owner``: whose options they are, for
    the spec's source (``args.yaml's``: the file timm's train.py writes beside its checkpoints).
    """
    from ..models.factory import import_timm

    data = import_timm().data  # not `from timm.data import`: that warns in Jupyter

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    told = {k: args[k] for k in TIMM_DATA_KEYS if args and args.get(k) not in (None, "")}
    if told:
        dc = data.resolve_data_config(told, model=model)
    else:
        dc = data.resolve_model_data_config(model)
    c, h, w = dc["input_size"]
    name = cfg.get("architecture") or type(model).__name__
    name += f".{cfg['tag']}" if cfg.get("tag") else ""
    source = f"timm data config of {name}"
    if told:
        flags = what == "train.py options"  # else a dict's keys (Lightning's hyper_parameters)
        shown = ", ".join(
            f"--{k.replace('_', '-')} {_shown(v)}" if flags else f"{k}={_shown(v)}"
            for k, v in told.items()
        )
        source += f" with {owner} {what} ({shown})"
    built = model_input_size(model) or stage_size(model, (h, w))
    if built is not None and tuple(built[-2:]) != (h, w):
        h, w = built[-2:]
        source += f"; input size {h}×{w} as the model was built"
    return timm_data_spec(dc, source, size=(h, w), channels=model_channels(model) or c)


def timm_data_spec(
    dc: dict[str, Any],
    source: str,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Preprocess:
    """A resolved timm data config as netlens' spec, applied by timm's own transform
    (``size``/``channels``: where the model says otherwise than the config)."""
    c, h, w = dc["input_size"]
    spec = Preprocess(
        size=size or (int(h), int(w)),
        channels=int(channels or c),
        mean=tuple(dc["mean"]),
        std=tuple(dc["std"]),
        crop_pct=float(dc.get("crop_pct") or 0.875),
        interpolation=str(dc.get("interpolation") or "bilinear"),
        crop_mode=str(dc.get("crop_mode") or "center"),
        engine="timm",
        source=source,
    )
    return _stats_for_channels(spec)


def torchvision_reference_spec(model: nn.Module, args: dict[str, Any]) -> Preprocess | None:
    """The evaluation transform of torchvision's ``references/classification/train.py``, from
    the options its checkpoints record (``--val-resize-size``, ``--val-crop-size``,
    ``--interpolation``; ImageNet mean and std, as its presets fix them). None without them."""
    resize, crop = args.get("val_resize_size"), args.get("val_crop_size")
    if not isinstance(resize, int) or not isinstance(crop, int) or resize <= 0 or crop <= 0:
        return None
    interp = str(args.get("interpolation") or "bilinear")
    spec = Preprocess(
        size=(crop, crop),
        crop_pct=min(1.0, crop / resize),
        interpolation=interp,
        crop_mode="center",
        source="torchvision's reference train.py options in the checkpoint (--val-resize-size "
        f"{resize} --val-crop-size {crop} --interpolation {interp})",
    )
    return _fit_channels(spec, model)


def _shown(value: Any) -> str:
    return (
        " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, (list, tuple))
        else str(value)
    )


GUESSED = "(guessed)"  # in the source of a spec whose normalisation is netlens' guess


def guessed_spec(model: nn.Module) -> Preprocess:
    """For a model that records no preprocessing: its ``input_size`` if any, else no resize."""
    size = model_input_size(model)
    channels = (size[0] if size and len(size) == 3 else None) or model_channels(model) or 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    norm = "ImageNet mean/std" if channels == 3 else "mean 0.5, std 0.5"
    if size is not None:
        h, w = size[-2:]
        flat = getattr(model, "input_size", None) is None and flattened_image(model) is not None
        where = "the image its first Linear flattens" if flat else "the model's input_size"
        source = f"input size {h}×{w} from {where}; {norm} {GUESSED}"
    else:
        source = f"model records no preprocessing: {norm} {GUESSED}; input size unknown"
    return Preprocess(
        size=tuple(size[-2:]) if size else None,  # type: ignore[arg-type]
        channels=channels,
        mean=mean,
        std=std,
        source=source,
    )


def model_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """What the model itself says of its input: ``input_size`` (C,H,W or H,W), else the size
    it was built for: ``image_size`` (torchvision's ViT), ``img_size`` (timm's MaxViT) or the
    ``img_size`` of its first patch embedding (timm's ``patch_embed``, CoaT's
    ``patch_embed1``: a ViT/Swin built for another size), else the flattened image its first
    Linear reads (:func:`flattened_image`); None when it says nothing."""
    for size in (
        getattr(model, "input_size", None),
        getattr(model, "image_size", None),
        getattr(model, "img_size", None),
        patch_embed_size(model),
    ):
        found = sized(size)
        if found is not None:
            return found
    return flattened_image(model)


def model_channels(model: nn.Module) -> int | None:
    """Input channels of the first registered convolution (or of the flattened image a model
    without one reads, :func:`flattened_image`).

    1 to 4 only: a model taking 2 or 4 (RGB + near-infrared, RGBA) is told so, and images,
    which have 1 or 3, are refused in one line; a first-registered convolution taking more
    is taken for an inner one (its input is not the image).
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:  # the first registered (a head may be registered before it)
        return int(conv.in_channels) if 1 <= conv.in_channels <= 4 else None
    flat = flattened_image(model)
    return flat[0] if flat else None


def flattened_image(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, S, S) for a model without convolutions that starts by flattening its image into a
    Linear (``Sequential(Flatten(), Linear(784, ...))``: 1×28×28) — in_features = C·S², C 1 or
    3; None otherwise (a Linear over patches, ``Rearrange`` then ``Linear``, says no size)."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    leaves = [m for m in model.modules() if not any(m.children())][:2]
    if len(leaves) < 2 or not isinstance(leaves[0], nn.Flatten):
        return None
    if not isinstance(leaves[1], nn.Linear) or leaves[0].start_dim != 1:
        return None
    n = int(leaves[1].in_features)
    for c in (1, 3):
        side = math.isqrt(n // c)
        if n % c == 0 and side * side * c == n and side > 1:
            return c, side, side
    return None


def _fit_channels(spec: Preprocess, model: nn.Module) -> Preprocess:
    c = model_channels(model)
    if c is None or c == spec.channels:
        return spec
    return _stats_for_channels(
        spec.override(channels=c, source=f"{spec.source}; {c} input channel(s)")
    )


def _stats_for_channels(spec: Preprocess) -> Preprocess:
    """``spec`` with one mean/std value per input channel where it has more values than channels
    (ImageNet's three for a model built with ``in_chans=1``): averaged, as timm's loader does
    (``timm.data.loader.adapt_to_chs``: 0.449/0.226 for one channel), the source saying so."""
    c = spec.channels
    if spec.mean is None or spec.std is None or len(spec.mean) <= c:
        return spec  # RGB+NIR keeps RGB's three: its overlay shows them (Preprocess.denormalize)
    return dataclasses.replace(
        spec,
        mean=_per_channel(spec.mean, c),
        std=_per_channel(spec.std, c),
        source=f"{spec.source}; mean/std averaged over channels, as timm's loader does for "
        f"{c} input channel(s)",
    )


def with_overrides(
    base: Preprocess,
    preprocess: Any = None,
    *,
    input_size: Any = None,
    example: Any = None,
    **changes: Any,
) -> Preprocess:
    """``base`` with what the user said: a spec, a callable, a dict, or single fields.

    Args:
        base: the model's own spec.
        preprocess: a :class:`Preprocess` (replaces ``base``), any callable PIL image → C×H×W
            tensor (used instead of resize/crop/normalise), or a dict of field changes.
        input_size: ``28``, ``(28, 28)`` or ``(1, 28, 28)``: the size the model takes.
        example: an example input tensor; its shape sets the input size.
        changes: single fields (``size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``...).
    """
    spec = base
    own: Preprocess | None = base  # a function kept from it applies its recorded mean/std
    if isinstance(preprocess, Preprocess):
        spec = own = preprocess
        if spec.source == Preprocess.source:
            spec = spec.override(source="user override (a Preprocess spec)")
    elif isinstance(preprocess, dict):
        spec = spec.override(**preprocess)
    elif callable(preprocess) and _processor_spec(preprocess) is not None:
        own = _processor_spec(preprocess)  # a transformers image processor: its geometry known
        kind = type(preprocess).__name__
        spec = own.override(channels=spec.channels, source=f"user override (the {kind})")
    elif callable(preprocess):
        name = getattr(preprocess, "__qualname__", type(preprocess).__qualname__)
        spec = spec.override(function=preprocess, source=f"user override (function {name})")
        mean, std = changes.pop("mean", None), changes.pop("std", None)
        spec = dataclasses.replace(spec, size=None, mean=mean, std=std)  # the function decides
        own = None  # mean=/std= given with it say what it applies
    elif preprocess is not None:
        raise NetlensError(
            "preprocess must be a Preprocess, a dict or a callable, not a "
            f"{type(preprocess).__name__}"
        )
    if example is not None:
        input_size = tuple(getattr(example, "shape", ()))[-3:]
        if getattr(example, "ndim", 0) not in (3, 4):  # a video's N×C×T×H×W: T read as C
            raise NetlensError(
                f"example= has shape {tuple(getattr(example, 'shape', ()))}: it sets the "
                "image size, C×H×W or N×C×H×W; for a video model (N×C×T×H×W) leave it out and "
                "give stats or ablate 5-D tensors as data, or wrap the model so that its "
                "forward takes N×C×H×W images"
            )
    if input_size is not None:
        changes.update(_size_changes(input_size))
    elif changes.get("size") is not None:
        _sides(changes["size"])
    _check_counts(changes, changes.get("channels") or spec.channels)
    return _renormalised(own, _resized(own, spec.override(**changes)))


def _check_counts(changes: dict[str, Any], c: int) -> None:
    """The user's mean/std: one value, or one per channel (three for RGB+NIR, whose overlay
    shows the RGB ones); any other count is one line, not averaged as the model's own are."""
    for key in ("mean", "std"):
        v = changes.get(key)
        n = len(v) if isinstance(v, (tuple, list)) else 1
        if v is not None and n not in (1, c) and not (n == 3 and c > 3):
            raise NetlensError(
                f"{key} has {n} values for a {c}-channel model: give 1 or {c} (--{key}; {key}= "
                "in Python)"
            )


def _resized(own: Preprocess | None, spec: Preprocess) -> Preprocess:
    """``spec`` given a size while it calls a Hugging Face image processor (kept from ``own``:
    called only for its aspect-keeping resize, which a spec cannot say): netlens' resize to
    that size instead, with the processor's mean, std and filter, so the size recorded is
    applied. A user's own function keeps deciding (the size then only says the model's)."""
    from .engines import _is_image_processor

    fn = spec.function
    if own is None or fn is not own.function or spec.size == own.size:
        return spec  # the function (or none) given now, or no new size
    if fn is None or not _is_image_processor(fn):
        return spec
    source = f"{spec.source}; every image resized to it by netlens, not the processor"
    return dataclasses.replace(spec, function=None, crop_pct=1.0, crop_mode="squash", source=source)


def _renormalised(own: Preprocess | None, spec: Preprocess) -> Preprocess:
    """``spec`` whose function (kept from ``own``) gets the user's new mean/std: the
    function's output with its recorded normalisation undone and theirs applied, so the
    values recorded are those applied; one line when the function's normalisation is unknown
    (nothing to undo)."""
    fn = spec.function
    if own is None or fn is None or fn is not own.function:
        return spec  # no function, or one given now (its mean=/std= say what it applies)
    if (spec.mean, spec.std) == (own.mean, own.std):
        return spec
    if own.mean is None or own.std is None:
        from .engines import _function_name

        raise NetlensError(
            f"the preprocessing is a function ({_function_name(fn)}) whose normalisation "
            "netlens does not know, so --mean/--std (mean=/std=) cannot change what it feeds "
            "the model: normalise inside the function, or pass it as preprocess= together "
            "with mean=/std= saying what it applies"
        )
    source = f"{spec.source}; the function's output renormalised to them"
    return dataclasses.replace(spec, function=Renormalised(fn, own, spec), source=source)


class Renormalised:
    """A preprocessing function whose output (normalised with ``before``'s mean/std) is
    normalised with ``after``'s instead: ``(x · std₀ + mean₀ − mean) / std`` per channel.
    Named like the function it wraps (in ``describe``, ``to_dict`` and messages)."""

    def __init__(self, fn: Any, before: Preprocess, after: Preprocess) -> None:
        self.fn = fn
        self.stats = (before.mean, before.std, after.mean, after.std)
        self.__qualname__ = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.__module__ = getattr(fn, "__module__", None) or type(fn).__module__

    def __call__(self, image: Any) -> Any:
        from .engines import call_function

        x = call_function(self.fn, image)
        m0, s0, m1, s1 = (x.new_tensor(_per_channel(v, len(x)))[:, None, None] for v in self.stats)
        return x.mul(s0).add_(m0).sub_(m1).div_(s1)


def _processor_spec(fn: Any) -> Preprocess | None:
    """A transformers image processor passed as ``preprocess=`` as a spec (so overlays and
    masks know its resize and crop); None for any other callable, or one netlens cannot
    express (it is then called as a function)."""
    from .engines import _is_image_processor

    if not _is_image_processor(fn):
        return None
    from ..models.hf import spec_from_processor

    try:
        return spec_from_processor(fn)
    except NetlensError:
        return None


def _sides(size: Any) -> list[int]:
    """The whole numbers of a user's size, each 1 to MAX_SIDE; one line otherwise."""
    try:
        vals = [operator.index(v) for v in (size if isinstance(size, Iterable) else [size])]
    except TypeError:
        vals = []
    if len(vals) not in (1, 2, 3) or not all(1 <= v <= MAX_SIDE for v in vals):
        raise NetlensError(
            f"an input size is 1 to {MAX_SIDE} pixels per side (28, (28, 28) or (1, 28, 28)); "
            f"got {size}"
        )
    return vals


def _size_changes(input_size: Any) -> dict[str, Any]:
    vals = _sides(input_size)
    out: dict[str, Any] = {"size": tuple(vals[-2:]) if len(vals) > 1 else (vals[0], vals[0])}
    if len(vals) == 3:
        out["channels"] = int(vals[0])
    return out
