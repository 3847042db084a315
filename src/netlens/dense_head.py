"""Where ``auto`` looks in a dense (segmentation) model: the map feeding its head, not the head.

In a classifier the last spatial map of a forward is what the pooling head reads. A segmentation
model's output is itself a map, so its last spatial calls are the head: torchvision's
``classifier`` (its 1×1 conv gives the class logits), the ``aux_classifier`` that runs after it
and that ``out`` does not even depend on, Hugging Face's ``decode_head``, an smp
``segmentation_head``. A CAM there restates the prediction (Grad-CAM on the logits map is the
class's own logit map) or has no gradient at all. pytorch-grad-cam's segmentation tutorial
points at ``backbone.layer4``.

:func:`feature_slots` finds the calls ``auto`` may choose from, given a dry forward with
autograd (:func:`netlens.layers.auto_layer` runs it): the calls whose output the chosen output
(``--output``) depends on (walking its autograd graph back), minus the head. The head is the
outermost module around the last of those calls that does not also hold all the others
(``classifier`` in a ``DeepLabV3``; in a wrapper ``model.classifier``, not ``model``), and the
trailing calls with the output's K channels (no larger than the output) before it: in a flat
graph with no containers (an onnx2torch ``GraphModule``) the container is only the final
``Sigmoid``, and the 1-channel logit map before it restated the prediction (DBNet's
``p2o/Add/280``: Grad-CAM r 1.0000 with relu of the logit map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import NetlensError

if TYPE_CHECKING:
    from .layers import TracedCall

__all__ = ["ancestor_slots", "feature_slots", "is_dense", "several_tensors"]

Slot = tuple[str, int]


def is_dense(output: Any, key: str | int | None) -> bool:
    """Whether the output to explain (``key`` picks it) is a dense N×K×H×W map."""
    from .targets import detect_task, model_output

    try:
        return detect_task(model_output(output, key)) == "dense"  # N×K×1×1 is a classifier's
    except NetlensError:
        return False


def feature_slots(
    traced: list[TracedCall], returned: Any, key: str | int | None = None
) -> list[Slot] | None:
    """(name, call) of the calls the dense output depends on outside its head, in completion
    order, from a dry forward with autograd (``traced``, and what it ``returned``); None when
    nothing is left or the graph cannot be followed (``auto`` then keeps its plain rule)."""
    feeding = ancestor_slots(traced, returned, key)
    if not feeding:
        return None
    head = _head(feeding[-1][0], [name for name, _ in feeding])
    kept = [slot for slot in feeding if not _inside(slot[0], head)]
    return _without_head_chain(kept, traced, returned, key) or None


def _without_head_chain(
    kept: list[Slot], traced: list[TracedCall], returned: Any, key: str | int | None
) -> list[Slot]:
    """``kept`` without its trailing calls that have the output's K channels at most at its
    resolution (the logit map, its bias, a resize or final sigmoid), so the last call left has
    more than K channels: a flat graph (an onnx2torch ``GraphModule``: DBNet's
    ``ConvTranspose → Add → Sigmoid``) has no container to tell its head by. Everything kept
    when every call is such (nothing else to choose)."""
    from .targets import model_output

    try:
        out = model_output(returned, key)
    except NetlensError:
        return kept
    k, hw = out.shape[1], out.shape[-2:]
    outputs = {(c.name, c.call): c.output for c in traced}
    end = len(kept)
    while end > 0:
        t = outputs.get(kept[end - 1])
        small = isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == k
        if not (small and t.shape[-2] <= hw[0] and t.shape[-1] <= hw[1]):
            break
        end -= 1
    return kept[:end] or kept


def several_tensors(returned: Any) -> bool:
    """Whether a forward returned several tensors (a tuple, dict or object of them), so the
    output explained may not depend on every layer (a segment-and-classify model)."""
    if isinstance(returned, torch.Tensor):
        return False
    if isinstance(returned, dict):
        values = list(returned.values())
    elif isinstance(returned, (tuple, list)):
        values = list(returned)
    else:
        values = list(getattr(returned, "__dict__", {}).values())
    return sum(isinstance(v, torch.Tensor) for v in values) > 1


def ancestor_slots(
    traced: list[TracedCall], returned: Any, key: str | int | None = None
) -> list[Slot] | None:
    """(name, call) of the calls the output explained depends on (walking its autograd
    graph back), in completion order; None when none or the graph cannot be followed."""
    from .targets import model_output

    try:
        out = model_output(returned, key)
    except NetlensError:
        return None
    ancestry = _graph(out.grad_fn)
    found = [(c.name, c.call) for c in traced if c.grad_fn is not None and c.grad_fn in ancestry]
    return found or None


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
