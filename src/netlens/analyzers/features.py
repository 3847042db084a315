"""The ``features`` analyzer: a layer's feature maps (its output channels) for some images.

Conv layers give N×C×H×W maps; ViT token layers are reshaped to the patch grid (prefix tokens
dropped) by :func:`netlens.activations.to_spatial`; a layer without spatial extent (a pooled
vector, logits) is refused with one line. By default the ``top`` channels with the largest mean
activation are shown for each image; ``channels=[...]`` picks them explicitly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..activations import patch_stride, tensor_output, to_spatial
from ..errors import AnalyzerError
from ..fresh_input import fresh
from ..layers import resolve_layers
from ..probes import probe
from .base import Analyzer, Result, Run
from .options import OptionError
from .specs import FEATURES, Spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens


__all__ = ["FeaturesAnalyzer", "FeaturesResult", "feature_layer", "pick_channels"]


def _key(layer: str, what: str) -> str:
    return f"{layer}:{what}"


@dataclass(frozen=True)
class FeaturesResult(Result):
    """Feature maps. ``arrays`` per layer L: ``L:maps`` (N×K×H×W, raw), ``L:channels`` (N×K, the
    channel of each map), ``L:means`` (N×C, every channel's mean activation); ``images``
    (N×H×W×3 uint8, the inputs as the model saw them)."""

    def headline(self) -> str:
        meta = self.meta
        return f"features of {', '.join(meta['layers'])} for {len(meta['images'])} image(s)"

    def figures(self) -> dict[str, Figure]:
        from ..output import layer_stem, safe_name
        from ..render.feature_figures import feature_figure

        layers = self.meta["layers"]
        stems = {n: layer_stem(n) for n in layers}  # layer4.1 → layer4_1
        if len(set(stems.values())) < len(layers):  # 'a.b' and 'a_b': names kept as they are
            stems = {n: safe_name(n) for n in layers}
        figs = {}
        for layer in layers:
            for i, image in enumerate(self.meta["images"]):
                stem = f"features-{stems[layer]}-{image}"
                figs[stem] = feature_figure(self.arrays, self.meta, layer, i)
        return figs


def pick_channels(means: torch.Tensor, top: int, channels: Any) -> torch.Tensor:
    """N×K channel indices: the ``top`` largest means per image, or ``channels`` for every image.

    Args:
        means: N×C mean activation of each channel.
        top: how many channels when ``channels`` is None.
        channels: explicit channel indices (a list or a comma-separated string).
    """
    n, c = means.shape
    if channels is None:
        k = max(1, min(int(top), c))  # a NaN mean (broken statistics) ranks last, not first
        return torch.topk(means.nan_to_num(nan=-torch.inf), k, dim=1).indices
    if isinstance(channels, str):
        channels = [int(s) for s in channels.split(",") if s.strip()]
    idx = [int(ch) for ch in (channels if isinstance(channels, (list, tuple)) else [channels])]
    bad = [ch for ch in idx if not 0 <= ch < c]
    if bad or not idx:
        raise AnalyzerError(
            f"channel {bad[0] if bad else '(none)'} is out of range: the layer "
            f"has {c} channels (0..{c - 1})"
        )
    return torch.tensor(idx).expand(n, -1)


def check_channels(spec: Spec, channels: Any, count: str, value: int, flag: str) -> None:
    """Refuse a channel listed twice in ``channels``, and a channel count (option ``count``,
    spelt ``flag``, set off its default) beside them, which it would not change."""
    if channels is None:
        return
    idx = list(channels)
    twice = [c for i, c in enumerate(idx) if c in idx[:i]]
    if twice:
        raise OptionError(
            f"{spec.name}: channel {twice[0]} is given twice in --channels; list each one once"
        )
    if value != next(o.default for o in spec.options if o.name == count):
        raise OptionError(
            f"{spec.name}: give either --channels or {flag} (channels= or {count}= in Python), "
            "not both"
        )


_CHUNK = 32  # images per forward


def _selected(
    out: Any, model: Any, name: str, top: int, channels: Any, x: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """One batch's selected maps (N×K×H×W), their channels (N×K) and all channel means (N×C)."""
    maps = to_spatial(tensor_output(out, name).float(), model, name, len(x), x.shape[-2:])
    if maps.shape[-1] * maps.shape[-2] <= 1:
        raise AnalyzerError(
            f"layer '{name}' has no spatial extent (output shape {tuple(out.shape)}): "
            "its maps are single numbers; pick an earlier conv or block layer"
        )
    means = maps.mean(dim=(2, 3))
    picked = pick_channels(means, top, channels)
    index = picked[:, :, None, None].expand(-1, -1, *maps.shape[-2:])
    return torch.gather(maps, 1, index), picked, means


def feature_layer(lens: Lens, x: torch.Tensor) -> Any:
    """``auto`` for feature maps: the last spatial layer, but not the class maps an all-conv
    head ends with (one channel per class, pooled into the logits): the layer before them.

    The auto layer's maps are class maps when the model's output is those maps pooled (their
    mean or maximum over the map, as read by :func:`netlens.activations.to_spatial`: a timm
    Swin's final N×7×7×768 ``norm`` has 768 channels) and the model is a classifier, not a
    headless backbone whose output is its last maps pooled (timm's ``num_classes=0``, a head
    set to ``nn.Identity``); a channel count equal to the output's alone says nothing (a
    512-d embedding head). The layer before is an image-like map of the input's batch: not
    attention weights (computed inside a module that takes tokens) nor window-folded maps
    (MaxViT's attention on B·windows×h×w×C), nor another map of the class count.
    """
    from ..layer_call import LayerCall
    from ..layers import _is_map_call, auto_layer, trace_calls
    from ..model_output import DetectionOutputError, detection_refusal
    from ..models.classes import headless

    try:
        chosen = auto_layer(lens.model, x, lens.output_key, features=True, task=lens.task)
        with torch.no_grad():
            output = lens.output(x)  # also learns which layers keep channels last
    except DetectionOutputError as exc:  # a named backbone layer needs no scores
        raise DetectionOutputError(detection_refusal(lens.model, layers=True), named=True) from exc
    calls = trace_calls(lens.model, x)
    counts = Counter(c.name for c in calls)

    def selection(c: Any) -> LayerCall:
        return LayerCall(c.name, c.call if counts[c.name] > 1 else None)

    maps = [c for c in calls if _is_map(c, lens.model)]
    mine = [i for i, c in enumerate(maps) if c.name == chosen.name]
    if not mine or output.dim() != 2 or headless(lens.model) is not None:
        return chosen
    last = maps[mine[-1]]
    if not _pooled_into(output, _spatial_or_none(lens.model, selection(last), last.output, x)):
        return chosen
    classes = output.shape[1]
    for c in reversed(maps[: mine[0]]):
        if not _is_map_call(
            c, model=lens.model
        ):  # attention weights, queries, keys: inside a token module
            continue
        count = _channels(lens.model, selection(c), c.output, x)
        if count is not None and count != classes:
            return selection(c)
    return chosen


def _pooled_into(output: torch.Tensor, maps: torch.Tensor | None) -> bool:
    """Whether ``output`` (N×K) is ``maps`` (N×K×H×W) pooled: their mean or maximum."""
    if maps is None or maps.shape[:2] != output.shape:
        return False
    out, maps = output.detach().float().cpu(), maps.detach().float().cpu()
    tol = 1e-4 * max(float(out.abs().max()), 1.0)
    return any(
        torch.allclose(out, pooled, rtol=1e-3, atol=tol)
        for pooled in (maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3)))
    )


def _spatial_or_none(model: Any, name: Any, out: Any, x: torch.Tensor) -> torch.Tensor | None:
    try:
        return to_spatial(out, model, name, len(x), x.shape[-2:])
    except AnalyzerError:
        return None


def _channels(model: Any, name: str, out: torch.Tensor, x: torch.Tensor) -> int | None:
    """How many channels ``name``'s 4-d output has as N×C×H×W; None when it is no map of
    ``x``'s batch (window-folded: one map per window) or no map at all."""
    maps = _spatial_or_none(model, name, out, x)
    return None if maps is None else int(maps.shape[1])


def _is_map(call: Any, model: Any) -> bool:
    from ..layers import _is_spatial

    pooled = "Pool" in type(call.module).__name__
    return _is_spatial(call.output, model, f"{call.name}@{call.call}") and not pooled


def _feature_arrays(
    model: Any, x: torch.Tensor, names: list[str], top: int, channels: Any
) -> dict[str, np.ndarray]:
    """Per layer: the selected maps, their channels, every channel's mean, the map shape."""
    parts: dict[str, list[tuple[torch.Tensor, ...]]] = {n: [] for n in names}
    with torch.no_grad(), probe(model, names, to="cpu", first_of_tuple=True) as p:
        for chunk in x.split(_CHUNK):
            model(fresh(chunk))  # a view of x: the model may write into it
            for name in names:
                parts[name].append(_selected(p[name].output, model, name, top, channels, chunk))
            p.clear()
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        gathered, picked, means = (torch.cat(t) for t in zip(*parts[name], strict=True))
        arrays[_key(name, "maps")] = gathered.numpy()
        arrays[_key(name, "channels")] = picked.numpy().astype(np.int64)
        arrays[_key(name, "means")] = means.numpy()
        arrays[_key(name, "shape")] = np.array([means.shape[1], *gathered.shape[-2:]])
    return arrays


def _table(
    arrays: dict[str, np.ndarray], names: list[str], images: list[str], sources: list[str | None]
) -> list[dict]:
    """One row per layer, image and shown channel: the image's file (None for one given in
    memory), the channel's rank and mean activation."""
    return [
        {
            "layer": n,
            "image": img,
            "source": sources[i],
            "rank": r + 1,
            "channel": int(c),
            "mean": float(arrays[_key(n, "means")][i, int(c)]),
        }
        for n in names
        for i, img in enumerate(images)
        for r, c in enumerate(arrays[_key(n, "channels")][i])
    ]


def _strides(
    model: Any, x: torch.Tensor, names: list[str], arrays: dict[str, np.ndarray]
) -> dict[str, list[int] | None]:
    """Per layer: the patch stride (y, x) when its maps are the ViT's patch grid for ``x``'s
    size (cell (i, j) is the patch at stride × (i, j), which a dynamically padded ViT's grid
    takes past the image), else None (the maps spread over the whole input)."""
    found = {}
    for n in names:
        stride = patch_stride(model, x.shape[-2:], arrays[_key(n, "shape")][-2:].tolist())
        found[n] = None if stride is None else [int(stride[0]), int(stride[1])]
    return found


class FeaturesAnalyzer(Analyzer):
    """Feature maps of one or more layers for some images."""

    spec = FEATURES

    def compute(self, run: Run) -> FeaturesResult:
        """The chosen channels' maps per image and layer, and every channel's mean."""
        lens, o, batch = run.lens, run.options, run.images
        check_channels(FEATURES, o.channels, "top", o.top, "--top/-k")
        x = batch.tensor
        layer = feature_layer(lens, x[:1]) if o.layer == "auto" else o.layer
        names = resolve_layers(lens.model, layer, example=x[:1], output=lens.output_key)
        run.layers = names
        arrays = _feature_arrays(lens.model, x, names, o.top, o.channels)
        arrays["images"] = np.stack([lens.transform.denormalize(t) for t in x.cpu()])
        chosen = arrays[_key(names[0], "channels")][0].tolist()
        sources = list(batch.sources) or [None] * len(batch.names)  # as cam's: which file
        meta = {
            "layers": names,
            "images": batch.names,
            "sources": sources,
            "top": o.top,
            "normalize": o.normalize,
            "channels": None if o.channels is None else chosen,
            "overlay": bool(o.overlay),
            "shapes": {n: [len(x), *arrays[_key(n, "shape")].tolist()] for n in names},
            "strides": _strides(lens.model, x, names, arrays),
            "warnings": _non_finite(arrays, names),
        }
        return FeaturesResult("features", arrays, _table(arrays, names, batch.names, sources), meta)


def _non_finite(arrays: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """One line per layer with channels whose activations are not finite (NaN or ±inf, from
    broken weights or statistics such as a negative BatchNorm ``running_var``)."""
    lines = []
    for name in names:
        bad = np.flatnonzero(~np.isfinite(arrays[_key(name, "means")]).all(axis=0))
        if bad.size:
            shown = ", ".join(map(str, bad[:6].tolist())) + (", …" if bad.size > 6 else "")
            lines.append(
                f"layer '{name}': {bad.size} channel(s) ({shown}) have activations that are "
                "not finite (NaN or inf: broken weights or statistics); they rank last"
            )
    return lines
