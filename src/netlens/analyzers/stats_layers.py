"""Which layer calls ``stats`` measures, in which order and where their images are: learnt on
the first batch, before any statistics.

- The calls of the selected modules, in the order a forward of one image runs them (the rows'
  order), and which of them return a tensor. A layer named that returns none (a tuple, a dict:
  ``nn.LSTM``, ``nn.MultiheadAttention``, Hugging Face blocks) is refused; one that a pattern
  (a glob, ``type:``) or the default picked is left out with a warning.
- Where each call's output holds the images (:func:`netlens.image_axis.image_axes`): first for
  most layers, second for sequence-first L×N×C ones, the outer factor of Swin's
  (N·windows)×T×C window attention; and so the channels' axis of one image's share.
- Which layers the default measures (:func:`default_stats_rule`): the activation modules, where
  "dead" means something, unless they are only sigmoids (an output squash, SE gates) or run
  in under a tenth of the Conv2d/Linear calls (a net whose hidden activations are functional,
  ``F.relu``): then every Conv2d and Linear too.
- Each captured output's key (``name``, ``name@i`` for one of several calls) and the call it
  is, so that two selections of one call (``act`` and ``act@1``) count it once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..activations import channels_last
from ..errors import AnalyzerError
from ..few_images import on_fewest
from ..fresh_input import fresh
from ..image_axis import ImageAxis, image_axes
from ..layer_call import LayerCall
from ..layers import eval_mode, named_layers, resolve_layers

__all__ = [
    "REMEDY",
    "Layout",
    "call_order",
    "children_ran",
    "channel_axis",
    "default_stats_layers",
    "default_stats_rule",
    "is_activation",
    "learn",
    "listed",
    "named_selections",
    "not_run",
    "outputs",
    "overwritten",
]

REMEDY = "pick another layer (see `netlens layers MODEL`)"

Slot = tuple[str, int, bool]  # module, call within a forward, as consumed

_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)
SHARE = 0.1  # activation calls per Conv2d/Linear call below which the body is not covered
_ACTS = "the activation modules (ReLU, GELU, ...), where dead means something"
_BOTH = "every Conv2d and Linear and the activation modules"


def is_activation(m: nn.Module) -> bool:
    """An activation-function module: torch's own (and their subclasses), or a weightless
    leaf module of a library's activations (timm's ``GELU``/``GammaAct`` in
    ``timm.layers.activations``, Hugging Face's ``GELUActivation``) or named as one
    (``...Act``, ``...Activation``); not softmaxes or attention."""
    if isinstance(m, _NOT_ACTIVATIONS):
        return False
    if any(c.__module__ == "torch.nn.modules.activation" for c in type(m).__mro__):
        return True
    if any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)):
        return False
    where, name = type(m).__module__.lower(), type(m).__name__.lower()
    return "activation" in where or name.endswith(("act", "activation"))


def _sigmoid(m: nn.Module) -> bool:
    """A sigmoid (torch's, timm's ``HardSigmoid``...): in CNNs an output squash or a gate."""
    return any("sigmoid" in c.__name__.lower() for c in type(m).__mro__)


def default_stats_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """The layers ``stats`` measures by default (see :func:`default_stats_rule`)."""
    return default_stats_rule(model, example)[0]


def default_stats_rule(
    model: nn.Module, example: torch.Tensor | None = None
) -> tuple[list[str], str]:
    """The default layers and the rule that picked them: the activation modules (see
    :func:`is_activation`); every Conv2d and Linear when there are none; both (in module
    order) when the activation modules are only sigmoids (an output squash, SE gates) or run
    in under a tenth of the Conv2d/Linear calls of a forward of ``example`` (without one:
    under a tenth of their modules), as when the hidden activations are functional."""
    layers = named_layers(model)
    acts = [n for n, m in layers.items() if is_activation(m)]
    weights = [n for n, m in layers.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not acts and not weights:
        raise AnalyzerError("no activation, Conv2d or Linear layer found; name layers with --layer")
    if not weights:
        return acts, _ACTS
    if not acts:
        return weights, "every Conv2d and Linear (the model has no activation modules)"
    both = [n for n in layers if n in set(acts) | set(weights)]
    hidden = [n for n in acts if not _sigmoid(layers[n])]
    if not hidden:
        why = "the activation modules are only sigmoids (an output squash or gates)"
        return both, f"{_BOTH}: {why}"
    runs, of = _calls(model, hidden, weights, example)
    if of and runs < SHARE * of:
        why = f"the activation modules run {runs} of {of} Conv2d/Linear calls"
        return both, f"{_BOTH}: {why} (the others are functional, as F.relu)"
    return acts, _ACTS


def _calls(
    model: nn.Module, acts: list[str], weights: list[str], example: torch.Tensor | None
) -> tuple[int, int]:
    """Calls of the modules ``acts`` and ``weights`` in one forward of ``example`` (eval
    mode); their numbers of modules without one, or when the model fails on it."""
    if example is not None:
        try:
            with eval_mode(model):
                seen = on_fewest(lambda few: call_order(model, few, [*acts, *weights]), example)
        except Exception:  # noqa: BLE001 - the static count instead; the run tells its error
            pass
        else:
            ran = Counter(m for m, _ in seen)
            return sum(ran[n] for n in acts), sum(ran[n] for n in weights)
    return len(acts), len(weights)


def overwritten(p: Any) -> bool:
    """Whether an in-place write the probe's plan did not foresee destroyed one of its
    captures in the last forward (reading it would raise; the probe now guards every write,
    so the same forward run again captures it)."""
    return any(e.overwritten for cap in p.captures.values() for e in cap._entries)


@dataclass
class Layout:
    """What the first batch showed: the selections measured, their calls' order and images."""

    names: list[LayerCall]
    order: dict[tuple[str, int], int]  # (module, call) → its place in the forward
    calls: dict[str, int]  # calls per forward, per module
    axes: dict[str, list[ImageAxis]]
    left_out: list[str]  # calls a pattern picked that return no tensor

    def axis(self, slot: Slot) -> ImageAxis:
        per_call = self.axes.get(slot[0], [])
        return per_call[slot[1]] if 0 <= slot[1] < len(per_call) else ImageAxis()

    def place(self, slot: Slot) -> float:
        return self.order.get(slot[:2], float("inf"))


def listed(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:3])
    return f"layer {shown}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def not_run(
    model: nn.Module, refused: list[str], every: str = "", ran: Collection[str] | None = None
) -> AnalyzerError:
    """The refusal of selections that did not run in the forward: the one torch.fx gives
    (:data:`netlens.probe_capture.FX_INLINED`, as features and top-activations say it) for a
    container a GraphModule inlined; for another container (whose blocks ran, when ``ran``,
    the names of the modules that did, is known) :data:`netlens.probe_capture.ONE_BY_ONE`, as
    features says it; else a call the module does not make or a training-only module."""
    from ..probe_capture import FX_INLINED, ONE_BY_ONE, fx_inlined, last_child

    modules = [LayerCall.parse(n).name for n in refused]
    inlined = [n for n in modules if fx_inlined(model, n)]
    if inlined:
        return AnalyzerError(FX_INLINED.format(name=inlined[0]))
    for name in refused:  # a call (``stage@1``) of a module that ran: not a container's case
        child = last_child(model, name)
        if child and (ran is None or any(r.startswith(f"{name}.") for r in ran)):
            why = ONE_BY_ONE.format(child=child)
            return AnalyzerError(f"layer '{name}' did not run in the model's forward: {why}")
    return AnalyzerError(
        f"{listed(refused)} did not run in the model's forward{every} (a call the module does "
        "not make, or a module that runs only in training, as auxiliary heads do); see the "
        "calls in `netlens layers MODEL`"
    )


def children_ran(model: nn.Module, names: list[str], x: torch.Tensor | None) -> list[str] | None:
    """The children of the modules ``names`` that run in a forward of ``x`` (a stage whose
    blocks run one by one, unlike a training-only head: :func:`not_run`'s ``ran``); None when
    that is not known (no input, or the forward fails)."""
    kids = []
    for name in names:
        try:
            kids += [f"{name}.{k}" for k, _ in model.get_submodule(name).named_children()]
        except AttributeError:  # a call (``stage@1``): no container's case
            continue
    if not kids:
        return []
    if x is None:
        return None
    try:
        return [m for m, _ in on_fewest(lambda few: call_order(model, few, kids), x)]
    except Exception:  # noqa: BLE001 - the refusal is told without this
        return None


def call_order(model: nn.Module, x: torch.Tensor, modules: list[str]) -> list[tuple[str, bool]]:
    """(module, returned a tensor) of every call of ``modules`` in a forward of ``x``, in order;
    a tuple whose first element is a map or tokens of the batch counts as that tensor."""
    from ..layers import tuple_head

    seen: list[tuple[str, bool]] = []

    def is_tensor(o: Any) -> bool:
        return isinstance(o, torch.Tensor) or tuple_head(o, len(x)) is not None

    with ExitStack() as stack, torch.no_grad():
        for n in modules:
            hook = lambda m, i, o, n=n: seen.append((n, is_tensor(o)))  # noqa: E731
            stack.callback(model.get_submodule(n).register_forward_hook(hook).remove)
        model(fresh(x))
    return seen


def _call(sel: LayerCall, i: int, calls: dict[str, int]) -> int:
    """The call of its module that output ``i`` of selection ``sel`` in one forward is."""
    k = sel.call
    return i if k is None else k if k >= 0 else calls.get(sel.name, 0) + k


def outputs(p: Any, names: list[LayerCall], calls: dict[str, int]) -> list[tuple[str, Slot, Any]]:
    """(key, slot, output) of every call of every probed selection in one forward, each call
    once (the first selection's key: ``name``, or ``name@i`` for one of several calls, as
    layer selectors name it)."""
    found, taken = [], set()
    for sel in names:
        outs = p[sel].outputs
        for i, out in enumerate(outs):
            slot = (sel.name, _call(sel, i, calls), sel.consumed)
            if slot not in taken:
                taken.add(slot)
                found.append((sel if len(outs) == 1 else f"{sel}@{i}", slot, out))
    return found


def learn(model: nn.Module, x: torch.Tensor, names: list[LayerCall], named: set[str]) -> Layout:
    """The :class:`Layout` of the selections ``names`` from forwards on the first images of
    ``x``; ``named``: the selections asked for by name (refused when they return no tensor)."""
    modules = list(dict.fromkeys(n.name for n in names))
    seen = on_fewest(lambda few: call_order(model, few, modules), x)
    calls: Counter[str] = Counter()
    tensor: dict[tuple[str, int], bool] = {}  # (module, call) → returned a tensor
    order: dict[tuple[str, int], int] = {}
    for module, is_tensor in seen:
        slot = (module, calls[module])
        calls[module] += 1
        tensor[slot], order[slot] = is_tensor, len(order)
    kept, refused, left_out = [], [], []
    for sel in names:
        many = sel.call is None and calls[sel.name] > 1
        picked = range(calls[sel.name]) if sel.call is None else [_call(sel, 0, calls)]
        bad = [
            f"{sel}@{k}" if many else str(sel)
            for k in picked
            if not tensor.get((sel.name, k), True)
        ]
        if bad and str(sel) in named:
            refused.append(str(sel))
        left_out += bad
        if not picked or len(bad) < len(picked):
            kept.append(sel)
    if refused:
        raise AnalyzerError(
            f"{listed(refused)} return(s) no tensor (a dict, another object, or a tuple whose "
            "first element is no map or tokens of the batch), so no activation statistics; "
            "pick a module inside that returns a tensor (see `netlens layers MODEL`)"
        )
    if not kept:
        raise AnalyzerError(
            f"{listed(left_out)} return(s) no tensor (a dict, another object, or a tuple "
            "whose first element is no map or tokens of the batch); pick layers that return "
            "tensors, e.g. a module inside (see `netlens layers MODEL`)"
        )
    used = list(dict.fromkeys(n.name for n in kept))
    axes = image_axes(model, x, used, remedy=REMEDY)
    return Layout(kept, order, dict(calls), axes, list(dict.fromkeys(left_out)))


def named_selections(model: nn.Module, layers: Any) -> set[str]:
    """The selections of ``layers`` (the ``layers`` option) asked for by name: not picked by
    a glob or a ``type:`` pattern."""
    items = layers.split(",") if isinstance(layers, str) else layers
    items = items if isinstance(items, (list, tuple)) else [items]
    plain = named_layers(model)
    named: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            named |= {str(n) for n in resolve_layers(model, item)}
            continue
        base = LayerCall.parse(item).name if item.strip() else "auto"
        if base == "auto":  # picked by netlens, as the default is
            continue
        pattern = item.strip() not in plain and (
            base.startswith("type:") or any(c in base for c in "*?[")
        )
        if not pattern:
            named |= {str(n) for n in resolve_layers(model, item)}
    return named


def channel_axis(model: nn.Module, key: str, ndim: int, where: ImageAxis) -> int:
    """The channels' axis in one image's share of call ``key``'s ``ndim``-d output (its units'
    array): the one after the images for N×C×H×W and N×C, the last for N×H×W×C maps, N×L×C
    tokens, sequence-first L×N×C tokens and Swin's windows."""
    if ndim < 2:
        return 0
    ax = ndim - 1 if ndim in (3, 4) and channels_last(model, key, ndim) else 1
    if where.axis is None:  # no images in it: the output as it is, channels last
        return ndim - 1
    if not where.first and ax == where.axis:  # sequence-first L×N×C: channels last
        ax = ndim - 1
    if where.first:
        return ax - 1
    return ax - 1 if where.groups == 1 and ax > where.axis else ax
