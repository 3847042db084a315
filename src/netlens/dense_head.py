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
from torch import nn

from .errors import NetlensError

if TYPE_CHECKING:
    from .layers import TracedCall

__all__ = ["ancestor_slots", "feature_slots", "feature_stack", "is_dense", "several_tensors"]

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


#: Layers a headless stack's output comes from (its features), never a dense prediction's.
_FEATURE_ENDS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)
_FEWEST_FEATURES = 16  # channels of a headless stack's output, at least (VGG's: 512)
_DROP_PATHS = ("StochasticDepth", "DropPath")


def feature_stack(traced: list[TracedCall], out: Any, task: str | None) -> bool:
    """Whether a dense output ``out`` (from the dry forward that traced ``traced``) is feature
    maps, a headless stack's (VGG's ``features`` alone, timm's ``num_classes=0,
    global_pool=''``), not a dense prediction whose head ``auto`` leaves out: an N×C×H×W map of
    16 channels or more returned by an activation, pooling or norm layer, or by a residual
    block's sum (a segmentation head ends in a conv, a resize or a sigmoid; a heatmap or depth
    map has few channels)."""
    if task == "dense" or not isinstance(out, torch.Tensor) or out.dim() != 4:
        return False
    if out.shape[1] < _FEWEST_FEATURES:
        return False
    leaves = [c.module for c in traced if c.output is out and not any(c.module.children())]
    ends = [m for m in leaves if not _passes_through(m)]  # timm's Identity pool and head
    if not ends:  # a residual block's sum, written into its stochastic depth's output
        return any(type(m).__name__ in _DROP_PATHS for m in leaves)  # (torchvision ConvNeXt)
    end = ends[-1]
    return isinstance(end, _FEATURE_ENDS) or "Pool" in type(end).__name__ or _is_norm(end)


def _passes_through(module: nn.Module) -> bool:
    """Whether ``module`` hands its input back in eval mode: timm's ``num_classes=0,
    global_pool=''`` head, a dropout, a residual block's stochastic depth (torchvision
    ConvNeXt's, whose output its block's ``+=`` then writes into)."""
    kinds = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d)
    return isinstance(module, kinds) or type(module).__name__ in _DROP_PATHS


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer (DenseNet's ``norm5``, a ConvNeXt head's LayerNorm2d): features
    end in one, a prediction does not."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return isinstance(module, norms) or "Norm" in type(module).__name__
