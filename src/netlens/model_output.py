"""The tensor netlens explains, taken out of whatever a model returns: a tensor, a dict
(``logits``, ``out``), a tuple of a main head and its auxiliary copies, an object with
``.logits``; ``--output KEY`` picks another. Shapes that mean one thing are read as it: an
N×K×1×1 head (N×K×1, N×1×K) as N×K, a single logit squeezed to N as N×1, a binary
segmentation's N×H×W as N×1×H×W. Detections are refused in one line that says what to do
(:func:`detection_refusal`).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import NetlensError

__all__ = [
    "DetectionOutputError",
    "detection_refusal",
    "model_output",
    "picked_output",
    "wrap_advice",
]


class DetectionOutputError(NetlensError):
    """The model returned detections (boxes, labels, scores per image), no scores to explain;
    ``named``: the message names a layer of this model (:func:`detection_refusal` with the
    model), else the analyses' run guard words it for the model."""

    def __init__(self, message: str, named: bool = False) -> None:
        super().__init__(message)
        self.named = named


def model_output(
    out: Any, key: str | int | None = None, batch_dims: int | None = None
) -> torch.Tensor:
    """The tensor to explain from a model's raw output.

    Args:
        out: what ``model(x)`` returned.
        key: a dict key, attribute name or tuple index (``--output KEY``); by default the
            ``logits`` attribute/key, then ``out``, then the first tensor.
        batch_dims: how many dimensions the tensor has for a batch of images, when the model
            squeezes one image's batch axis away (``.squeeze()`` of 1×K): a tensor with fewer
            is one image's, given its batch axis back
            (:func:`netlens.output_reader.output_rules`).

    Example:
        >>> model_output({"out": seg, "aux": aux}).shape  # torchvision segmentation
    """
    t = picked_output(out, key)
    if batch_dims is not None and t.dim() < batch_dims:
        t = t.unsqueeze(0)
    return _classifier_shape(t)


def picked_output(out: Any, key: str | int | None = None) -> torch.Tensor:
    """The tensor :func:`model_output` reads, as the model returned it (no reshaping)."""
    if key is not None:
        return _pick(out, key)
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "out"):
        got = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if isinstance(got, torch.Tensor):
            return got
    values = list(out.values()) if isinstance(out, dict) else out
    if isinstance(values, (tuple, list)):
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if tensors and all(t.shape == tensors[0].shape for t in tensors):
            return tensors[0]  # one output, or a main head and its aux copies
        if tensors:
            raise NetlensError(_which_output(out, values))
    if _is_detection(out):
        raise DetectionOutputError(detection_refusal())
    raise NetlensError(
        f"the model returned a {type(out).__name__} with no tensor netlens can explain; "
        "pick one with --output KEY (output= in Python) or wrap the model"
    )


def wrap_advice(example: str) -> str:
    """How to wrap a detector so that it returns one score per image netlens reads right: a
    probability read as a logit is shown as σ(p) (a 0.83 as 70 %) unless netlens traces the
    sigmoid that made it (:func:`netlens.output_reader.output_rules`)."""
    return (
        f"wrap the model so that its forward returns one score per image ({example}) as a "
        "logit (torch.logit(p) = log(p/(1−p)) of a probability p), as p itself out of a "
        "sigmoid in the forward (picked by indexing or max: netlens traces it), or as it is "
        "with --task regression (task= in Python)"
    )


def detection_refusal(model: Any = None, *, layers: bool = False) -> str:
    """What to do with a detector (whose output is boxes, labels and scores per image): for
    ``layers`` (features with layer auto: the analyzers that read a layer's maps) name a
    backbone layer, a real one of ``model`` where it has a ``backbone``; else (CAMs, ablate,
    evaluate, which need one score per image) wrap the model, and name a backbone layer for
    features, stats and top-activations, each advice for the commands it serves."""
    layer = _backbone_layer(model) or "backbone.…"
    name = (
        f"name a backbone layer (--layer {layer}; layer= in Python; `netlens layers MODEL` "
        "lists them)"
    )
    head = "the model returned detections (boxes, labels and scores per image)"
    wrap = wrap_advice("e.g. the top box's score, out[i]['scores'][:1]")
    if layers:
        return (
            f"{head}, not class scores; features, stats and top-activations read a layer's "
            f"maps: {name}"
        )
    return (
        f"{head}: CAMs, ablate and evaluate explain one score per image, not object detectors' "
        f"boxes; for them, {wrap}; features, stats and top-activations run when you {name}"
    )


def _backbone_layer(model: Any) -> str | None:
    """The last module of a detector's backbone (torchvision's ``backbone.body``, else
    ``backbone``), descending into ModuleLists, which are never called themselves."""
    from torch import nn

    root = getattr(model, "backbone", None)
    if not isinstance(root, nn.Module):
        return None
    name = "backbone"
    if isinstance(getattr(root, "body", None), nn.Module):
        root, name = root.body, "backbone.body"
    while True:
        kids = list(root.named_children())
        if not kids:
            return name
        last, root = kids[-1]
        name = f"{name}.{last}"
        if not isinstance(root, (nn.ModuleList, nn.ModuleDict)):
            return name


def _is_detection(out: Any) -> bool:
    """torchvision's detectors (and DETR-style code) return one dict of boxes per image."""
    items = out if isinstance(out, (list, tuple)) else [out]
    return bool(items) and all(isinstance(d, dict) and "boxes" in d for d in items)


def _which_output(out: Any, values: list[Any] | tuple[Any, ...]) -> str:
    """Refusal of a guess: several tensors of different shapes, any of which could be it."""
    keys = list(out) if isinstance(out, dict) else list(range(len(values)))
    shown = [
        f"{k}: {'×'.join(map(str, v.shape))}"
        for k, v in zip(keys, values, strict=True)
        if isinstance(v, torch.Tensor)
    ]
    pyramid = all(isinstance(v, torch.Tensor) and v.dim() == 4 for v in values)
    return (
        f"the model returned a {type(out).__name__} of tensors of different shapes "
        f"({'; '.join(shown[:6])}{'; ...' if len(shown) > 6 else ''}): which holds the "
        "scores to explain would be a guess; pick it with --output KEY (output= in Python)"
        + (
            ". Feature maps at several scales (timm's features_only) hold no class scores: "
            "load the classifier"
            if pyramid
            else ""
        )
    )


def _pick(out: Any, key: str | int) -> torch.Tensor:
    if isinstance(out, torch.Tensor):  # its attributes (.T, .real) are no outputs to pick
        raise NetlensError(
            f"the model returns one tensor, so there is no output '{key}' to pick; leave out "
            "--output (output= in Python), which is for models returning a dict, tuple or object"
        )
    if isinstance(out, dict):
        got = out.get(key, out.get(str(key)))
        keys = list(out)
    elif isinstance(out, (tuple, list)):
        idx = int(key) if str(key).lstrip("-").isdigit() else None
        got = out[idx] if idx is not None and -len(out) <= idx < len(out) else None
        keys = list(range(len(out)))
    else:
        got = getattr(out, str(key), None)
        keys = [k for k in dir(out) if not k.startswith("_")][:12]
    if isinstance(got, dict):  # a detector's per-image dict of boxes, labels and scores
        raise NetlensError(
            f"the model's output '{key}' is a dict ({', '.join(map(str, list(got)[:8]))}), "
            "not a tensor, and --output picks one level only; wrap the model so that its "
            "forward returns the tensor of scores to explain (e.g. "
            f"model(x)[{key if isinstance(out, (tuple, list)) else repr(key)}][KEY])"
        )
    if got is not None and isinstance(out, (dict, tuple, list)) and not torch.is_tensor(got):
        raise NetlensError(
            f"the model's output '{key}' is a {type(got).__name__}, not a tensor, and --output "
            "picks one level only; wrap the model so that its forward returns the tensor of "
            "scores to explain"
        )
    if not isinstance(got, torch.Tensor):
        raise NetlensError(
            f"the model's output has no tensor '{key}' (it has: {', '.join(map(str, keys))})"
        )
    return got


def _classifier_shape(out: torch.Tensor) -> torch.Tensor:
    """N×K×1×1 (a fully convolutional classifier's pooled logits, never kept flat) as N×K:
    one score per class, not a 1-pixel segmentation. A single logit per image squeezed to
    N (``BCEWithLogitsLoss`` training's ``.squeeze(1)``; a 0-d tensor for one image) as N×1;
    :meth:`netlens.Lens.output` refuses a vector that is not one value per image. Likewise a
    binary segmentation's one logit per pixel squeezed to N×H×W (``.squeeze(1)`` for
    ``BCEWithLogitsLoss`` on N×H×W masks) as N×1×H×W: every N×H×W float output, which no
    classifier returns (an N×H×W output crashed every analysis before). A 3-d output with
    one axis of size 1 after the batch, N×K×1 (a ``Conv1d`` head over one position) or
    N×1×K, is N×K as N×K×1×1 is (it crashed after every map was made)."""
    if out.dim() == 4 and out.shape[-2:] == (1, 1):
        return out.flatten(1)
    if out.dim() == 3 and 1 in out.shape[1:]:
        return out.flatten(1)
    if out.dim() == 3 and out.is_floating_point() and min(out.shape[1:]) > 1:
        return out[:, None]
    if out.dim() <= 1:
        return out.reshape(-1, 1)
    return out
