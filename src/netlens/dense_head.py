"""Where ``auto`` looks in a dense (segmentation) model: the map feeding its head, not the head.

In a classifier the last spatial map of a forward is what the pooling head reads. A segmentation
model's output is itself a map, so its last spatial calls are the head: torchvision's
``classifier`` (its 1×1 conv gives the class logits), the ``aux_classifier`` that runs after it
and that ``out`` does not even depend on, Hugging Face's ``decode_head``, an smp
``segmentation_head``. A CAM there restates the prediction (Grad-CAM on the logits map is the
class's own logit map) or has no gradient at all. pytorch-grad-cam's segmentation tutorial
points at ``backbone.layer4``.

:func:`feature_slots` finds the calls ``auto`` may choose from, with one forward with gradients
on one example: the calls whose output the chosen output (``--output``) depends on (walking its
autograd graph back), minus the head. The head is the outermost module around the last of those
calls that does not also hold all the others (``classifier`` in a ``DeepLabV3``; in a wrapper
``model.classifier``, not ``model``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import NetlensError

__all__ = ["feature_slots", "is_dense"]

Slot = tuple[str, int]


def is_dense(output: Any, key: str | int | None) -> bool:
    """Whether the output to explain (``key`` picks it) is an N×K×H×W map with H·W > 1."""
    from .targets import model_output

    try:
        t = model_output(output, key)
    except NetlensError:
        return False
    return t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1


def feature_slots(
    model: nn.Module, example: torch.Tensor, key: str | int | None = None
) -> list[Slot] | None:
    """(name, call) of the calls the dense output depends on outside its head, in completion
    order; None when nothing is left (or the graph cannot be followed: then ``auto`` keeps its
    plain rule)."""
    from .layers import eval_mode, named_layers
    from .targets import model_output

    seen: list[tuple[Slot, Any]] = []
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202
        def hook(m: nn.Module, i: Any, out: Any) -> None:
            k = counts[name] = counts.get(name, -1) + 1
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                seen.append(((name, k), out.grad_fn))

        return hook

    leaf = example.detach().clone().requires_grad_(True)
    try:
        for name, mod in named_layers(model).items():
            handles.append(mod.register_forward_hook(hook_for(name)))
        with torch.enable_grad(), eval_mode(model):
            out = model_output(model(leaf.clone()), key)  # a non-leaf: in-place writes are fine
    except Exception:  # noqa: BLE001 - the plain rule still applies; nothing to tell the user
        return None
    finally:
        for h in handles:
            h.remove()
    ancestry = _graph(out.grad_fn)
    feeding = [slot for slot, fn in seen if fn in ancestry]
    if not feeding:
        return None
    head = _head(feeding[-1][0], [name for name, _ in feeding])
    kept = [slot for slot in feeding if not _inside(slot[0], head)]
    return kept or None


def _graph(root: Any) -> set[Any]:
    """Every autograd node ``root`` reaches (the nodes are hashable and compared by identity)."""
    found: set[Any] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node in found:
            continue
        found.add(node)
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return found


def _head(last: str, names: list[str]) -> str:
    """The outermost module around ``last`` that leaves out one of ``names`` (else ``last``)."""
    parts = last.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if any(not _inside(n, prefix) for n in names):
            return prefix
    return last


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
