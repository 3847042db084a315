"""Layer selectors, close-name hints, the CAM layer search and the layer table.

Selectors (several comma-separated, or a list; ``nn.Module`` objects work too):

- ``layer3.1.conv2``: an exact dotted name from ``named_modules()``;
- ``layer*.0.conv?``: a glob over those names; ``type:Conv2d``: every module of a type (or of a
  subclass of it);
- ``NAME@K``: call ``K`` of a module that runs several times in one forward (from 0; negative
  from the end, ``relu@-1`` is the last call); works after globs and types too;
- ``NAME:consumed`` (also ``NAME@K:consumed``): the output as later ops read it, after in-place
  rewrites outside any module (``F.relu(x, inplace=True)`` in a ``forward``);
- ``auto``: the spatial map feeding the head (see :func:`auto_layer`), a call and ``consumed``
  included where needed.

A bare name selects every call of its module: a probe keeps them all (``.outputs``) and
``.output`` asks for ``@K`` when there were several. Selections are :class:`LayerCall` strings.
A module registered under several names (``self.enc2 = self.enc1``) is selected by any of them
and resolves to its first name; its calls are counted per module object, whatever name ran
them (:mod:`netlens.layer_names`).
See ``docs/layers.md``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from .errors import LayerNotFoundError, NetlensError
from .fresh_input import fresh
from .frozen_state import eval_mode, is_observer
from .layer_call import LayerCall
from .layer_names import base_names, named_layers, selector_items

__all__ = [
    "LayerCall",
    "LayerInfo",
    "TracedCall",
    "auto_layer",
    "example_input",
    "guess_input_size",
    "layer_table",
    "named_layers",
    "resolve_layers",
    "trace_calls",
    "trace_outputs",
    "eval_mode",
]


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int
    calls: int = 0
    call_shapes: tuple[tuple[int, ...] | None, ...] = ()
    layout: str = ""  # how netlens reads the output: NCHW, NHWC, NLC (tokens); "" for others

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape) if self.output_shape else None
        d["call_shapes"] = [list(c) if c else None for c in self.call_shapes]
        return d


@dataclass(frozen=True)
class TracedCall:
    """One module call seen in a dry forward, in completion order.

    ``version`` is the output's in-place version counter when the call returned (-1 for
    outputs that are not tensors); comparing it with ``output._version`` after the forward tells
    whether later code rewrote the output in place. ``caller_input_dims`` holds, for each
    module call this call ran inside (outermost first), the number of dimensions of its first
    tensor input (None: no tensor): a 3 means it ran inside a module that takes tokens.
    """

    name: str
    call: int
    module: nn.Module
    output: Any
    version: int
    caller_input_dims: tuple[int | None, ...] = ()
    grad_fn: Any = None  # the output's (a tuple's head's) autograd node (grad forwards)
    input_key: tuple[Any, ...] | None = None  # its first tensor input and its version


def _one_selector(
    model: nn.Module,
    layers: dict[str, nn.Module],
    sel: str,
    example: torch.Tensor | None,
    output: str | int | None = None,
) -> list[LayerCall]:
    sel = sel.strip()
    if sel in layers:
        return [LayerCall(sel)]
    parsed = LayerCall.parse(sel)
    base = parsed.name
    if base == "auto":
        if parsed != "auto":
            raise LayerNotFoundError(
                f"'{sel}': auto picks its call itself; name the module to pick a call (NAME@K)"
            )
        return [auto_layer(model, example, output)]
    return [parsed.with_name(n) for n in base_names(model, layers, base)]


def resolve_layers(
    model: nn.Module,
    selector: str | nn.Module | Sequence[str | nn.Module],
    *,
    example: torch.Tensor | None = None,
    output: str | int | None = None,
) -> list[LayerCall]:
    """Turn selectors into unique :class:`LayerCall` selections, in the order given.

    ``example`` is the input for the dry forward that ``auto`` needs (default: a random batch
    of the size the model says it takes); ``output`` picks the output ``auto`` looks back from
    (``--output``). Call indices are checked when the model runs.

    Example:
        >>> resolve_layers(resnet, "layer4,type:Linear,layer4.1.relu@-1")
        ['layer4', 'fc', 'layer4.1.relu@-1']
    """
    layers = named_layers(model)
    ids = {id(m): n for n, m in layers.items()}
    items = selector_items(selector)
    names: list[LayerCall] = []
    for item in items:
        if not isinstance(item, (str, nn.Module)):
            raise LayerNotFoundError(
                f"{item!r:.60} is not a layer selector: give a name, a glob, type:NAME or a module"
            )
        if isinstance(item, nn.Module):
            if id(item) not in ids:
                raise LayerNotFoundError(
                    f"module {type(item).__name__} is not part of {type(model).__name__}"
                )
            found = [LayerCall(ids[id(item)])]
        elif isinstance(item, LayerCall) and item.name in layers:
            found = [item]
        else:
            found = _one_selector(model, layers, item, example, output)
        names += [n for n in found if n not in names]
    if not names:
        raise LayerNotFoundError("no layer selected; give a layer name, a glob or type:NAME")
    return names


def guess_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) a model expects: its ``input_size``/timm config, else from the first conv."""
    size = getattr(model, "input_size", None)
    embed = getattr(model, "patch_embed", None)
    if size is None and getattr(embed, "img_size", None) is not None:
        chans = getattr(getattr(embed, "proj", None), "in_channels", 3)
        size = (chans, *embed.img_size)  # timm ViT/Swin built for another image size
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size")
    if size is not None:
        return tuple(int(s) for s in size)  # type: ignore[return-value]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 224, 224)
        if isinstance(m, nn.Linear):
            break
    return (3, 224, 224)


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input batch of the size the model expects, on the model's device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *guess_input_size(model), generator=gen)
    return x.to(_param_device(model))


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextmanager
def exclusive(model: nn.Module):  # noqa: ANN201
    """Hold ``model`` for one analysis: another thread's analysis of the same model waits.

    Hooks live on the model's modules, so two threads' hooks would fire on each other's
    forwards (wrong maps, "pop from empty list"), and eval flags saved by one would be restored
    over the other's. Re-entrant: an analysis may run another (sanity runs cam).
    """
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.setdefault(model, threading.RLock())
    with lock:
        yield model


def trace_calls(model: nn.Module, example: torch.Tensor | None = None) -> list[TracedCall]:
    """One dry forward (eval mode, no grad): every module call in completion order.

    Raises NetlensError with a one-line hint when the model cannot run on ``example``.
    """
    return _dry_forward(model, example if example is not None else example_input(model))[0]


def _dry_forward(
    model: nn.Module, x: torch.Tensor, grad: bool = False
) -> tuple[list[TracedCall], Any]:
    """:func:`trace_calls` and what the model returned (``grad``: with autograd on, so each
    call's ``grad_fn`` is recorded)."""
    seen: list[TracedCall] = []
    counts: dict[str, int] = {}
    stack: list[int | None] = []  # input dims of the calls running now, outermost first
    handles = []
    owner = threading.get_ident()  # another thread's forward meanwhile is none of ours
    try:
        for name, mod in named_layers(model).items():

            def enter(m: nn.Module, args: tuple) -> None:
                if threading.get_ident() == owner:
                    stack.append(_first_tensor_dim(args))

            def hook(m: nn.Module, i: Any, out: Any, name: str = name) -> None:
                if threading.get_ident() != owner:
                    return
                stack.pop()
                k = counts[name] = counts.get(name, -1) + 1
                head = out if isinstance(out, torch.Tensor) else tuple_head(out)
                node = head.grad_fn if head is not None else None  # a tuple's: its head's
                key = _input_key(i)
                seen.append(TracedCall(name, k, m, out, _version(out), tuple(stack), node, key))

            handles.append(mod.register_forward_pre_hook(enter))
            handles.append(mod.register_forward_hook(hook))
        with torch.set_grad_enabled(grad), eval_mode(model), torch.random.fork_rng(devices=[]):
            try:
                out = model(fresh(x))  # a model that writes into its input leaves x as it was
            except Exception as exc:  # noqa: BLE001 - explained to the user below
                from .model_checks import multi_input_refusal, video_refusal
                from .preprocess.built_size import fixed_size_hint

                known = multi_input_refusal(model, exc) or video_refusal(model, exc)
                fix = fixed_size_hint(model, tuple(x.shape)) or (
                    "give the model's input size as C,H,W (--input-size 1,28,28; input_size= "
                    "in Python) or an example input"
                )
                raise known or NetlensError(
                    f"a dry forward with input {tuple(x.shape)} failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]}); {fix}"
                ) from exc
    finally:
        for h in handles:
            h.remove()
    return seen, out


def trace_outputs(
    model: nn.Module, example: torch.Tensor | None = None
) -> list[tuple[str, nn.Module, Any]]:
    """One dry forward; (name, module, output) for every called module in completion order."""
    return [(c.name, c.module, c.output) for c in trace_calls(model, example)]


def _input_key(args: Any) -> tuple[Any, ...] | None:
    """A call's first tensor input and its version when the call began, held (so that no
    later tensor takes its memory and seems the same): two calls given the very same tensor,
    unwritten in between, have the same key (see :func:`_same_input`)."""
    t = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if t is None or t.is_inference():
        return None
    return (t, t._version)


def _same_input(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    return a is not None and b is not None and a[0] is b[0] and a[1] == b[1]


def _parallel_branch(traced: list[TracedCall], chosen: TracedCall) -> tuple[str, list[str]]:
    """The module around ``chosen`` that siblings of its own class run beside, on the very
    same input (an ensemble's members; parallel branches), and those siblings; ("", []) when
    nothing runs beside it."""
    by_name: dict[str, list[TracedCall]] = {}
    for c in traced:
        by_name.setdefault(c.name, []).append(c)
    parts = chosen.name.split(".")
    for depth in range(1, len(parts) + 1):
        around, parent = ".".join(parts[:depth]), ".".join(parts[: depth - 1])
        calls = by_name.get(around, [])
        if len(calls) != 1 or calls[0].input_key is None:
            continue
        kind, key = type(calls[0].module), calls[0].input_key
        beside = [
            n
            for n, cs in by_name.items()
            if n != around
            and n.rpartition(".")[0] == parent
            and n.count(".") == around.count(".")
            and type(cs[0].module) is kind
            and any(_same_input(c.input_key, key) for c in cs)
        ]
        if beside:
            return around, beside
    return "", []


def _first_tensor_dim(args: Any) -> int | None:
    """Dimensions of the first tensor in a call's arguments (looking into lists and tuples)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.dim()
        if isinstance(a, (list, tuple)):
            inner = _first_tensor_dim(a)
            if inner is not None:
                return inner
    return None


def tuple_head(out: Any, batch: int | None = None) -> torch.Tensor | None:
    """A tuple's or list's first element when it is a floating-point map or tokens (3-D or
    4-D, ``batch`` long): Hugging Face blocks and stages return ``(hidden_states, …)``."""
    t = out[0] if isinstance(out, (tuple, list)) and out else None
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (3, 4):
        return None
    return t if batch is None or t.shape[0] == batch else None


def _version(out: Any) -> int:
    out = out if isinstance(out, torch.Tensor) else tuple_head(out)
    if not isinstance(out, torch.Tensor) or out.is_inference():
        return -1
    return out._version


def _is_spatial(out: Any, model: nn.Module | None = None, layer: str = "") -> bool:
    """A 4-D output larger than 1×1, its sizes read in the layer's layout (``model`` given: a
    channels-last N×1×1×C stage output is 1×1, not 1×C)."""
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return False
    if model is not None:
        from .activations import channels_last

        if channels_last(model, layer):
            return out.shape[1] * out.shape[2] > 1
    return out.shape[-1] * out.shape[-2] > 1


def _is_map_call(c: TracedCall, strict: bool = True, model: nn.Module | None = None) -> bool:
    """A call whose output is an image-like N×C×H×W map: 4-D, larger than 1×1 (in its layout,
    when ``model`` is given), not a pooling layer, and (``strict``) not computed inside a
    module that takes tokens or vectors (the N×heads×L×d queries, keys and attention weights
    of attention and attention pooling)."""
    inside_tokens = strict and any(d is not None and d != 4 for d in c.caller_input_dims)
    spatial = _is_spatial(c.output, model, f"{c.name}@{c.call}")
    plain = "Pool" not in type(c.module).__name__ and not is_observer(c.module)  # nor a weight
    return spatial and plain and not inside_tokens


def _repeated_blocks(model: nn.Module) -> set[str]:
    """Names of the blocks of repeated-block stacks: children of a ``Sequential`` /
    ``ModuleList`` that holds at least two modules of their type (``blocks.11``,
    ``encoder.layers.encoder_layer_11``), not the layers inside a block's MLP."""
    found: set[str] = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Sequential, nn.ModuleList)):
            continue
        kids = list(mod.named_children())
        types = [type(m) for _, m in kids]
        prefix = f"{name}." if name else ""
        found |= {prefix + n for n, m in kids if types.count(type(m)) >= 2}
    return found


def _selection(traced: list[TracedCall], chosen: TracedCall, consumed: bool) -> LayerCall:
    """``name`` for a module that ran once, ``name@k`` for one of several calls; a warning when
    it lies in one of several branches that run side by side (an ensemble's members)."""
    around, beside = _parallel_branch(traced, chosen)
    if beside:
        import warnings

        from .errors import NetlensWarning

        warnings.warn(
            f"auto chose {chosen.name}, inside {around}; {', '.join(beside[:3])} "
            f"{'runs' if len(beside) == 1 else 'run'} beside it on the same input (an "
            f"ensemble's members, parallel branches), so its map explains {around} alone; "
            "name a layer of each with --layer (layer= in Python) to see them",
            NetlensWarning,
            stacklevel=3,
        )
    calls = sum(1 for c in traced if c.name == chosen.name)
    return LayerCall(chosen.name, chosen.call if calls > 1 else None, consumed=consumed)


def auto_layer(
    model: nn.Module,
    example: torch.Tensor | None = None,
    output: str | int | None = None,
    *,
    features: bool = False,
    task: str | None = None,
) -> LayerCall:
    """The call whose output is the spatial map feeding the head: the usual CAM/feature layer.

    CNNs: the last N×C×H×W output with H·W > 1. Pooling layers themselves are skipped (AlexNet's
    ``avgpool`` keeps 6×6 but is no feature layer), so on AlexNet/VGG the ``features`` stack is
    chosen; so are 4-D tensors computed inside a module that takes tokens (the N×heads×L×d
    keys of attention pooling, attention weights). Several calls can return that very tensor
    (a conv and the in-place ReLU after it; a block and its last ReLU): the call that saw its
    last in-place rewrite wins, and among those the outermost module, so ``layer4`` wins over
    ``layer4.1.act2`` on a ResNet and an in-place ``ReLU`` over the conv before it. When code
    outside any module rewrites it afterwards (DenseNet's ``F.relu(features, inplace=True)``),
    the selection is ``:consumed``. A module that runs several times is returned with its call
    (``act@1``). Token models (timm and torchvision ViTs, MLP-Mixers): when blocks of a
    repeated-block stack whose tokens form a patch grid run after the last spatial layer (the
    patch embedding), the last such block is chosen (without such blocks, the last call whose
    tokens form a patch grid: MViTv2's ``norm``, its blocks returning ``(tokens, size)``).
    Dense (segmentation) models, whose output (``output`` picks it, as ``--output``) is itself
    a map: the same among the calls that output depends on, outside its head (see
    :mod:`netlens.dense_head`): ``backbone.layer4`` of a torchvision DeepLabV3, not its
    ``classifier`` or ``aux_classifier`` (``features=True``, for ``features``: a dense output
    that is a headless stack's feature maps, :func:`netlens.dense_head.feature_stack`, has no
    head to leave out; ``task`` as the Lens'; read off the same forward). A call returning a
    tuple whose first element is such a map or tokens (Hugging Face blocks and stages) counts
    by that element; only blocks returning tensors are preferred over a later token layer (HF Swin
    keeps its final norm). Only outputs with a row per image on their first axis count (not an
    RNN's sequence-first T×N×…); a list is no ``(hidden_states, …)`` (a detector's levels), and
    when a module returns several tensors per image, only the calls the output depends on count
    (a wrapper's ``m(x)[1][:, a, k]`` of an inner detector).
    """
    from .channel_layout import learning_layouts

    x = example if example is not None else example_input(model)
    with learning_layouts(model):  # the same forward tells which layers keep channels last
        traced, returned = _dry_forward(model, x)
    n = len(x) if isinstance(x, torch.Tensor) and x.dim() else None  # tuples: their first element
    peers = any(_several_per_image(c.output, n) for c in traced)
    heads = [_stream_head(c.output, returned, n) for c in traced]
    traced = [c if h is None else replace(c, output=h) for c, h in zip(traced, heads, strict=True)]
    head = not (features and _feature_stack(traced, returned, output, task))
    allowed = _explained_slots(model, x, returned, output, head, peers)
    calls = [
        (i, c)
        for i, c in enumerate(traced)
        if (not allowed or (c.name, c.call) in allowed) and _batch_first(c.output, n)
    ]
    spatial = [(i, c) for i, c in calls if _is_map_call(c, model=model)]
    hw = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else None
    grids = [(i, c) for i, c in calls if _is_token_grid(c.output, model, c.name, hw)]
    blocks = _repeated_blocks(model)
    tokens = [(i, c) for i, c in grids if c.name in blocks and heads[i] is None] or grids
    if not spatial and not tokens:  # e.g. a CNN wrapped in a module fed 3-D spectrograms
        spatial = [(i, c) for i, c in calls if _is_map_call(c, strict=False, model=model)]
    if tokens and (not spatial or tokens[-1][0] > spatial[-1][0]):
        return _selection(traced, tokens[-1][1], consumed=False)
    if not spatial:
        raise NetlensError(
            f"{type(model).__name__} has no layer with a spatial (N×C×H×W) output; "
            "name a layer with --layer (see `netlens layers MODEL`)"
        )
    out = spatial[-1][1].output
    same = [c for _, c in spatial if c.output is out]
    last = max(c.version for c in same)
    best = min((c for c in same if c.version == last), key=lambda c: c.name.count("."))
    return _selection(traced, best, consumed=_version(out) > last)


def _batch_first(out: Any, n: int | None) -> bool:
    """Whether a tensor output has one row per image on its first axis (not an RNN's
    sequence-first T×N×…, nor windows folded into the batch); True when nothing tells."""
    return n is None or not isinstance(out, torch.Tensor) or not out.dim() or out.shape[0] == n


def _several_per_image(out: Any, n: int | None) -> bool:
    """Whether a call returned a tuple or list of several tensors with a row per image (a
    detector's levels), of which the model's output may use some only."""
    if not isinstance(out, (tuple, list)):
        return False
    return sum(isinstance(t, torch.Tensor) and _batch_first(t, n) for t in out) > 1


def _stream_head(out: Any, returned: Any, n: int | None) -> torch.Tensor | None:
    """:func:`tuple_head` of a call's output for ``auto``: only a tuple's (Hugging Face blocks'
    ``(hidden_states, …)``; a list holds peers, such as a detector's levels), and not when the
    model's output is cut out of one of its tensors by indexing alone (a wrapper's
    ``m(x)[1][:, a, k]``: ``m`` returns the scores, not features)."""
    if not isinstance(out, tuple):
        return None
    from .write_guard import tensors_in

    bases = {id(t) for t in out if isinstance(t, torch.Tensor)}
    bases |= {id(t._base) for t in out if isinstance(t, torch.Tensor) and t._base is not None}
    for r in tensors_in(returned):
        if r._base is not None and id(r._base) in bases and all(r is not t for t in out):
            return None
    return tuple_head(out, n)


def _feature_stack(
    traced: list[TracedCall], returned: Any, output: str | int | None, task: str | None
) -> bool:
    from .dense_head import feature_stack
    from .targets import model_output

    try:
        return feature_stack(traced, model_output(returned, output), task)
    except NetlensError:
        return False


def _explained_slots(
    model: nn.Module,
    x: torch.Tensor,
    returned: Any,
    output: str | int | None,
    head: bool = True,
    peers: bool = False,
) -> set[tuple[str, int]]:
    """For a dense output, the calls ``auto`` may pick (see :mod:`netlens.dense_head`), from
    one more dry forward, with autograd; for a model returning several tensors (a
    segment-and-classify model's masks and class scores), or holding a module that does
    (``peers``: a wrapper's one score of an inner detector's levels), the calls the output
    explained depends on, so its class scores are not explained at the segmentation head; empty
    (no restriction) for a single classifier output; ``head`` False: a dense output is feature
    maps, with no head to leave out."""
    from .dense_head import ancestor_slots, feature_slots, is_dense, several_tensors

    dense = head and is_dense(returned, output)
    if not dense and not several_tensors(returned) and not peers:
        return set()
    leaf = x.detach().clone().requires_grad_(True)  # every output then has a graph
    try:
        traced, out = _dry_forward(model, leaf.clone(), grad=True)  # a non-leaf: in-place ok
    except NetlensError:
        return set()  # the plain rule still applies
    slots = feature_slots if dense else ancestor_slots
    return set(slots(traced, out, output) or ())


def _is_token_grid(
    out: Any, model: nn.Module, name: str = "", hw: Sequence[int] | None = None
) -> bool:
    """A 3-D token output that reshapes to a patch grid larger than 1×1 (not a Conv1d's or a
    pooling's N×C×L), for an input of size ``hw`` (a ViT with ``dynamic_img_size``)."""
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        return False
    from .activations import is_spatial

    return is_spatial(out, model, name, hw)


def layer_table(model: nn.Module, example: torch.Tensor | None = None) -> list[LayerInfo]:
    """Name, type, output shape, calls per forward (one dry forward), parameters of each layer,
    and how netlens reads its output's channels (:mod:`netlens.channel_layout`)."""
    from .channel_layout import learning_layouts
    from .layer_params import layout_name, param_counts

    shapes: dict[str, list[tuple[int, ...] | None]] = {}
    with learning_layouts(model):  # the same forward tells which layers keep channels last
        traced = trace_calls(model, example)
    for c in traced:
        out = c.output
        shapes.setdefault(c.name, []).append(
            tuple(out.shape) if isinstance(out, torch.Tensor) else None
        )
    rows = []
    for name, mod in named_layers(model).items():
        params, trainable = param_counts(mod)
        calls = shapes.get(name, [])
        each = [layout_name(model, name, k, c, len(calls)) for k, c in enumerate(calls)]
        named = [e for e in each if e]
        layout = named[0] if len(set(named)) == 1 else "/".join(named)  # by call when mixed
        rows.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                output_shape=next((s for s in calls if s is not None), None),
                params=params,
                trainable=trainable,
                calls=len(calls),
                call_shapes=tuple(calls),
                layout=layout,
            )
        )
    return rows
