"""What the output's autograd graph and values say about how to read it (see
:func:`netlens.output_reader.output_rules`).

:func:`is_sigmoid_node` tells a sigmoid, ``torch.sigmoid`` or written out as
``1 / (1 + exp(-z))``. :func:`warn_unread_output` warns, on the one dry forward a lens makes,
about outputs read as logits or a segmentation that do not look like either: every value in
[0, 1] without a sigmoid or softmax netlens recognised (probabilities read as logits call every
image positive), or a one-channel map positive at every pixel of every image (a depth or
density map read as a binary segmentation whose every pixel is foreground; not an output that
is no maps of the image, a detector's raw head, which is refused or handed raw).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["is_sigmoid_node", "warn_saturated", "warn_unread_output"]

_CHECKED_IMAGES = 16  # images of the batch the value checks look at (one forward, no grad)
_FEWEST_VALUES = 4  # [0, 1] values needed before they look like probabilities, not logits
# (one value per image, strictly inside (0, 1), picked out of a larger tensor, is warned about
# at any count: a wrapped detector's top score on one image)
_SATURATED = 0.1  # share of a sigmoid's predicted values at exactly 0 or 1 worth a warning


def is_sigmoid_node(fn: Any) -> bool:
    """Whether autograd node ``fn`` made a sigmoid's output: ``SigmoidBackward0`` (``torch.
    sigmoid``, ``nn.Sigmoid``, ``sigmoid_``, ``torch.special.expit``), or ``1 / (1 + exp(w))``
    written out: ``1 / t`` (``reciprocal`` times 1), ``torch.reciprocal(t)``, ``ones / t`` or
    ``t ** -1`` of ``t = exp(w) + 1``, checked on the values the graph saved (the denominator
    is 1 + the exponential exactly), so ``2 / (1 + exp(w))`` or ``1 / (3 + exp(w))`` is not."""
    try:
        return type(fn).__name__ == "SigmoidBackward0" or _written_sigmoid(fn)
    except (AttributeError, RuntimeError, TypeError, ValueError):  # a node saved otherwise
        return False


def _written_sigmoid(fn: Any) -> bool:
    if type(fn).__name__ == "MulBackward0":  # Python's 1 / t is reciprocal(t) * 1
        (inner, _), (other, _) = fn.next_functions
        if other is not None or not _ones(fn._saved_other):
            return False
        fn = inner
    name = type(fn).__name__
    if name == "ReciprocalBackward0":
        add, denominator = fn.next_functions[0][0], 1 / fn._saved_result
    elif name == "DivBackward0":  # a constant numerator of ones
        (numerator, _), (add, _) = fn.next_functions
        if numerator is not None or not _ones(fn._saved_self):
            return False
        denominator = fn._saved_other
    elif name == "PowBackward0":
        if float(fn._saved_exponent) != -1:
            return False
        add, denominator = fn.next_functions[0][0], fn._saved_self
    else:
        return False
    if type(add).__name__ != "AddBackward0" or float(add._saved_alpha) != 1:
        return False
    nodes = [f for f, _ in add.next_functions]
    grads = [f for f in nodes if f is not None]
    if len(grads) != 1 or len(nodes) != 2 or type(grads[0]).__name__ != "ExpBackward0":
        return False  # exp(w) plus a constant (checked next), not plus another input
    e = grads[0]._saved_result.detach().double()
    d = denominator.detach().double()
    return d.shape == e.shape and bool(torch.allclose(d, 1 + e, rtol=1e-3, atol=1e-6))


def _ones(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.numel() > 0 and bool((t == 1).all())


def warn_saturated(p: torch.Tensor) -> None:
    """A :class:`~netlens.errors.NetlensWarning` when a sigmoid's output ``p``, read back as
    σ⁻¹(p) because its sigmoid could not be located, is saturated (exactly 1, or 0, in its
    dtype) at a large share of its predicted values (p > 0.5 for the positives, p < 0.5 for
    the negatives, whichever is more saturated): the sigmoid's backward p (1 − p) is 0 there,
    so gradient maps miss those pixels (or images)."""
    v = p.detach()
    pos, neg = v > 0.5, v < 0.5
    share = max(
        float((v == 1)[pos].float().mean()) if bool(pos.any()) else 0.0,
        float((v == 0)[neg].float().mean()) if bool(neg.any()) else 0.0,
    )
    if share >= _SATURATED:
        warnings.warn(
            f"{share:.0%} of the model's predicted sigmoid outputs are saturated (exactly 0 or 1 "
            f"in {str(v.dtype).replace('torch.', '')}) and netlens could not read the sigmoid's "
            "input: its backward is 0 there, so gradient maps miss those pixels; return the "
            "logits (drop the final sigmoid), or end the model in a plain torch.sigmoid / "
            "nn.Sigmoid whose output is returned as is",
            _warning(),
            stacklevel=5,
        )


def warn_unread_output(
    model: nn.Module,
    x: torch.Tensor,
    key: str | int | None,
    one: torch.Tensor,
    dims: int | None,
    task: str | None = None,
    *,
    picked: bool = False,
) -> None:
    """A :class:`~netlens.errors.NetlensWarning` when the output (``one``: of ``x[:1]``, as the
    model returned it), read as logits or a segmentation's, looks like neither on the first
    images of ``x``: a classifier's N×K (N×1 too) with every value in [0, 1] and rows not
    summing to 1 (a softmax's, which are read as probabilities), at least four values (any
    number of N×1 values strictly inside (0, 1) when ``picked``: the output picks them out of
    a larger tensor, a wrapper's top score out of a detector's head, not a linear head's
    logit, which lies in (0, 1) often enough on one image); or a
    one-channel dense output positive at every pixel of every image, without ``task``.
    Only when ``one`` already looks so is the rest of the batch run (without autograd)."""
    from .model_output import model_output

    kind = _kind(model_output(one, None, dims), task)
    if kind is None:
        return
    out = one
    if len(x) > 1:
        from .layers import eval_mode

        try:
            with torch.no_grad(), eval_mode(model):
                got = model(x[:_CHECKED_IMAGES].detach().clone())
            out = model_output(got, key, dims)
        except Exception:  # noqa: BLE001 - not this check's to report
            return
    out = model_output(out, None, dims)
    if _kind(out, task) != kind:
        return
    few = picked and _one_probability_each(out)
    if kind == "unit" and (out.numel() >= _FEWEST_VALUES or few):
        shape = "one value per image" if out.shape[1] == 1 else f"{out.shape[1]} per image"
        warnings.warn(
            f"the model's outputs ({shape}) all lie in [0, 1], but not out of a sigmoid or "
            "softmax netlens recognises: they are read as logits, so if they are "
            "probabilities every image reads as positive (σ(p) ≥ 0.5); return the logits "
            "(drop the final sigmoid), or pass --task regression (task= in Python) to explain "
            "the values as they are",
            _warning(),
            stacklevel=4,
        )
    elif kind == "positive" and not _no_maps(out, x):
        warnings.warn(
            f"the model's one-channel {out.shape[-2]}×{out.shape[-1]} output is positive at "
            f"every pixel of the {len(out)} image(s) checked: read as a binary segmentation, every "
            "pixel is foreground; if it is a value per pixel (depth, density), pass --task "
            "regression (task= in Python) to explain it as one",
            _warning(),
            stacklevel=4,
        )


def _no_maps(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the output is no maps of the image (a detector's raw head, tokens): refused, or
    handed raw to a callable target, never read as a segmentation."""
    from .callable_output import not_image_maps

    return not_image_maps(out, x) is not None


def _one_probability_each(out: torch.Tensor) -> bool:
    """One value per image, each strictly between 0 and 1: a probability (a detector's top
    score, out of a sigmoid netlens did not trace) rather than a logit, however few images."""
    v = out.detach()
    return v.dim() == 2 and v.shape[1] == 1 and bool(v.min() > 0) and bool(v.max() < 1)


def _kind(t: torch.Tensor, task: str | None) -> str | None:
    """``unit`` (a classifier's values all in [0, 1], no softmax), ``positive`` (one channel
    positive everywhere), or None."""
    from .targets import are_probabilities

    if not t.is_floating_point() or not t.numel() or not bool(torch.isfinite(t).all()):
        return None
    v = t.detach()
    if v.dim() == 2 and bool(v.min() >= 0) and bool(v.max() <= 1):
        return None if are_probabilities(v.float(), v.dtype) else "unit"
    if v.dim() == 4 and v.shape[1] == 1 and task is None and bool(v.min() > 0):
        return "positive"
    return None


def _warning() -> type[Warning]:
    from .errors import NetlensWarning

    return NetlensWarning
