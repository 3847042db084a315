"""The ``kernels`` analyzer: a conv or linear layer's weights as pictures, plus filter statistics.

Views, chosen from the layer:

- ``rgb``: a conv whose input in a dry forward is the input image itself, when it has 3 input
  channels: one RGB tile per filter (a deeper conv with 3 input channels reads feature maps, not
  colours: reduced tiles). Several convs may read the image (RepVGG/MobileOne/FastViT stems run
  a 3×3 and a 1×1 branch on it): each is RGB, and the default layer is the one with the largest
  kernel.
- reduced tiles: deeper convs, one tile per filter after reducing over its input channels
  (``reduce="mean"``, ``"l2"`` or ``"channel:K"``); depthwise convs have a single input per filter
  (``reduce="none"``); grouped convs reduce over their group's inputs.
- ``matrix``: 1×1 convs and dense layers whose inputs are not an image: an out×in heatmap.
- linear layers fed by a flattened image or feature map (LeNet, an MLP on 28×28 digits) are
  reshaped to that image and shown as tiles.

The weights are those the layer convolves with (see :mod:`.kernel_weights`): a
weight-standardised conv's standardised filters, a pruned or weight-normed layer's current
values even before any forward has run, a LoRA-adapted layer's base weights plus the adapter's
update (the adapted layer, not its ``base_layer``, is the default first layer). A conditional
conv (timm's ``CondConv2d``), whose filters are mixed per input, is refused. Only weights are
read: a model of unknown input size is fine (the first layer is then the first declared).

The table has one row per filter (output unit): its L2 norm, mean, std, largest magnitude and
whether it is *near zero*: norm ≤ ``dead_tol`` × the largest finite filter norm of the layer
(an all-zero filter is near zero for any tolerance). Filters holding NaN or ±Inf weights are
``finite: False`` instead, listed in ``meta["non_finite"]``, named in a warning, sorted first
and drawn crossed out in red, labelled "nan".
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..errors import AnalyzerError, NetlensError
from ..layers import named_layers, resolve_layers, trace_outputs
from .base import Analyzer, Result, Run
from .kernel_weights import (
    adapted_weight,
    adapter_base,
    checked_forward_weight,
    conditional_conv_error,
    effective_weight,
    kernel_layer_name,
)
from .options import OptionError
from .specs import KERNELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens

__all__ = ["KernelsAnalyzer", "KernelsResult", "default_kernel_layer", "filter_stats"]


@dataclass(frozen=True)
class KernelsResult(Result):
    """Weights of one layer. ``arrays``: ``weight`` (as the layer convolves with them; how they
    derive from the stored parameters: ``meta["weight_used"]``, None when as stored), ``tiles``
    (raw values, one per shown filter, in display order), ``order`` (the filter index of each
    tile), ``matrix`` (matrix view), ``norm``/``mean`` (per filter)."""

    def headline(self) -> str:
        m = self.meta
        used = f"; weights as used: {m['weight_used']}" if m.get("weight_used") else ""
        return (
            f"kernels of {m['layer']} ({m['type']}, {m['total']} filters, "
            f"{len(m['near_zero'])} near zero{used})"
        )

    def figures(self) -> dict[str, Figure]:
        from ..output import layer_stem
        from ..render.kernel_figures import kernels_figure

        stem = f"kernels-{layer_stem(self.meta['layer'])}"
        return {stem: kernels_figure(self.arrays, self.meta)[0]}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["arrays"] = {k: list(v.shape) for k, v in self.arrays.items()}
        return out


def _weight_used(mod: nn.Module) -> tuple[Any, str | None, str | None]:
    """The weight tensor the layer convolves with (a quantized layer's, ``weight()`` a method
    there, as its float values), how it was derived from the stored parameters (None: as
    stored) and a warning line when it may not be what the forward uses."""
    base = adapter_base(mod)
    if base is not None:  # a LoRA wrapper: its base layer's weights plus the adapter's update
        weight, how, _ = _weight_used(base)
        if isinstance(weight, torch.Tensor):
            return adapted_weight(mod, weight, how)
        return weight, how, None
    weight = getattr(mod, "weight", None)
    if callable(weight) and not isinstance(weight, torch.Tensor):  # torch.ao quantized layers
        try:
            weight = weight()
        except Exception:  # noqa: BLE001 - some other module's method named weight
            return None, None, None
    if isinstance(weight, torch.Tensor) and weight.is_quantized:
        return weight.dequantize(), None, None
    if isinstance(weight, torch.Tensor):
        weight, how, odd = checked_forward_weight(mod, *effective_weight(mod, weight))
        weight, how, warning = adapted_weight(mod, weight, how)  # loralib-style: own factors
        return weight, how, "; ".join(w for w in (odd, warning) if w) or None
    return weight, None, None


def _example(lens: Lens, batch: int = 1) -> torch.Tensor | None:
    """A zero input batch, or None when the model's input size is unknown: kernels reads only
    weights, so it goes on (the declaration order decides the first layer)."""
    try:
        return lens.example(batch)
    except NetlensError:
        return None


def _kinds(kind: type[nn.Module]) -> tuple[type[nn.Module], ...]:
    """``kind`` and its statically quantized counterpart (torch.ao's, not a subclass of it)."""
    from torch.ao.nn import quantized as nnq

    return (kind, nnq.Conv2d) if kind is nn.Conv2d else (kind, nnq.Linear)


def filter_weights(mod: nn.Module, name: str, weight: Any) -> np.ndarray:
    """A conv/linear layer's weights as it convolves with them (``weight``, from
    :func:`_weight_used`), one filter (output unit) per row of the first axis."""
    refusal = conditional_conv_error(mod, name, weight)
    if refusal:
        raise AnalyzerError(refusal)
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
        raise AnalyzerError(
            f"layer '{name}' ({type(mod).__name__}) has no 2-D conv or linear weight to show; "
            "pick a Conv2d or Linear layer (see `netlens layers MODEL`)"
        )
    w = weight.detach().float().cpu().numpy().copy()
    conv = adapter_base(mod) or mod  # a LoRA wrapper's base layer holds the conv's settings
    if isinstance(conv, nn.ConvTranspose2d):  # stored in×out/groups: filters are the outputs
        g = conv.groups
        w = w.reshape(g, w.shape[0] // g, *w.shape[1:]).swapaxes(1, 2)
        w = w.reshape(-1, w.shape[2], *w.shape[3:])
    return w


def _meta(
    name: str, mod: nn.Module, o: Any, weight_used: tuple[Any, str | None, str | None]
) -> dict[str, Any]:
    weight, used, warning = weight_used
    conv = adapter_base(mod) or mod
    meta = {
        "layer": name,
        "type": type(mod).__name__,
        "weight_shape": list(weight.shape),
        "weight_used": used,
        "normalize": o.normalize,
        "sorted": bool(o.sort),
        "dead_tol": o.dead_tol,
        "groups": int(getattr(conv, "groups", 1)),
    }
    if warning:
        meta["warnings"] = [f"{name}: {warning}"]
    return meta


def _order_tiles(
    arrays: dict[str, np.ndarray], table: list[dict[str, Any]], meta: dict[str, Any], o: Any
) -> None:
    """Sort (by norm) and cut the tiles; mark near-zero filters with one warning line."""
    norms = np.array([r["norm"] for r in table])
    bad = ~np.isfinite(norms)
    if o.sort:  # non-finite filters first (NaN and ±Inf alike), then by norm, largest first
        order = np.lexsort((np.arange(len(norms)), -np.where(bad, 0.0, norms), ~bad))
    else:
        order = np.arange(len(norms))
    if "tiles" in arrays:
        order = order[: o.max_filters]
        arrays["tiles"] = arrays["tiles"][order]
    arrays["order"] = order.astype(np.int64)
    meta["shown"], meta["total"] = len(order), len(norms)
    meta["near_zero"] = [r["filter"] for r in table if r["near_zero"]]
    if meta["near_zero"]:
        meta["warnings"] = meta.get("warnings", []) + [
            f"{meta['layer']}: {len(meta['near_zero'])} of {len(table)} filters are near zero "
            f"(norm ≤ {o.dead_tol:g} × the largest finite one): drawn grey, listed in kernels.csv"
        ]
    meta["non_finite"] = [r["filter"] for r in table if not r["finite"]]
    if meta["non_finite"]:
        meta["warnings"] = meta.get("warnings", []) + [
            f"{meta['layer']}: {len(meta['non_finite'])} of {len(table)} filters hold NaN or "
            f"infinite weights (filters {_short(meta['non_finite'])}): the weights have diverged "
            "or overflowed; load a checkpoint from before that (drawn crossed out, marked "
            "'nan' in the labels; left out of the near-zero limit)"
        ]


def _short(items: list[int], limit: int = 8) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", … ({len(items)} in all)" if len(items) > limit else "")


def default_kernel_layer(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The first Conv2d the input reaches (the first Linear when the model has no conv; refused
    when its convolutions are all Conv1d, Conv3d or transposed).

    With an example input, the order is the forward's: a model may declare a branch's or a
    head's conv before its stem (``self.aux = ...`` above ``self.stem = ...``), and the
    declaration order would then show the wrong layer as "the first". Without one, or when
    the dry forward fails, it is the declaration order. A LoRA-adapted conv is named by its
    wrapper (``conv1``, not ``conv1.base_layer``), never by its adapter's factors.
    """
    layers = named_layers(model)
    return _first_layer(model, layers, *_dry_forward(model, layers, example))


def _first_layer(
    model: nn.Module, layers: dict[str, nn.Module], called: list[str], readers: list[str]
) -> str:
    """:func:`default_kernel_layer` from its dry forward's call order and image readers."""
    if readers:  # the largest kernel among the convs reading the image: not a 1×1 side branch
        return max(readers, key=lambda n: (_kernel_area(layers[n]), -readers.index(n)))
    for kind in (nn.Conv2d, nn.Linear):
        for name in [*called, *layers]:  # the forward's order first, then the declaration's
            if isinstance(layers.get(name), _kinds(kind)):
                shown = kernel_layer_name(layers, name)
                if shown is not None:
                    return shown
        other = [n for n in called or layers if isinstance(layers.get(n), _ConvNd)]
        if kind is nn.Conv2d and other:  # Conv1d, Conv3d, ConvTranspose2d: not its "first layer"
            raise AnalyzerError(
                f"{type(model).__name__}'s convolutions are {type(layers[other[0]]).__name__}s "
                f"({other[0]}), not the Conv2d whose filters kernels draws; name the layer to "
                "show with --layer (a Linear is drawn as a matrix)"
            )
    raise AnalyzerError(f"{type(model).__name__} has no Conv2d or Linear layer to show")


def _kernel_area(mod: nn.Module) -> int:
    size = getattr(adapter_base(mod) or mod, "kernel_size", (1, 1))
    return prod(size) if isinstance(size, tuple) else int(size) ** 2


def _dry_forward(
    model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor | None
) -> tuple[list[str], list[str]]:
    """One dry forward on a random input shaped like ``example``: the layers in call order and
    the Conv2d layers (named as kernels shows them) whose input is that very input, in call
    order. Both empty without an example or when the forward fails."""
    if example is None:
        return [], []
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
    reads: dict[str, bool] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, args: tuple[Any, ...]) -> None:
            t = args[0] if args else None
            same = isinstance(t, torch.Tensor) and (
                t is x or (t.shape == x.shape and t.dtype == x.dtype and torch.equal(t, x))
            )
            reads[name] = reads.get(name, False) or bool(same)

        return record

    convs = {n: m for n, m in layers.items() if isinstance(m, _kinds(nn.Conv2d))}
    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in convs.items()]
    try:
        called = [name for name, _, _ in trace_outputs(model, x)]
    except NetlensError:
        return [], []
    finally:
        for h in hooks:
            h.remove()
    readers: list[str] = []
    for name in [*called, *convs]:
        shown = kernel_layer_name(layers, name) if reads.get(name) else None
        if shown is not None and shown not in readers:
            readers.append(shown)
    return called, readers


def filter_stats(weight: np.ndarray, dead_tol: float = 1e-3) -> list[dict[str, Any]]:
    """One row per output unit (first axis) of a weight array: norm, mean, std, max |w|."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt((flat**2).sum(axis=1))
    finite = np.isfinite(flat).all(axis=1)
    # the limit is a share of the largest *finite* filter: one NaN or Inf weight says nothing
    # about the other filters' scale
    limit = dead_tol * float(norms[finite].max(initial=0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        return _rows(flat, norms, finite, limit)


def _rows(
    flat: np.ndarray, norms: np.ndarray, finite: np.ndarray, limit: float
) -> list[dict[str, Any]]:
    return [
        {
            "filter": i,
            "norm": float(norms[i]),
            "mean": float(row.mean()),
            "std": float(row.std()),
            "abs_max": float(np.abs(row).max(initial=0.0)),
            "near_zero": bool(finite[i] and norms[i] <= limit),
            "finite": bool(finite[i]),
        }
        for i, row in enumerate(flat)
    ]


def _parse_reduce(reduce: str | int) -> tuple[str, int | None]:
    if isinstance(reduce, int) or str(reduce).isdecimal():
        return "channel", int(reduce)
    text = str(reduce)
    if text.startswith("channel:") and text[8:].isdecimal():
        return "channel", int(text[8:])
    if text in ("mean", "l2"):
        return text, None
    raise AnalyzerError(f"reduce must be mean, l2 or channel:K (an input channel), not {text!r}")


def _reduce(w: np.ndarray, how: str, channel: int | None) -> np.ndarray:
    """N×C×h×w → N×h×w over the input-channel axis."""
    if how == "mean":
        return w.mean(axis=1)
    if how == "l2":
        return np.sqrt((w.astype(np.float64) ** 2).sum(axis=1)).astype(w.dtype)
    if channel is None or not 0 <= channel < w.shape[1]:
        raise AnalyzerError(
            f"input channel {channel} is out of range: each filter has "
            f"{w.shape[1]} input channels (0..{w.shape[1] - 1})"
        )
    return w[:, channel]


def _one(model: nn.Module, layer: Any) -> str:
    names = resolve_layers(model, layer)
    if len(names) > 1:
        raise AnalyzerError(
            f"kernels shows one layer at a time; the selector matched {len(names)} "
            f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); pick one"
        )
    return names[0].name  # weights belong to the module, whichever call


def _fused_inner(name: str, mod: nn.Module) -> tuple[str, nn.Module]:
    """The conv or linear layer inside a torch.ao fused module (``fuse_modules``' ConvReLU2d:
    ``conv1`` → ``conv1.0``, whose weight the conv receives), else ``name`` and ``mod``."""
    from torch.ao.nn.intrinsic import _FusedModule

    if isinstance(mod, _FusedModule) and not hasattr(mod, "weight") and len(mod):
        if isinstance(mod[0], _ConvNd | nn.Linear):
            return f"{name}.0", mod[0]
    return name, mod


def _reads_input(
    model: nn.Module, layers: dict[str, nn.Module], name: str, seen: tuple[list[str], list[str]]
) -> bool:
    """Whether layer ``name`` takes the model's input image (its channels are the image's), from
    the dry forward ``seen`` (:func:`_dry_forward`: call order, image readers)."""
    shown = kernel_layer_name(layers, name)
    if seen[1]:  # decided per layer: several convs may read the image (parallel stem branches)
        return shown in seen[1]
    try:  # the image is changed before any conv sees it (normalised inside the model, say)
        return shown == _first_layer(model, layers, *seen)
    except AnalyzerError:  # no Conv2d reads the image (transposed convs only)
        return False


def _linear_image_shape(lens: Lens, name: str, features: int) -> tuple[int, ...] | None:
    """C×H×W of what a linear layer sees flattened: the input image or an earlier feature map
    (larger than 1×1), when the layer's input in a dry forward *is* that tensor flattened, not
    merely one of the same size (a classifier after a pooled 512×1×1 map, or after
    ``Linear(4096, ...)`` that happens to match a 256×4×4 conv map, is a matrix)."""
    example = _example(lens, 2)
    if example is None:  # no input size: what the layer sees is unknown, a matrix it is
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(example.shape, generator=g).to(example)
    seen: list[torch.Tensor] = []
    layer = lens.model.get_submodule(name)
    hook = layer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach()) if not seen and args else None
    )
    try:
        traced = trace_outputs(lens.model, x)
    except NetlensError:
        return None
    finally:
        hook.remove()
    if not seen or seen[0].dim() != 2 or seen[0].shape != (len(x), features):
        return None
    names = [n for n, _, _ in traced]
    before = traced[: names.index(name)] if name in names else []
    for out in [x] + [o for _, _, o in before][::-1]:
        if (
            isinstance(out, torch.Tensor)
            and out.dim() == 4
            and out.shape[0] == len(x)
            and prod(out.shape[1:]) == features
            and out.shape[2] * out.shape[3] > 1
            and torch.equal(out.detach().reshape(len(x), -1), seen[0])
        ):
            return tuple(int(s) for s in out.shape[1:])
    return None


class KernelsAnalyzer(Analyzer):
    """Weights of a conv/linear layer as an image grid, with per-filter statistics."""

    spec = KERNELS

    def compute(self, run: Run) -> KernelsResult:
        """The layer's weights as tiles (or a matrix) and one statistics row per filter."""
        lens, o = run.lens, run.options
        _parse_reduce(o.reduce)  # checked up front, also for a layer that needs no reduction
        if o.dead_tol >= 1:  # a share of the largest norm: 1 or more calls every filter dead
            raise OptionError(
                f"kernels: --dead-tol (dead_tol=) is a share of the largest filter's norm and "
                f"must be below 1, got {o.dead_tol:g}"
            )
        layer = o.layer
        layers = named_layers(lens.model)
        seen = _dry_forward(lens.model, layers, _example(lens))  # one, for the layer and view
        if layer in (None, "", "auto"):
            name = _first_layer(lens.model, layers, *seen)
        else:
            name = _one(lens.model, layer)
        name, mod = _fused_inner(name, lens.model.get_submodule(name))
        run.layers = [name]
        weight_used = _weight_used(mod)  # once: it may run the layer on a test input
        w = filter_weights(mod, name, weight_used[0])
        meta = _meta(name, mod, o, weight_used)
        meta["depthwise"] = w.ndim == 4 and w.shape[1] == 1 and meta["groups"] > 1
        reads_image = _reads_input(lens.model, layers, name, seen)
        arrays = self._view(lens, name, w, o.reduce, meta, reads_image)
        table = filter_stats(w, o.dead_tol)
        _order_tiles(arrays, table, meta, o)
        arrays.update(weight=w, norm=np.array([r["norm"] for r in table], np.float32))
        arrays["mean"] = np.array([r["mean"] for r in table], np.float32)
        return KernelsResult("kernels", arrays, table, meta)

    def _view(
        self,
        lens: Lens,
        name: str,
        w: np.ndarray,
        reduce: str | int,
        meta: dict[str, Any],
        reads_image: bool,
    ) -> dict[str, np.ndarray]:
        """Pick the view and make its arrays (``tiles`` or ``matrix``); fills ``meta``."""
        if w.ndim == 2:
            shape = _linear_image_shape(lens, name, w.shape[1])
            if shape is None:
                meta.update(
                    view="matrix", reduce="none", matrix_x="input feature", matrix_y="output unit"
                )
                return {"matrix": w}
            w = w.reshape(w.shape[0], *shape)
            meta["reshaped_to"] = list(shape)
        if w.shape[2] * w.shape[3] == 1 and "reshaped_to" not in meta:
            meta.update(
                view="matrix",
                reduce="none",
                matrix_y="output channel (filter)",
                matrix_x="input channel" + (" within group" if meta["groups"] > 1 else ""),
            )
            return {"matrix": w[:, :, 0, 0]}
        if w.shape[1] == 3 and meta["groups"] == 1 and reads_image:
            meta.update(view="rgb", reduce="rgb")
            if getattr(lens.transform, "channel_order", "rgb") == "bgr":
                meta["channel_order"] = "bgr (shown as RGB)"  # the filters' B, G, R reversed
                w = w[:, ::-1]
            return {"tiles": np.ascontiguousarray(w.transpose(0, 2, 3, 1))}
        if w.shape[1] == 1:
            meta.update(view="tiles", reduce="none")
            return {"tiles": w[:, 0]}
        how, channel = _parse_reduce(reduce)
        meta.update(view="tiles", reduce=how, channel=channel)
        return {"tiles": _reduce(w, how, channel)}
