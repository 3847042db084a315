"""How a model's raw output becomes the tensor netlens explains, sigmoid heads included.

A binary classifier trained with ``BCELoss`` ends in ``nn.Sigmoid`` (or ``torch.sigmoid``)
and outputs p = σ(z), not the logit z. Read as a logit, p ∈ [0, 1] gave σ(p) ∈ [0.5, 0.73]:
every image "positive", confident negatives shown at 50 %; a multi-label model ending in a
sigmoid had its probabilities softmaxed across labels. :func:`ends_in_sigmoid` tells such a
model by the operation that made its output (one forward of one image with autograd, read off
``grad_fn``), and :class:`OutputReader` then reads the logit z, so every rule downstream
(softmax, sigmoid, the single-logit ``[0, z]``) sees logits: the sigmoid's own input, exactly
and with its graph, when the forward was tapped (:mod:`netlens.sigmoid_tap`: CAM's forwards)
and the output is that sigmoid's output; else p read back as z = σ⁻¹(p), which a saturated p
(exactly 0 or 1, where the sigmoid passes no gradient) cannot give back (warned about).

A model ending in a softmax (``nn.Softmax``, ``F.softmax``) outputs the probabilities p of
its N×K classes; :class:`OutputReader` reads them as their logs, log p, which are the model's
logits up to one constant per image (``log softmax(z) = z − logsumexp(z)``), so the
probabilities shown are ``softmax(log p) = p`` and every consumer (CAM targets, evaluate,
ablate, the perturbation metrics) scores the same log-probabilities. Explained on p, Score-CAM
was class-blind (masked scores all in [0, 1], so its channel weights lay within a factor e of
each other) and Ablation-CAM and Grad-CAM++ changed with how the head was written (see
docs/cam-conventions.md). The softmax is told by the output's values, every row in [0, 1] and
summing to 1 (:func:`netlens.targets.are_probabilities`, the rule the probabilities shown and
the metrics' :func:`netlens.targets.as_logits` already used), on every read, so a forward
without autograd (Score-CAM's masked batches, ``predict``) reads exactly as one with it.

A model whose forward ends in ``.squeeze()`` returns K values for one image (its 1×K squeezed),
which read as K images of one logit each; :func:`squeezed_batch_dims` tells such a model (the
tensor has fewer dimensions for one image than for two; :func:`output_rules` learns both
rules from one forward) and the reader gives one image's
output its batch axis back, as pytorch-grad-cam's targets read a 1-d output.

A dense output with one channel (binary segmentation) is read as two classes, background and
foreground (:func:`binary_dense`); a dense output of several sigmoids is several independent
masks (multi-label segmentation), which :meth:`netlens.Lens.dense_sigmoids` tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .model_output import model_output, picked_output
from .output_checks import is_sigmoid_node, warn_saturated, warn_unread_output
from .sigmoid_tap import logit_of, tapped

__all__ = [
    "OutputReader",
    "are_log_probabilities",
    "binary_dense",
    "ends_in_sigmoid",
    "is_binary_dense",
    "is_softmax_output",
    "log_probabilities",
    "output_rules",
    "squeezed_batch_dims",
]

_VIEWS = {  # operations that reshape without computing: look through them
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "SqueezeBackward3",  # .squeeze_() and .squeeze(dims)
    "SqueezeBackward4",
    "FlattenBackward0",
    "CloneBackward0",
    "ToCopyBackward0",
    "SliceBackward0",  # a crop, [..., :h, :w] (after a padded input)
    "SelectBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "UnsqueezeBackward0",  # [:, None], .unsqueeze(1): a channel put back
    "UnsqueezeBackward1",
    "AsStridedBackward0",
    "ExpandBackward0",
    "AliasBackward0",
}
_REDUCED = {  # a max or min: its value is one element's, but depends on every one it reduced
    "AmaxBackward0",
    "AminBackward0",
    "MaxBackward0",  # .max(dim)
    "MaxBackward1",  # .max()
    "MinBackward0",
    "MinBackward1",
}
_IN_RANGE = {  # each value one of the input's, or a convex combination: [0, 1] stays [0, 1]
    "UpsampleNearest1DBackward0",
    "UpsampleNearest2DBackward0",
    "UpsampleNearest3DBackward0",
    "UpsampleNearestExact1DBackward0",
    "UpsampleNearestExact2DBackward0",
    "UpsampleNearestExact3DBackward0",
    "UpsampleLinear1DBackward0",
    "UpsampleBilinear2DBackward0",
    "UpsampleTrilinear3DBackward0",
    "AvgPool2DBackward0",
    "AvgPool3DBackward0",
    "AdaptiveAvgPool2DBackward0",
    "AdaptiveAvgPool3DBackward0",
    "MaxPool2DWithIndicesBackward0",
    "AdaptiveMaxPool2DBackward0",
    # a clamp keeps a sigmoid's values its own between its bounds (BCELoss-safe
    # ``sigmoid(z).clamp(1e-4, 1 - 1e-4)``, CenterNet's ``torch.clamp(x.sigmoid_(), ...)``);
    # bounds outside [0, 1] are caught by the range check
    "ClampBackward0",  # tensor bounds
    "ClampBackward1",  # number bounds, clamp_ and clamp(min=) / clamp(max=) too
    "ClampMinBackward0",
    "ClampMinBackward1",
    "ClampMaxBackward0",
    "ClampMaxBackward1",
    # a max, min or index picks one of its input's values, a mean averages them: a wrapper's
    # top score out of a detector's head (``out[:, 4:].amax(dim=(1, 2))``), one class at one
    # anchor (``out[:, 4 + k, a]``)
    *_REDUCED,
    "MeanBackward0",
    "MeanBackward1",
    "IndexBackward0",
    "IndexSelectBackward0",
    "GatherBackward0",
}  # not bicubic (it overshoots) nor antialiased resizing


@dataclass(frozen=True)
class OutputReader:
    """``model_output(out, key)``; with ``sigmoid``, the logit of an N×K (or N×K×H×W) one:
    the final sigmoid's own input z, exactly and with its graph, when the forward ran under
    :func:`netlens.sigmoid_tap.tapped` and the output is that sigmoid's output (not resized or
    clamped after); else σ⁻¹(p) (see the module doc).

    σ⁻¹ is taken in float64, so every probability the model's dtype holds below 1 reads as its
    own logit (bfloat16's 0.9961 as 5.5, float32's 6e-9 as −18.9); only a saturated 0 or 1 is
    clamped (to the dtype's smallest positive number, and to 1 − eps/2), and the clamp passes
    gradients through, so a map is never flat because its probability is extreme. Logits come
    out in float32 (float64 for a float64 model).

    A softmax's N×K probabilities (every row in [0, 1] summing to 1) are read as log p, taken
    the same way (float64, a 0 clamped to the smallest positive number, gradients straight
    through), unless ``binary_dense`` is off (a regression's values, or independent labels:
    read as they are).
    """

    key: str | int | None = None
    sigmoid: bool = False
    # outputs read as classes: one channel per pixel as background/foreground, a softmax's
    # probabilities as log p (off for a regression's values and independent labels)
    binary_dense: bool = True
    batch_dims: int | None = None  # a model that squeezes one image's batch axis away

    def __call__(self, out: Any) -> torch.Tensor:
        t = model_output(out, self.key, self.batch_dims)
        if self.sigmoid and t.is_floating_point() and t.dim() in (2, 4):
            z = logit_of(t)  # the final sigmoid's own input, when the forward was tapped
            t = _inverse_sigmoid(t) if z is None else z.to(_logit_dtype(t.dtype))
        elif self.binary_dense and is_softmax_output(t):
            t = log_probabilities(t)
        if t.dim() == 4 and t.shape[1] == 1 and self.binary_dense:
            return binary_dense(t)
        return t


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _inverse_sigmoid(p: torch.Tensor) -> torch.Tensor:
    """σ⁻¹(p) in float64 (see :class:`OutputReader`): exact below the dtype's saturation, the
    clamp of a saturated 0 or 1 straight-through for gradients (but the model's own sigmoid
    passes none there: warned about when gradients will be taken)."""
    info = torch.finfo(p.dtype)
    q = p.double()
    if p.requires_grad:
        warn_saturated(p)
    c = q + (q.clamp(info.tiny * info.eps, 1 - info.eps / 2) - q).detach()  # subnormals too
    z = torch.log(c) - torch.log1p(-c)
    return z.to(_logit_dtype(p.dtype))


def is_softmax_output(t: torch.Tensor) -> bool:
    """Whether ``t`` is a classifier's N×K softmax probabilities (K ≥ 2, every value in [0, 1],
    every row summing to 1: :func:`netlens.targets.are_probabilities`), read as log p."""
    from .targets import are_probabilities

    if not t.is_floating_point() or t.dim() != 2:
        return False
    return are_probabilities(t.detach().float(), t.dtype)


def log_probabilities(p: torch.Tensor) -> torch.Tensor:
    """log p in float64 (see :class:`OutputReader`): a 0 clamped to the dtype's smallest
    positive number, straight-through for gradients; out in float32 (float64 for float64)."""
    info = torch.finfo(p.dtype)
    q = p.double()
    c = q + (q.clamp_min(info.tiny * info.eps) - q).detach()
    return torch.log(c).to(torch.promote_types(p.dtype, torch.float32))


def are_log_probabilities(out: torch.Tensor) -> bool:
    """Whether N×K ``out`` is log-probabilities (a softmax model's, as
    :class:`netlens.output_reader.OutputReader` reads them, or a ``log_softmax`` model's):
    every value ≤ 0 and every row's exponentials summing to 1 within a bfloat16 softmax's
    rounding (2⁻⁶). Shown as ``exp``, the model's own probabilities: a softmax would divide
    them by their rows' sums (a bfloat16 0.75 by 1.002)."""
    if out.dim() != 2 or out.shape[1] < 2 or not out.numel() or bool(out.max() > 0):
        return False
    sums = out.double().exp().sum(dim=1)
    return bool(torch.isfinite(out).all()) and bool((sums - 1).abs().max() <= 2**-6)


def binary_dense(z: torch.Tensor) -> torch.Tensor:
    """A binary segmentation's one logit per pixel (N×1×H×W: SMP's ``Unet(classes=1)``,
    ``BCEWithLogitsLoss`` training) as two classes, background and foreground, N×2×H×W
    ``[−z/2, z/2]``: their softmax is ``(σ(−z), σ(z))``, the argmax is foreground where z > 0,
    and explaining the background follows −z. A softmax over the one channel gave every pixel
    probability 1 and made every pixel the "predicted" region."""
    half = z / 2
    return torch.cat([-half, half], dim=1)


def is_binary_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` is :func:`binary_dense`'s output (its channels negate each other exactly,
    which two independently computed channels never do)."""
    return t.dim() == 4 and t.shape[1] == 2 and torch.equal(t[:, 0].detach(), -t[:, 1].detach())


def ends_in_sigmoid(model: nn.Module, x: torch.Tensor, key: str | int | None = None) -> bool:
    """Whether the tensor to explain is a sigmoid's output (see :func:`output_rules`)."""
    return output_rules(model, x, key)[0]


def squeezed_batch_dims(
    model: nn.Module, x: torch.Tensor, key: str | int | None = None
) -> int | None:
    """How many dimensions the output has for a batch, when the model squeezes one image's
    batch axis away (``.squeeze()`` of 1×K, of 1×1×H×W); None for every other model (see
    :func:`output_rules`)."""
    return output_rules(model, x, key)[1]


def output_rules(
    model: nn.Module, x: torch.Tensor, key: str | int | None = None, task: str | None = None
) -> tuple[bool, int | None]:
    """How the model's output reads: whether it is a sigmoid's, and the output's dimensions
    for a batch when the model squeezes one image's batch axis away (else None).

    One forward of ``x[:1]`` with autograd (in eval mode; train/eval flags restored), or of two
    images when the model cannot take one (``x.squeeze()`` before a ``BatchNorm1d``); nothing
    is learnt when that fails too (the analyses report the model's own error).

    Sigmoid: the output's ``grad_fn`` is followed through views and through operations whose
    every value is a convex combination of input values (a crop, a bilinear or nearest resize,
    average pooling, a clamp, a max, an index), so a segmenter's
    ``F.interpolate(torch.sigmoid(z), size)`` and a BCELoss-safe
    ``sigmoid(z).clamp(eps, 1 - eps)`` are a sigmoid's output too, and through a ``torch.cat``
    whose used parts all end in a sigmoid (:func:`_made_by_sigmoid`: a wrapper's top class score
    out of a YOLO head's ``cat([box, sigmoid(cls)])``), as is one
    written out, ``1 / (1 + exp(-z))`` (:func:`is_sigmoid_node`), or the output is the very
    tensor a sigmoid call returned, as the tap records (:mod:`netlens.sigmoid_tap`: an in-place
    ``v.sigmoid_()`` on a view, whose graph shows the view); and every value must lie in
    [0, 1]. An output that is none of these but looks like probabilities, or a one-channel
    map positive everywhere, is warned about (:func:`warn_unread_output`; not for ``task``
    regression, whose values are read as they are).

    Squeeze: only a one-image output that does not start with one row (or is a 0-d scalar) is
    checked, against a no-grad forward of two images: one dimension more, starting with 2, the
    rest the same.
    """
    from .layers import eval_mode

    picked = None
    for n in (1, 2):
        try:
            with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
                probe = (x[:n] if len(x) >= n else x[:1].repeat_interleave(n, 0)).detach().clone()
                if probe.is_floating_point():
                    probe.requires_grad_(True)
                picked, tapped_sigmoid = tapped(_picked_and_tap)(model, probe, key)
            break
        except Exception:  # noqa: BLE001 - not this check's to report
            continue
    else:
        return False, None
    dims = _batch_dims(model, x, key, picked.detach()) if n == 1 else None
    sigmoid = (tapped_sigmoid or _made_by_sigmoid(picked)) and _in_unit(picked)
    if not sigmoid and task != "regression":
        warn_unread_output(model, x, key, picked.detach(), dims, picked=_picks(picked))
    return sigmoid, dims


_PICKS = _REDUCED | {"IndexBackward0", "IndexSelectBackward0", "GatherBackward0"}
_PICKS |= {"SelectBackward0", "SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0"}


def _picks(picked: torch.Tensor) -> bool:
    """Whether the output's last computing operation picks values out of a larger tensor (a
    max, an index, a split: a wrapper's top score out of a detector's head), not a layer that
    computes them (a linear head's logit)."""
    fn = picked.grad_fn
    while fn is not None and type(fn).__name__ in _VIEWS - _PICKS and fn.next_functions:
        fn = fn.next_functions[0][0]
    return fn is not None and type(fn).__name__ in _PICKS


def _made_by_sigmoid(picked: torch.Tensor) -> bool:
    """Whether ``picked``'s graph, followed back through views and in-range operations, ends in
    a sigmoid; through a ``torch.cat`` too (a YOLO head's ``cat([box, sigmoid(cls)])``, a
    wrapper picking its top class score) when every part of the cat that a value of
    ``picked`` comes from ends in one, and so through an in-place write over it (a head that
    decodes its boxes in place) and a product both of whose factors do (YOLOX's objectness ×
    class score). Which parts those are is read off a backward of ones through the graph's own
    nodes, a max or min spread over every element it reduced (its value depends on them all,
    its gradient reaches the one it picked)."""
    fn, _ = _below(picked.grad_fn, None, picked.output_nr)
    if _no_join(fn):
        return fn is not None and is_sigmoid_node(fn)
    try:
        with torch.no_grad():
            ones = torch.ones_like(picked)
            return _sigmoid_below(picked.grad_fn, ones, [_MOST_CATS], picked.output_nr)
    except (AttributeError, IndexError, RuntimeError, TypeError, ValueError):
        return False  # a node that cannot be run back so: no sigmoid told


_MOST_CATS = 64  # cats followed back, at most (a multi-scale head's: a few)


def _below(fn: Any, grad: torch.Tensor | None, nr: int = 0) -> tuple[Any, torch.Tensor | None]:
    """The first node under ``fn`` that is no view, split or in-range operation, and (with
    ``grad``, the output's part in ``fn``'s output ``nr``) its output's part."""
    followed = _VIEWS | _IN_RANGE | _SPLITS
    while fn is not None and type(fn).__name__ in followed and fn.next_functions:
        grad = None if grad is None else _part_below(fn, grad, nr)
        fn, nr = fn.next_functions[0]
    return fn, grad


# parts to follow back: a cat's, a product's, an in-place write's (a head decoding its boxes
# in place, ``out[..., :2] = ...``: the written slice and the rest of the tensor below it)
_JOINS = {"CatBackward0", "MulBackward0", "CopySlices"}


def _no_join(fn: Any) -> bool:
    """Whether ``fn`` is no part to follow back: none, a sigmoid itself (``1 / (1 +
    exp(-z))`` ends in a Mul), or no cat, product or in-place write."""
    return fn is None or is_sigmoid_node(fn) or type(fn).__name__ not in _JOINS


def _sigmoid_below(fn: Any, grad: torch.Tensor, cats: list[int], nr: int = 0) -> bool:
    fn, grad = _below(fn, grad, nr)
    if _no_join(fn) or grad is None:
        return fn is not None and is_sigmoid_node(fn)
    cats[0] -= 1
    parts = fn(grad)
    if type(fn).__name__ == "MulBackward0":  # YOLOX's objectness × class score: both sigmoids'
        return cats[0] >= 0 and all(
            f is not None and _sigmoid_below(f, _factor_part(g, f, k), cats, k)
            for (f, k), g in zip(fn.next_functions, parts, strict=True)
        )
    used = [(f, k, g) for (f, k), g in zip(fn.next_functions, parts, strict=True) if _used(g)]
    return (
        cats[0] >= 0
        and bool(used)
        and all(
            f is not None and _sigmoid_below(f, g.ne(0).to(g.dtype), cats, k) for f, k, g in used
        )
    )


def _factor_part(part: torch.Tensor | None, fn: Any, nr: int) -> torch.Tensor | None:
    """Where a product's factor (``fn``'s output ``nr``) reaches the output: its gradient's
    nonzero values (the other factor's; summed back over the axes it was broadcast along),
    the whole factor where the other is zero there (every factor counts)."""
    if part is None or fn is None:
        return None
    reached = part.ne(0).to(part.dtype).sum_to_size(list(fn._input_metadata[nr].shape)).ne(0)
    return (reached if bool(reached.any()) else torch.ones_like(reached)).to(part.dtype)


def _used(part: torch.Tensor | None) -> bool:
    return part is None or bool(part.ne(0).any())  # None: not told, so not left out


def _part_below(fn: Any, grad: torch.Tensor, nr: int = 0) -> torch.Tensor:
    """Which values of ``fn``'s first input reach ``grad``'s nonzero values (1 where they do;
    ``grad`` the part in ``fn``'s output ``nr``)."""
    name = type(fn).__name__
    if name.startswith("Clamp"):  # elementwise; its gradient is 0 where it clamped
        return grad
    if name in _REDUCED:
        return _spread(fn, grad)
    if name in _SPLITS:
        return _split_part(fn, grad, nr)
    got = fn(grad)
    got = got[0] if isinstance(got, tuple) else got
    return got.ne(0).to(got.dtype)


_SPLITS = {"SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0"}  # (its .chunk too)


def _split_part(fn: Any, grad: torch.Tensor, nr: int) -> torch.Tensor:
    """Piece ``nr`` of a split (Ultralytics' ``box, cls = out.split((4, K), 1)``) placed in
    the split tensor: 1 where ``grad`` is, 0 in the other pieces. An unbind records no sizes:
    its count of pieces is its node's count of inputs (``scores = out.unbind(1)``)."""
    if type(fn).__name__ == "UnbindBackward0":
        count = len(fn._input_metadata)
        dim = _signed(fn._saved_dim) % (grad.dim() + 1)
        full = grad.unsqueeze(dim).repeat_interleave(count, dim).zero_()
        full.select(dim, nr).copy_(grad)
        return full.ne(0).to(grad.dtype)
    shape = tuple(int(v) for v in fn._saved_self_sym_sizes)
    dim = _signed(fn._saved_dim) % len(shape)
    if type(fn).__name__ == "SplitWithSizesBackward0":
        sizes = [int(v) for v in fn._saved_split_sizes]
    else:
        step = int(fn._saved_split_size)
        sizes = [min(step, shape[dim] - i) for i in range(0, shape[dim], step)]
    full = grad.new_zeros(shape)
    full.narrow(dim, sum(sizes[:nr]), sizes[nr]).copy_(grad)
    return full.ne(0).to(grad.dtype)


def _signed(dim: Any) -> int:
    """A node's saved dim as the call gave it: autograd keeps ``-1`` as 2**64 - 1."""
    dim = int(dim)
    return dim - 2**64 if dim >= 2**63 else dim


def _spread(fn: Any, grad: torch.Tensor) -> torch.Tensor:
    """A max's or min's ``grad`` given to every element it reduced."""
    full = type(fn).__name__ in ("MaxBackward1", "MinBackward1")
    saved = getattr(fn, "_saved_self", None)
    shape = tuple(saved.shape) if saved is not None else tuple(fn._saved_self_sym_sizes)
    if full:
        return grad.reshape(()).expand(shape)
    dims = (fn._saved_dim,) if isinstance(fn._saved_dim, int) else tuple(fn._saved_dim)
    dims = tuple(_signed(d) % len(shape) for d in dims) or tuple(range(len(shape)))
    if not fn._saved_keepdim:
        for d in sorted(dims):
            grad = grad.unsqueeze(d)
    return grad.expand(shape)


def _picked_and_tap(
    model: nn.Module, probe: torch.Tensor, key: str | int | None
) -> tuple[torch.Tensor, bool]:
    """The output as the model returned it, and whether the tap recorded the sigmoid call that
    made it (an in-place ``v.sigmoid_()`` on a view, whose ``grad_fn`` is the view's
    ``AsStridedBackward0`` over a ``CopySlices``: :class:`OutputReader` reads it as any other)."""
    picked = picked_output(model(probe), key)
    return picked, logit_of(picked) is not None


def _batch_dims(
    model: nn.Module, x: torch.Tensor, key: str | int | None, one: torch.Tensor
) -> int | None:
    if one.dim() > 0 and one.shape[0] == 1:
        return None
    from .layers import eval_mode

    try:
        probe = x[:2] if len(x) >= 2 else x[:1].repeat_interleave(2, 0)
        with torch.no_grad(), eval_mode(model):
            two = picked_output(model(probe.detach().clone()), key)
    except Exception:  # noqa: BLE001 - not this check's to report
        return None
    same = two.dim() == one.dim() + 1 and two.shape[0] == 2 and two.shape[1:] == one.shape
    return two.dim() if same else None


def _in_unit(t: torch.Tensor) -> bool:
    """Every value in [0, 1] (NaN aside): a sigmoid's output, whatever reshaped it after."""
    v = t.detach()
    v = v[~torch.isnan(v)] if v.is_floating_point() else v
    return not v.numel() or (bool(v.min() >= 0) and bool(v.max() <= 1))
