"""torchvision's side of :mod:`netlens.preprocess.from_model`: the transforms of a weights enum,
the builder a module's layers identify, the weights made for the size a model was built at
(``vit_b_16(image_size=384)``: IMAGENET1K_SWAG_E2E_V1's resize 384, bicubic), and the torchvision
backbone inside a user's wrapper (``self.backbone = resnet18()``, a new head beside it)."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any

from torch import nn

from .spec import Preprocess

__all__ = [
    "at_built_size",
    "torchvision_backbone",
    "torchvision_name",
    "torchvision_spec",
    "weights_spec",
]


def torchvision_spec(name: str) -> Preprocess | None:
    """The transforms of torchvision architecture ``name``'s default weights (no download),
    as :func:`weights_spec` reads them; None when it has no weights enum.

    ``NAME@ENTRY`` (``resnet50@IMAGENET1K_V1``) takes that weights entry's instead (one line
    when it has none such). The default's source names IMAGENET1K_V1 when its transforms
    differ (resnet50's V2: resize 232; V1, which ``pretrained=True`` loads and many models
    were fine-tuned from: 256), so a user can see which to name.
    """
    import torchvision

    from ..models.factory import tv_weights_entry

    name, _, entry = name.partition("@")
    if entry:
        return weights_spec(tv_weights_entry(name, entry))
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    spec = weights_spec(weights)
    v1 = getattr(type(weights), "IMAGENET1K_V1", None)
    if spec is None or v1 is None or v1 is weights:
        return spec
    other = weights_spec(v1)
    if other is None or dataclasses.replace(other, source=spec.source) == spec:
        return spec
    alt = f"a model fine-tuned from IMAGENET1K_V1 / pretrained=True: tv:{name}@IMAGENET1K_V1"
    return dataclasses.replace(spec, source=f"{spec.source} ({alt})")


def weights_spec(weights: Any) -> Preprocess | None:
    """The transforms of a torchvision weights entry (no download).

    Classification weights: their resize + centre crop. Segmentation weights resize the shorter
    side (to 520) and crop nothing, so images of different shapes give inputs of different
    shapes; here the resize is followed by a centre crop to a square of that side, so that
    images batch (the model sees its own scale; a landscape photo loses its sides, which the
    source says). None for other transforms.
    """
    t = weights.transforms()
    crop, resize = getattr(t, "crop_size", None), getattr(t, "resize_size", None)
    source = f"torchvision {type(weights).__name__}.{weights.name} transforms"
    dense = type(t).__name__ == "SemanticSegmentation" and resize and len(resize) == 1
    if dense:
        crop = resize
        source += f" (shorter side to {resize[0]}), centre-cropped to {resize[0]}×{resize[0]}"
    if not crop or not resize:
        return None
    interp = getattr(getattr(t, "interpolation", None), "value", "bilinear")
    return Preprocess(
        size=(crop[0], crop[-1]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        crop_pct=min(1.0, crop[0] / resize[0]),
        interpolation=str(interp),
        crop_mode="center",
        source=source,
    )


def at_built_size(
    name: str | None, spec: Preprocess, size: tuple[int, int], why: str, note: str = ""
) -> Preprocess:
    """``spec`` (the default weights' of ``name``) for a model built for another ``size``.

    The weights of ``name`` whose centre crop is that size, when exactly one is
    (``vit_b_16`` at 384: IMAGENET1K_SWAG_E2E_V1, resize 384, bicubic), with their own resize,
    filter and mean/std; else ``spec`` at that size, its resize ratio and filter kept, the
    source saying so. ``why``: how the size is known; ``note``: said after the weights' source.
    """
    h, w = size
    if spec.size == (h, w):
        return spec
    if name and h == w:
        import torchvision

        try:
            entries = list(torchvision.models.get_model_weights(name))
        except (ValueError, KeyError, AttributeError):
            entries = []
        fits = [e for e in entries if getattr(e.transforms(), "crop_size", None) == [h]]
        found = weights_spec(fits[0]) if len(fits) == 1 else None
        if found is not None and found.size == (h, w):
            source = f"{found.source} (the {name} weights for its input size {h}×{w}, {why}){note}"
            return dataclasses.replace(found, source=source)
    reason = ""
    if name:  # none made for it, or several: which one is unknown
        reason = f" (no single {name} weights entry for that size: the default's ratio and filter)"
    return dataclasses.replace(
        spec, size=(h, w), source=f"{spec.source}; input size {h}×{w} {why}{reason}"
    )


_RECOGNISED: dict[tuple, str | None] = {}
# heads that only training uses (Inception, GoogLeNet, the segmentation models' aux_loss)
_AUX = ("AuxLogits.", "aux1.", "aux2.", "aux_classifier.")


def torchvision_name(model: nn.Module, image_size: int | None = None) -> str | None:
    """The torchvision builder whose architecture ``model`` is (``efficientnet_b3``), told by
    its class and the names and shapes of its weights; the classifier may differ, as fine-tuned
    heads do: the last weight and bias of another shape, replaced by layers of its own (under
    the same name) or by ``nn.Identity`` (a backbone), and auxiliary heads. None unless exactly
    one builder fits. ``image_size``: the builders are built for it (a ViT built for 384 px,
    whose position embedding says so).

    The builders of the model's class are built on the meta device (no memory, no download):
    about 0.7 s for the ten ResNets, once per architecture and process. Builders that cannot
    build there (RegNet's initialisation reads values) are not considered.
    """
    import torch
    import torchvision

    # a quantized model's state_dict also holds packed parameters and dtypes (no shapes); a
    # dynamically quantized layer's weight and bias are only packed (its head, usually)
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in model.state_dict().items()}
    packed = {k.split("._packed_params")[0] + "." for k in shapes if "._packed_params" in k}
    shapes = {k: v for k, v in shapes.items() if not k.startswith(tuple(packed))}
    key = (type(model), tuple(shapes.items()), tuple(sorted(packed)), image_size)
    if key in _RECOGNISED:
        return _RECOGNISED[key]
    head = set([k for k in shapes if not k.startswith(_AUX)][-2:])
    fits = []
    listed = torchvision.models.list_models
    for name in listed(module=torchvision.models) + listed(module=torchvision.models.segmentation):
        builder = torchvision.models.get_model_builder(name)
        made = inspect.signature(builder).return_annotation
        if getattr(made, "__name__", made) != type(model).__name__:
            continue
        params = inspect.signature(builder).parameters
        # no backbone download; the optional auxiliary head built, so that either way fits
        options = {k: v for k, v in (("weights_backbone", None), ("aux_loss", True)) if k in params}
        if image_size is not None:
            options["image_size"] = image_size
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = {k: tuple(v.shape) for k, v in builder(**options).state_dict().items()}
        except Exception:  # noqa: BLE001 - a builder that needs arguments: not this one
            continue
        # their classifier's module ("fc.", "classifier.1."): a user's may hold other layers
        last = [k for k in theirs if not k.startswith(_AUX)][-1:]
        owner = last[0].rpartition(".")[0] + "." if last and "." in last[0] else None
        theirs_head = {k for k in theirs if owner and k.startswith(owner)}
        extra = [k for k in theirs.keys() - shapes.keys() if not k.startswith((*_AUX, *packed))]
        extra = [k for k in extra if k not in theirs_head]  # nn.Identity for a head
        own = {k for k in shapes.keys() - theirs.keys() if not (owner and k.startswith(owner))}
        differ = {k for k in shapes if theirs.get(k, shapes[k]) != shapes[k]}
        differ = {k for k in differ if not k.startswith(_AUX)}  # auxiliary classifiers too
        if not extra and not own and differ <= head | theirs_head:
            fits.append(name)
    _RECOGNISED[key] = fits[0] if len(fits) == 1 else None
    return _RECOGNISED[key]


def built_for(model: nn.Module) -> int | None:
    """The ``image_size`` a torchvision ViT was built for (an int), else None."""
    size = getattr(model, "image_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def torchvision_backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The torchvision network a user's wrapper holds (``self.backbone = resnet18()``, its
    ``fc`` an ``nn.Identity`` and a new head beside it): among the few largest children and
    grandchildren of a torchvision class, the first whose architecture its layers identify
    (:func:`torchvision_name`) and that holds the model's first registered convolution and
    most of its weights; None otherwise (a model of the user's own layers costs nothing)."""
    near = [
        (n, m)
        for n, m in model.named_modules()
        if n and n.count(".") <= 1 and type(m).__module__.startswith("torchvision.models")
    ]
    if not near:
        return None

    def size(module: nn.Module) -> int:  # a lazy module's unmade weights count nothing
        made = (p for p in module.parameters() if not isinstance(p, nn.UninitializedParameter))
        return sum(p.numel() for p in made)

    total = size(model)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    for path, inner in sorted(near, key=lambda nm: -size(nm[1]))[:3]:
        if size(inner) * 2 <= total or (first is not None and first not in set(inner.modules())):
            continue
        if torchvision_name(inner) or (
            built_for(inner) and torchvision_name(inner, built_for(inner))
        ):
            return path, inner
    return None
