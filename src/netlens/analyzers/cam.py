"""Class activation maps: the ``cam`` analyzer, its method registry and ``netlens.cam``.

>>> result = netlens.cam(model, "cat.jpg", method="gradcam++", layer="auto")
>>> result.heatmaps.shape, result.targets, result.layer

Built-in methods register through ``netlens_register_cam_methods`` exactly as a plugin's would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import AnalyzerError, NetlensError
from ..layers import eval_mode, resolve_layers
from ..plugins import hookimpl
from .base import Analyzer
from .cam_base import (
    CamContext,
    CamMethod,
    InferenceForward,
    cam_layer,
    capture,
    normalize_maps,
)
from .cam_methods import METHODS
from .cam_result import CamResult

if TYPE_CHECKING:
    from ..lens import Lens
    from ..plugins.registry import Registry

__all__ = ["CamAnalyzer", "cam", "method_name"]

_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}
_FUSE = {"max": lambda s: s.amax(dim=0), "mean": lambda s: s.mean(dim=0)}


@hookimpl
def netlens_register_analyzers(registry: Registry) -> None:
    registry.add("cam", CamAnalyzer(), description=CamAnalyzer.description)


@hookimpl
def netlens_register_cam_methods(registry: Registry) -> None:
    for name, method in METHODS.items():
        registry.add(name, method)


def method_name(name: str) -> str:
    """Canonical method name: ``Grad-CAM++`` → ``gradcam++``, ``gradcampp`` → ``gradcam++``."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return _ALIASES.get(key, key)


class CamAnalyzer(Analyzer):
    """Where the model looks: one heatmap per image and target class."""

    name = "cam"
    description = "Class activation maps (CAM, Grad-CAM, Grad-CAM++, Score-CAM, ...)."

    def run(
        self,
        lens: Lens,
        inputs: Any = None,
        *,
        method: str | CamMethod | type[CamMethod] = "gradcam",
        layer: Any = "auto",
        target: Any = None,
        top: int | None = None,
        batch_size: int = 32,
        fuse: str = "max",
        chunk: int = 16,
        progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> CamResult:
        """Heatmaps for ``inputs`` (paths, a folder, arrays, or a preprocessed tensor batch).

        Args:
            method: a registered method name (``netlens plugins``), class or instance.
            layer: ``auto``, any selector (``layer4``, ``blocks.11``), or several, fused.
            target: None (the predicted class), a class index or name, or one per image.
            top: one map per class for the ``top`` most probable classes (instead of target).
            batch_size: masked forward passes run at once (Score-CAM, Ablation-CAM).
            fuse: how maps of several layers are combined: ``max`` or ``mean``.
            chunk: images per forward/backward pass.
            progress: called as ``progress(done, total)`` after each chunk of images.
        """
        if options:
            raise NetlensError(f"unknown cam option(s): {', '.join(sorted(options))}")
        if fuse not in _FUSE:
            raise NetlensError(f"fuse must be 'max' or 'mean', not '{fuse}'")
        if top is not None and target is not None:
            raise NetlensError("give either a target or top=K, not both")
        if top is not None and int(top) < 1:
            raise NetlensError(f"top must be at least 1, got {top}")
        impl, method_label = _method(lens, method)
        batch = lens.batch(inputs)
        x = batch.tensor
        model = lens.model
        with eval_mode(model):
            layers, auto = _layers(model, layer, x[:1])
            heat, probs, targets = _run_chunks(
                lens,
                impl,
                x,
                layers,
                target,
                top,
                max(1, int(batch_size)),
                fuse,
                max(1, int(chunk)),
                progress,
            )
        return CamResult(
            name="cam",
            arrays={"heatmaps": heat, "probs": probs, "targets": targets},
            meta={
                "method": method_label,
                "layers": layers,
                "layer_auto": auto,
                "images": list(batch.names),
                "classes": lens.classes,
                "top": top,
                "explicit_target": target is not None,
                "errors": list(batch.errors),
                "input_size": list(x.shape[-2:]),
                "from_tensor": [o is None for o in batch.originals],
            },
            originals=[
                o if o is not None else lens.transform.denormalize(t)
                for o, t in zip(batch.originals, x, strict=True)
            ],
            preprocess=lens.transform,
        )


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
    return registry.get(name)(), name


def _layers(model: nn.Module, layer: Any, example: torch.Tensor) -> tuple[list[str], bool]:
    """Resolve the selector; ``auto`` (alone or in a list) means :func:`cam_layer`."""
    items = [s.strip() for s in layer.split(",")] if isinstance(layer, str) else layer
    if isinstance(items, nn.Module):
        items = [items]
    auto = any(isinstance(i, str) and i == "auto" for i in items)
    picked = [
        cam_layer(model, example) if isinstance(i, str) and i == "auto" else i
        for i in items
        if not (isinstance(i, str) and not i)
    ]
    return resolve_layers(model, picked, example=example), auto


def _run_chunks(
    lens: Lens,
    impl: CamMethod,
    x: torch.Tensor,
    layers: list[str],
    target: Any,
    top: int | None,
    batch_size: int,
    fuse: str,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    heats, probs, targets = [], [], []
    per_image = _per_image_targets(target, len(x))
    many = InferenceForward(lens.model, _no_grad(lens.logits))  # one fused copy per run
    if progress is not None:
        progress(0, len(x))
    for start in range(0, len(x), chunk):
        xs = x[start : start + chunk]
        ts = per_image[start : start + chunk] if per_image is not None else None
        h, p, t = _cam_batch(lens, impl, xs, layers, ts, top, batch_size, fuse, many)
        heats.append(h)
        probs.append(p)
        targets.append(t)
        if progress is not None:
            progress(start + len(xs), len(x))
    return np.concatenate(heats), np.concatenate(probs), np.concatenate(targets)


def _per_image_targets(target: Any, n: int) -> list[Any] | None:
    if target is None:
        return None
    if isinstance(target, torch.Tensor | np.ndarray):
        target = target.tolist()
    if isinstance(target, str) and "," in target:
        target = [t.strip() for t in target.split(",")]
    if isinstance(target, Sequence) and not isinstance(target, str):
        if len(target) != n:
            raise NetlensError(
                f"{len(target)} targets given for {n} images; give one per image "
                "or a single class for all"
            )
        return list(target)
    return [target] * n


def _cam_batch(
    lens: Lens,
    impl: CamMethod,
    x: torch.Tensor,
    layers: list[str],
    target: list[Any] | None,
    top: int | None,
    batch_size: int,
    fuse: str,
    many: InferenceForward,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps N×K×H×W, probabilities N×classes and targets N×K for one chunk of images."""
    model = lens.model

    def choose(logits: torch.Tensor) -> list[torch.Tensor]:
        k = logits.shape[1]
        if top is not None:
            idx = logits.topk(min(int(top), k), dim=1).indices
            return [idx[:, j] for j in range(idx.shape[1])]
        if target is None:
            return [logits.argmax(dim=1)]
        return [torch.tensor([lens.class_index(t, k) for t in target], device=logits.device)]

    cap, sets = capture(model, x, layers, lens.logits, choose, grads=impl.needs_grads)
    caches: dict[str, dict[str, Any]] = {n: {} for n in layers}
    maps = []
    for k, t in enumerate(sets):
        per_layer = []
        for name in layers:
            acts = cap.acts[name]
            if acts.shape[-1] * acts.shape[-2] <= 1:
                raise AnalyzerError(
                    f"layer '{name}' has a 1×1 output (after global pooling), so there is no "
                    "map to draw; pick an earlier convolutional layer (see `netlens layers`)"
                )
            ctx = CamContext(
                model=model,
                x=x,
                layer=name,
                acts=acts,
                grads=cap.grads[k][name] if cap.grads else None,
                targets=t,
                logits=cap.logits,
                forward=_no_grad(lens.logits),
                batch_size=batch_size,
                raw=cap.raw[name],
                cache=caches[name],
                masked_forward=many,
            )
            per_layer.append(impl(ctx))
        fused = (
            per_layer[0]
            if len(per_layer) == 1
            else normalize_maps(_FUSE[fuse](torch.stack(per_layer)))
        )
        maps.append(fused)
    heat = torch.stack(maps, dim=1).float().cpu().numpy()
    probs = torch.softmax(cap.logits.float(), dim=1).cpu().numpy()
    targets = torch.stack(sets, dim=1).cpu().numpy().astype(np.int64)
    return heat.astype(np.float32), probs.astype(np.float32), targets


def _no_grad(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(x)

    return run


def cam(model: nn.Module | Lens, images: Any = None, **options: Any) -> CamResult:
    """Class activation maps for a bare ``nn.Module`` or a :class:`~netlens.lens.Lens`.

    Same options as ``lens.cam``; a bare module gets the preprocessing netlens guesses for it
    (pass a preprocessed tensor batch to control it exactly).

    Example:
        >>> r = netlens.cam(model, torch.randn(2, 3, 224, 224), method="scorecam")
        >>> r.heatmaps.shape
        (2, 224, 224)
    """
    from ..lens import Lens

    lens = model if isinstance(model, Lens) else Lens(model)
    return CamAnalyzer().run(lens, images, **options)
