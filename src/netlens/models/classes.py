"""Class names for any model: read from a list or file, checked against the model's outputs."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..preprocess import Preprocess

__all__ = [
    "check_class_names",
    "detector_classes",
    "detector_state_classes",
    "head_width",
    "output_count",
]


def output_count(
    model: nn.Module, spec: Preprocess | None = None, key: str | int | None = None
) -> int | None:
    """How many classes ``model`` outputs; None when that cannot be told without running it.

    timm models say it (``num_classes``); otherwise one dry forward at the spec's input size,
    or, with no known size, the width of the last layer with weights when that is an
    ``nn.Linear`` or, as in SqueezeNet, a 1×1 ``nn.Conv2d`` (pooling, flattening, dropout and
    activations after it have no weights). With ``key`` (the output picked of a dict, tuple or
    list), only a dry forward tells: the last layer may make another of the outputs.
    """
    if key is not None:
        return _dry_forward_count(model, spec, key) if spec is not None and spec.size else None
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and hasattr(model, "get_classifier"):
        return n
    if spec is not None and spec.size is not None:
        return _dry_forward_count(model, spec)
    return head_width(model)


def head_width(model: nn.Module) -> int | None:
    """The class count a model's head says without running it: timm's ``num_classes``, a
    torchvision detector's classifier (:func:`detector_classes`), the width of a last
    ``nn.Linear`` or 1×1 ``nn.Conv2d``; None otherwise, and None where that last layer is no
    classifier that can be told (a projection an image and a text tower share, as CLIP's)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and hasattr(model, "get_classifier"):
        return n
    det = detector_classes(model)
    if det is not None:
        return det
    last = _last_weighted_leaf(model)
    if isinstance(last, nn.Linear) or (_quantized(last) and hasattr(last, "out_features")):
        return None if _text_projection(model, last) else int(last.out_features)
    conv = isinstance(last, nn.Conv2d) or (_quantized(last) and hasattr(last, "out_channels"))
    if conv and tuple(last.kernel_size) == (1, 1):
        return int(last.out_channels)
    return None


def detector_classes(model: nn.Module) -> int | None:
    """A torchvision detector's class count (background included, as ``num_classes=`` takes
    it): Faster/Mask/Keypoint R-CNN's ``roi_heads.box_predictor.cls_score`` (its
    ``bbox_pred`` beside it is 4 per class), RetinaNet's and FCOS's
    ``head.classification_head.num_classes``, SSD's ``num_columns``; None for other models."""
    cls_score = getattr(
        getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None
    )
    if isinstance(cls_score, nn.Linear):
        return int(cls_score.out_features)
    head = getattr(getattr(model, "head", None), "classification_head", None)
    for attr in ("num_classes", "num_columns"):  # RetinaNet / FCOS, SSD / SSDlite
        n = getattr(head, attr, None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def detector_state_classes(state: dict[str, Any], fresh: nn.Module) -> int | None:
    """The class count a torchvision detector's state_dict was trained for, read off its
    classifier's weights (``fresh``: the architecture built with its default head), or None
    for other models. The last weight that differs from ``fresh`` is Faster R-CNN's
    ``bbox_pred`` (4 per class), and RetinaNet's and SSD's classifiers are convolutions with
    one channel per class and anchor: each is read as what it is."""
    if detector_classes(fresh) is None:
        return None
    names = dict(fresh.named_modules())
    cls_score = getattr(
        getattr(getattr(fresh, "roi_heads", None), "box_predictor", None), "cls_score", None
    )
    if isinstance(cls_score, nn.Linear):
        key = next(k for k, m in names.items() if m is cls_score) + ".weight"
        w = state.get(key)
        return int(w.shape[0]) if getattr(w, "ndim", 0) == 2 else None
    head = fresh.head.classification_head
    prefix = next(k for k, m in names.items() if m is head)
    n = getattr(head, "num_classes", None)
    if isinstance(getattr(head, "cls_logits", None), nn.Conv2d):  # RetinaNet, FCOS
        conv, key = head.cls_logits, f"{prefix}.cls_logits.weight"
    else:  # SSD, SSDlite: one classifier per feature map; the first map's last convolution
        n = getattr(head, "num_columns", None)
        first = getattr(head, "module_list", [None])[0]
        convs = [(k, m) for k, m in first.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            return None
        key = f"{prefix}.module_list.0{'.' + convs[-1][0] if convs[-1][0] else ''}.weight"
        conv = convs[-1][1]
    w = state.get(key)
    if not isinstance(n, int) or n <= 0 or getattr(w, "ndim", 0) != 4:
        return None
    anchors = conv.out_channels // n
    return int(w.shape[0]) // anchors if anchors and w.shape[0] % anchors == 0 else None


def _text_projection(model: nn.Module, last: nn.Module) -> bool:
    """``last`` (a Linear) projects what an ``nn.Embedding`` of the model gives too: a
    text tower's tokens, as in CLIP, whose image and text embeddings one layer projects
    (its width is the embedding's, not a class count)."""
    width = getattr(last, "in_features", None)
    return any(isinstance(m, nn.Embedding) and m.embedding_dim == width for m in model.modules())


def headless(model: nn.Module) -> str | None:
    """Why ``model``'s output looks like features rather than class scores, or None: a timm
    model built with ``num_classes=0``, or a network whose last layer with weights is a
    normalisation layer (its head replaced by ``nn.Identity``)."""
    if hasattr(model, "get_classifier"):  # timm says it
        timm_headless = getattr(model, "num_classes", None) == 0
        return "a timm model built with num_classes=0" if timm_headless else None
    last = _last_weighted_leaf(model)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    if isinstance(last, norms):
        return f"its last layer with weights is a {type(last).__name__}; a head set to nn.Identity?"
    return None


def _quantized(m: nn.Module | None) -> bool:
    """A ``torch.ao`` quantized layer (static or dynamic): its weights are packed, not
    parameters, and it may hold its packed parameters as a child module."""
    return m is not None and type(m).__module__.startswith("torch.ao.nn.quantized")


def _last_weighted_leaf(model: nn.Module) -> nn.Module | None:
    """The last registered module without children that has weights (the head, usually); a
    quantized layer counts as one (``quantize_dynamic``'s Linear: packed weights, no
    parameters)."""
    leaves = [
        m
        for m in model.modules()
        if (_quantized(m) and callable(getattr(m, "weight", None))) or not list(m.children())
    ]
    weighted = lambda m: any(True for _ in m.parameters()) or _quantized(m)  # noqa: E731
    return next((m for m in reversed(leaves) if weighted(m) and not _packed(m)), None)


def _packed(m: nn.Module) -> bool:
    """A quantized layer's packed-parameters holder (a child of the layer, not a layer)."""
    return "PackedParams" in type(m).__name__


def blank_forward(model: nn.Module, spec: Preprocess) -> Any:
    """The model's raw output for two blank images at ``spec``'s size, in the model's precision
    and on its device (as ``Lens.place`` feeds it: float32 zeros make a half-precision model's
    forward raise); None when the size is unknown or the model cannot run here."""
    from ..layers import eval_mode

    size = tuple(spec.size or ())
    if len(size) != 2:
        return None
    p = next(model.parameters(), None)
    dtype = next(
        (
            t.dtype
            for t in itertools.chain(model.parameters(), model.buffers())
            if t.is_floating_point()
        ),
        torch.float32,
    )
    # two images: one image's 1×K comes out as K values from a forward that ends in .squeeze()
    x = torch.zeros(
        2, spec.channels or 3, *size, dtype=dtype, device=p.device if p is not None else "cpu"
    )
    try:
        with torch.no_grad(), eval_mode(model):
            return model(x)
    except Exception:  # noqa: BLE001 - a model that cannot run here is reported by the analyses
        return None


def _dry_forward_count(
    model: nn.Module, spec: Preprocess, key: str | int | None = None
) -> int | None:
    out = blank_forward(model, spec)
    if out is None:
        return None
    from ..errors import NetlensError
    from ..targets import model_output

    try:
        out = model_output(out, key)
    except NetlensError:
        return None
    rows = out.dim() == 2 and out.shape[0] == 2  # not one row per image (.flatten()): unknown
    return int(out.shape[1]) if rows else None


def check_class_names(names: list[str], model: nn.Module, spec: Preprocess | None) -> None:
    """One line when the number of names differs from the model's outputs (or names repeat).

    A single-logit (binary) model takes two names: the negative class's, then the positive's.
    Only a count the model itself gives is checked here (timm's ``num_classes``, or a dry
    forward at the spec's size): the width of a last ``nn.Linear`` is a guess a forward that
    slices its head (``fc(x)[:, :3]``) contradicts, so without a size the count is checked on
    the first forward (``Lens._check_class_count``).
    """
    n = output_count(model, spec) if spec is not None and spec.size is not None else None
    if n is None and hasattr(model, "get_classifier"):
        n = head_width(model)  # timm's num_classes
    if n is not None and n != len(names) and not (n == 1 and len(names) == 2):
        per = "two names (negative, positive) or " if n == 1 else ""
        raise ModelLoadError(
            f"{len(names)} class names given but the model has {n} outputs; give {per}one name "
            "per output, in output order"
        )
    seen: set[str] = set()
    dup = next((c for c in names if c in seen or seen.add(c)), None)  # type: ignore[func-returns-value]
    if dup is not None:
        raise ModelLoadError(f"class name '{dup}' is given twice; class names must be distinct")
