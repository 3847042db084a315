"""The output a callable target is handed: the model's own tensor where netlens has no reading.

README: "any callable ``target(output) -> one score per image`` works". netlens reads an
output as classes (N×K) or maps of the image (N×K×H×W; a 3-d N×H×W as one channel), and
refuses one that is neither (a detector's N×A×6 boxes, a backbone's N×197×768 tokens: read as
maps, their H×W is not about the image's aspect) before any target sees it. A callable target
needs no classes or regions: while an analysis with one runs (:func:`target_scope`, entered by
:meth:`netlens.Lens.run`), such an output is handed to it as the model returned it (the
tensor ``output=`` picks, its batch axis given back to a model that squeezes one image's), the
class/region checks skipped; the callable's result is checked by
:class:`netlens.targets.CallableTarget` (one score per image, else one line). Outputs netlens
does read (logits, probabilities read back as logits, maps of the image) are handed as they
are read, as before. A raw output has no classes: its task reads as ``regression`` and its
"probabilities" are its values, flattened (results show no predicted class). The analysis is
known to its own thread (a context variable) and, by its model, to the threads it runs masked
batches on (:mod:`netlens.parallel`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .model_output import wrap_advice
from .output_reader import OutputReader, is_binary_dense

__all__ = [
    "RawReader",
    "current_scope",
    "handed_raw",
    "is_callable_target",
    "not_image_maps",
    "raw_output",
    "target_scope",
]


@dataclass
class _Scope:
    raw: bool | None = None  # the output is no classes or maps: handed raw (told on a forward)


_HEAD_ROWS = (5, 100)  # a raw detector head's rows: 4 box coordinates and 1 to 96 class scores


def _anchors(ih: int, iw: int) -> int:
    """An anchor-free YOLO head's anchors for an ih×iw input: one per cell of its stride-8, 16
    and 32 maps (8400 at 640 px, 5376 at 512 px), which a ViT's tokens × width never are."""
    return sum(math.ceil(ih / s) * math.ceil(iw / s) for s in (8, 16, 32))


_PATCHES = (8, 14, 16, 32)  # a ViT's patch sizes
_EXTRA_TOKENS = (0, 1, 2, 5)  # none, a cls token, cls and distillation, cls and 4 registers


def _token_count(h: int, ih: int, iw: int) -> int | None:
    """The patch size of a ViT whose token count (ih×iw input, its extra tokens) is ``h``, an
    N×H×W output's H, where ``h`` is no map's height at a stride (ih / 1, 2, 4 ... 64), or None:
    ViT-Tiny's 197 tokens at 224 px, about as many as its 192 features, are no 197×192 map."""
    if any(h in (ih // 2**i, -(-ih // 2**i)) for i in range(7)):
        return None
    for p in _PATCHES:
        if h - (ih // p) * (iw // p) in _EXTRA_TOKENS:
            return p
    return None


_NONE = _Scope(raw=False)  # an analysis of another target: in its thread, nothing raw
_SCOPE: ContextVar[_Scope | None] = ContextVar("netlens_callable_target", default=None)
# a callable target's analysis by its model, for the threads it runs masked batches on
# (netlens.parallel), which start without its context
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, _Scope] = weakref.WeakKeyDictionary()


def is_callable_target(spec: Any) -> bool:
    """A user's function (or a :class:`~netlens.targets.Target` of kind ``custom``: a
    :class:`~netlens.targets.CallableTarget`, a user's subclass), which scores any output."""
    from .targets import Target

    if isinstance(spec, Target):
        return spec.kind == "custom"
    return callable(spec) and not isinstance(spec, (str, bytes, type, torch.Tensor))


@contextmanager
def target_scope(target: Any, model: nn.Module) -> Iterator[None]:
    """While an analysis of ``target`` on ``model`` runs: raw outputs for a callable one (its
    thread, and the threads it starts); an analysis of another target inside it (evaluate's
    CAMs of classes) reads as before."""
    scope = _Scope() if is_callable_target(target) else _NONE
    token, before = _SCOPE.set(scope), _ACTIVE.get(model)
    if scope is not _NONE:
        _ACTIVE[model] = scope
    try:
        yield
    finally:
        _SCOPE.reset(token)
        if scope is not _NONE:
            if before is None:
                _ACTIVE.pop(model, None)
            else:
                _ACTIVE[model] = before


def current_scope(model: nn.Module) -> _Scope | None:
    """The callable target's analysis running on ``model`` in this thread (or started it)."""
    scope = _SCOPE.get()
    scope = _ACTIVE.get(model) if scope is None else scope
    return None if scope is _NONE else scope


def not_image_maps(out: torch.Tensor, x: torch.Tensor, picked: bool = False) -> str | None:
    """Why a dense output (N×K×H×W; N×H×W read as N×1×H×W) is no maps of the image (its H×W
    far from the input's aspect: tokens, boxes), or None. An N×H×W whose H is a ViT's token
    count for the input (its patches and 0, 1, 2 or 5 extra tokens) and no map's height at a
    stride is tokens, whatever its aspect (ViT-Tiny's 197×192 at 224 px). An N×H×W of a few
    rows, as long as the input has stride-8/16/32 cells, is said to look like a YOLO-style
    detector's raw head (4 box coordinates and K class scores at each of A anchors: nudenet's
    YOLOv8n, 22×5376),
    and so is its transpose, a row per anchor (YOLOv5's 25200×85 at 640 px: 3 anchors a cell,
    an objectness before the K class scores). ``picked``: the output is the one the user
    picked (``--output``), so picking another is not advised."""
    if out.dim() != 4 or x.dim() != 4 or min(out.shape[-2:]) < 2:
        return None
    (h, w), (ih, iw) = out.shape[-2:], x.shape[-2:]
    one = out.shape[1] == 1 or is_binary_dense(out)  # N×H×W, as the model returned it
    patch = _token_count(h, ih, iw) if one else None
    if patch is None and abs(math.log((h / w) / (ih / iw))) <= math.log(1.5):
        return None
    tokens = f" or {h} tokens of a patch-{patch} backbone" if patch else ""
    if one and _HEAD_ROWS[0] <= h <= _HEAD_ROWS[1] and w == _anchors(ih, iw):
        return _raw_head(h, w, ih, iw, tokens)
    anchors = _anchors(ih, iw)
    if one and _HEAD_ROWS[0] <= w <= _HEAD_ROWS[1] + 1 and h in (anchors, 3 * anchors):
        return _anchor_rows(h, w, h == 3 * anchors, ih, iw, tokens)
    pick = "" if picked else ", or pick the output to explain (--output KEY, output= in Python)"
    what = "tokens of a backbone?"
    what = f"what looks like {h} tokens of a patch-{patch} backbone" if patch else what
    return (
        f"the model returns {h}×{w} values per image for {ih}×{iw} inputs: not maps of the "
        f"image ({what}), so there are no classes or regions to explain; "
        f"give it a head{pick}; in Python, a target function scores it as the model returns "
        "it (target=lambda out: ..., one score per image)"
    )


def _raw_head(h: int, w: int, ih: int, iw: int, tokens: str = "") -> str:
    wrap = wrap_advice("e.g. the top class score, out[:, 4:].amax(dim=(1, 2))")
    return (
        f"the model returns {h}×{w} values per image for {ih}×{iw} inputs: not maps of the "
        f"image, but what looks like a detector's raw head (4 box coordinates and {h - 4} class "
        f"scores at each of {w} anchors){tokens}; CAMs, ablate and evaluate explain one score per "
        f"image, not boxes: {wrap}; in Python, a target function scores the head as the model "
        "returns it (target=lambda out: out[:, 4 + k, a], class k at anchor a; a score after "
        "the head's sigmoid is a probability, explained as it is: torch.logit(out[:, 4 + k, a]) "
        "explains its logit)"
    )


def _anchor_rows(h: int, w: int, v5: bool, ih: int, iw: int, tokens: str = "") -> str:
    """A head with a row per anchor: YOLOv5's (3 anchors a cell: 4 box coordinates, an
    objectness and K class scores, 25200×85 at 640 px), a transposed YOLOv8 head's or YOLOX's
    (one anchor a cell; YOLOX's scores an objectness, then K class scores: its detection score
    is their product)."""
    first = 5 if v5 else 4
    scores = (
        f"an objectness and {w - 5} class scores"
        if v5
        else f"{w - 4} scores (class scores; YOLOX's: an objectness, then the class scores)"
    )
    yolox = (
        "" if v5 else "; YOLOX's detection score, (out[..., 4:5] * out[..., 5:]).amax(dim=(1, 2))"
    )
    wrap = wrap_advice(f"e.g. the top class score, out[..., {first}:].amax(dim=(1, 2)){yolox}")
    return (
        f"the model returns {h}×{w} values per image for {ih}×{iw} inputs: not maps of the "
        f"image, but what looks like a detector's raw head (a row per anchor, {h} of them: 4 "
        f"box coordinates, {scores}){tokens}; CAMs, ablate and evaluate explain one score per "
        f"image, not boxes: {wrap}; in Python, a target function scores the head as the model "
        f"returns it (target=lambda out: out[:, a, {first} + k], score k at anchor a; "
        f"out[:, a, 4] * out[:, a, 5 + k] is YOLOX's detection score of class k; a score after "
        "the head's sigmoid is a probability, explained as it is)"
    )


def raw_output(
    scope: _Scope | None, read: torch.Tensor, out: Any, x: torch.Tensor | None, reader: Any
) -> torch.Tensor | None:
    """For a callable target (``scope``): the model's own tensor when ``read`` (the output as
    ``reader`` reads it from the model's ``out`` for inputs ``x``) is no classes or maps of the
    image; None otherwise. ``x`` None: a forward whose inputs are not at hand (masked copies)
    reads as the analysis' first forward did."""
    if scope is None:
        return None
    if x is not None:
        scope.raw = read.dim() not in (2, 4) or not_image_maps(read, x) is not None
    if not scope.raw:
        return None
    from .model_output import picked_output

    t = picked_output(out, reader.key)
    return t.unsqueeze(0) if reader.batch_dims is not None and t.dim() < reader.batch_dims else t


def handed_raw(model: nn.Module) -> bool:
    """Whether the analysis running on ``model`` hands its callable target the model's own
    output."""
    scope = current_scope(model)
    return scope is not None and bool(scope.raw)


@dataclass(frozen=True)
class RawReader(OutputReader):
    """An :class:`~netlens.output_reader.OutputReader`; in a callable target's analysis
    (``scope``), the raw output where :func:`raw_output` hands it (``x``: the inputs, which
    tell it; without them, as the analysis' last forward with them was read: the masked
    copies' fused forward)."""

    scope: _Scope | None = field(default=None, compare=False, repr=False)

    def __call__(self, out: Any, x: torch.Tensor | None = None) -> torch.Tensor:
        read = super().__call__(out)
        got = raw_output(self.scope, read, out, x, self)
        return read if got is None else got
