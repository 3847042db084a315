"""Class activation maps: the ``cam`` analyzer, its method registry and ``netlens.cam``.

>>> result = netlens.cam(model, "cat.jpg", method="gradcam++", layer="auto")
>>> result.heatmaps.shape, result.targets, result.layer

Built-in methods register through ``netlens_register_cam_methods`` exactly as a plugin's would.
What is explained is a target (:mod:`netlens.targets`): the prediction by default, a class by
index or name, one per image, ``pos``/``neg`` for a single-logit model, ``output:K``, a region
of a dense output, or any callable.

Sharded over processes (torchrun, ``cam`` over a folder), every rank reads the images and
explains its contiguous share of the chunks (the chunks one process forms, so maps are the same
bit for bit); the chunks' maps are gathered in image order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import AnalyzerError, NetlensError
from ..layers import resolve_layers
from ..targets import Target, resolve_targets, split_targets
from .base import Analyzer, Run
from .cam_base import (
    CamContext,
    CamMethod,
    InferenceForward,
    cam_layer,
    capture,
    normalize_maps,
)
from .cam_result import CamResult, ReadAgain, kept_originals
from .specs import CAM

if TYPE_CHECKING:
    from ..distributed import Group
    from ..lens import Lens

__all__ = ["CamAnalyzer", "cam", "method_name"]

_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}
_FUSE = {"max": lambda s: s.amax(dim=0), "mean": lambda s: s.mean(dim=0)}
WEAK_TARGET = 0.01  # a target below this probability gets a warning: its map is not its evidence


def method_name(name: str) -> str:
    """Canonical method name: ``Grad-CAM++`` → ``gradcam++``, ``gradcampp`` → ``gradcam++``."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return _ALIASES.get(key, key)


class CamAnalyzer(Analyzer):
    """Where the model looks: one heatmap per image and target."""

    spec = CAM

    def compute(self, run: Run) -> CamResult:
        """Heatmaps for ``run.images``; see the options."""
        o, lens = run.options, run.lens
        if o.top is not None and o.target is not None:
            raise NetlensError("give either a target or top=K, not both")
        impl, method_label = _method(lens, o.method)
        batch = run.images
        x = batch.tensor
        # each picture as it is now: the result shows and saves it even after its file changes
        kept = kept_originals(batch.originals)
        layers, auto = _layers(lens.model, o.layer, x[:1], lens.output_key)
        run.layers = layers
        with run.progress.task("cam", total=len(x)) as advance:
            out = _run_chunks(lens, impl, x, layers, o, advance, run.group)
        heat, probs, targets, labels, task = out
        meta = {
            "method": method_label,
            "layers": layers,
            "layer_auto": auto,
            "images": list(batch.names),
            "sources": list(batch.sources) or [None] * len(batch.names),
            "classes": lens.classes,
            "task": task,
            "top": o.top,
            "explicit_target": o.target is not None,
            "target_names": labels,
            "input_size": list(x.shape[-2:]),
            "alpha": o.alpha,
            "from_tensor": [orig is None for orig in batch.originals],
        }
        meta["warnings"] = _headless(lens, task, probs.shape[1]) + _warnings(
            heat, probs, targets, meta
        )
        result = CamResult(
            name="cam",
            arrays={"heatmaps": heat, "probs": probs, "targets": targets},
            meta=meta,
            originals=[
                lens.transform.denormalize(t)
                if k is None
                else k
                if isinstance(k, ReadAgain)
                else k[0]
                for k, t in zip(kept, x, strict=True)
            ],
            original_sizes=[k[1] if isinstance(k, tuple) else None for k in kept],
            preprocess=lens.transform,
        )
        return dataclasses.replace(result, table=result.rows())


def _headless(lens: Lens, task: str, outputs: int) -> list[str]:
    """A model without a classification head: its "classes" are feature dimensions."""
    from ..models.classes import headless

    why = headless(lens.model) if lens.classes is None and task == "multiclass" else None
    if why is None:
        return []
    return [
        f"the model's {outputs} outputs look like features, not class scores ({why}): the "
        "targets are feature indices; load the model with its classification head"
    ]


def _warnings(heat: np.ndarray, probs: np.ndarray, targets: np.ndarray, meta: dict) -> list[str]:
    """One line per misleading picture: an empty/constant map, a target of negligible score."""
    lines = []
    classification = meta["task"] in ("multiclass", "multilabel", "binary")
    for i, name in enumerate(meta["images"]):
        for k in range(heat.shape[1]):
            label = meta["target_names"][i][k]
            if meta["task"] == "dense" and label.endswith(" (0 px)"):  # RegionTarget.describe
                lines.append(
                    f"{name}: the region for {label.removesuffix(' (0 px)')} is empty (no pixel "
                    "is predicted as that class), so its map is empty; give the region as a "
                    "mask: --target region:NAME@mask.png"
                )
            elif float(heat[i, k].max()) <= 0.0:
                lines.append(
                    f"{name}: the {meta['method']} map for {label} is flat (no evidence above "
                    "the ReLU, or the same everywhere: nothing to localise); try another method "
                    "or layer"
                )
            c = int(targets[i, k])
            if classification and 0 <= c < probs.shape[1] and probs[i, c] < WEAK_TARGET:
                lines.append(
                    f"{name}: target {label} has probability {probs[i, c]:.2%}; its map shows "
                    "weak evidence drawn at full scale"
                )
    return lines


def _method(lens: Lens, method: str | CamMethod | type[CamMethod]) -> tuple[CamMethod, str]:
    """The method instance and the name it goes by (its registry name when given by name)."""
    if isinstance(method, CamMethod):
        return method, method.name or type(method).__name__
    if isinstance(method, type) and issubclass(method, CamMethod):
        return method(), method.name or method.__name__
    if not isinstance(method, str):
        raise NetlensError(f"method must be a name or CamMethod, not {type(method).__name__}")
    registry = lens.host.cam_methods
    key = method_name(method)
    name = key if key in registry else method
    found = registry.get(name)
    if isinstance(found, CamMethod):  # a plugin registered a configured instance
        return found, name
    return found(), name


def _layers(
    model: nn.Module, layer: Any, example: torch.Tensor, output: str | int | None = None
) -> tuple[list[str], bool]:
    """Resolve the selector; ``auto`` (alone or in a list) means :func:`cam_layer`."""
    items = [s.strip() for s in layer.split(",")] if isinstance(layer, str) else layer
    if isinstance(items, nn.Module):
        items = [items]
    auto = any(isinstance(i, str) and i == "auto" for i in items)
    picked = [
        cam_layer(model, example, output) if isinstance(i, str) and i == "auto" else i
        for i in items
        if not (isinstance(i, str) and not i)
    ]
    return resolve_layers(model, picked, example=example), auto


def _run_chunks(
    lens: Lens,
    impl: CamMethod,
    x: torch.Tensor,
    layers: list[str],
    o: Any,
    advance: Callable[[int], None],
    group: Group,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]], str]:
    parts: list[tuple[Any, ...]] = []
    many = InferenceForward(lens.model, _no_grad(lens.output), pick=lens.reader)  # one fused copy
    per_image = _per_image(o.target, len(x), lens.classes or [])
    for start in group.share(range(0, len(x), o.chunk)):  # this process's chunks
        stop = min(start + o.chunk, len(x))
        spec = per_image(start, stop)
        parts.append(_cam_batch(lens, impl, x[start:stop], layers, spec, o, many))
        advance(stop - start)
    parts = [p for share in group.gather(parts) for p in share]  # every chunk, in image order
    heat, probs, targets = (np.concatenate([p[j] for p in parts]) for j in range(3))
    return heat, probs, targets, [row for p in parts for row in p[3]], parts[0][4]


def _per_image(target: Any, n: int, names: Any = ()) -> Callable[[int, int], Any]:
    """The target spec for images ``start:stop`` (lists are sliced, objects shifted; a class
    name with a comma is one target)."""
    if isinstance(target, Target) or (callable(target) and not isinstance(target, str)):
        return lambda start, stop: _Shifted(target, start)
    if isinstance(target, (torch.Tensor, np.ndarray)):
        target = target.tolist()
    target = split_targets(target, names)
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise NetlensError(
                f"{len(target)} targets given for {n} images; give one per image "
                "or a single class for all"
            )
        return lambda start, stop: list(target[start:stop])
    return lambda start, stop: target


class _Shifted(Target):
    """A user's target object applied to a chunk of the images: rows offset to the batch."""

    def __init__(self, inner: Any, offset: int) -> None:
        from ..targets import CallableTarget

        self.inner = inner if isinstance(inner, Target) else CallableTarget(inner)
        self.offset = offset
        self.kind = self.inner.kind  # type: ignore[misc]

    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.inner.score(output, rows + self.offset)

    def index(self, n: int) -> np.ndarray:
        full = self.inner.index(self.offset + n)
        return full[self.offset : self.offset + n]

    def describe(self, i: int, lens: Lens | None = None) -> str:
        return self.inner.describe(i + self.offset, lens)


def _cam_batch(
    lens: Lens,
    impl: CamMethod,
    x: torch.Tensor,
    layers: list[str],
    spec: Any,
    o: Any,
    many: InferenceForward,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]], str]:
    """Heatmaps N×K×H×W, scores N×classes, target indices N×K, target labels and the task."""
    model = lens.model

    def choose(output: torch.Tensor) -> list[Target]:
        return resolve_targets(spec, output, lens, top=o.top)

    cap, sets = capture(model, x, layers, lens.output, choose, grads=impl.needs_grads)
    caches: dict[str, dict[str, Any]] = {n: {} for n in layers}
    maps = []
    for k, target in enumerate(sets):
        per_layer = [
            impl(_context(lens, impl, cap, name, x, k, target, caches[name], o, many))
            for name in layers
        ]
        fused = (
            per_layer[0]
            if len(per_layer) == 1
            else normalize_maps(_FUSE[o.fuse](torch.stack(per_layer)))
        )
        maps.append(fused)
    heat = torch.stack(maps, dim=1).float().cpu().numpy()
    probs = lens.probabilities(cap.logits).cpu().numpy()
    targets = np.stack([t.index(len(x)) for t in sets], axis=1)
    labels = [[t.describe(i, lens) for t in sets] for i in range(len(x))]
    task = lens.task_for(cap.logits)
    return heat.astype(np.float32), probs.astype(np.float32), targets, labels, task


def _context(
    lens: Lens,
    impl: CamMethod,
    cap: Any,
    name: str,
    x: torch.Tensor,
    k: int,
    target: Target,
    cache: dict[str, Any],
    o: Any,
    many: InferenceForward,
) -> CamContext:
    acts = cap.acts[name]
    if acts.shape[-1] * acts.shape[-2] <= 1:
        raise AnalyzerError(
            f"layer '{name}' has a 1×1 output (after global pooling), so there is no "
            "map to draw; pick an earlier convolutional layer (see `netlens layers`)"
        )
    return CamContext(
        model=lens.model,
        x=x,
        layer=name,
        acts=acts,
        grads=cap.grads[k][name] if cap.grads else None,
        targets=target,
        logits=cap.logits,
        forward=_no_grad(lens.output),
        batch_size=o.batch_size,
        raw=cap.raw[name],
        cache=cache,
        masked_forward=many,
    )


def _no_grad(forward: Callable[..., torch.Tensor]) -> Callable:
    def run(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            return forward(x, **kwargs)

    return run


def cam(model: nn.Module | Lens, images: Any = None, **options: Any) -> CamResult:
    """Class activation maps for a bare ``nn.Module`` or a :class:`~netlens.lens.Lens`.

    Same options as ``lens.cam``; a bare module gets the preprocessing netlens guesses for it
    (pass a preprocessed tensor batch to control it exactly), and takes ``output=`` and
    ``task=`` as :func:`netlens.load` does.

    Example:
        >>> r = netlens.cam(model, torch.randn(2, 3, 224, 224), method="scorecam")
        >>> r.heatmaps.shape
        (2, 224, 224)
    """
    from ..bare_lens import lens_for

    lens = lens_for(model, options)
    return CamAnalyzer().run(lens, images, **options)  # type: ignore[return-value]
