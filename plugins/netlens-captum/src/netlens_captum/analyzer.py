"""``CaptumAnalyzer``: one netlens analyzer per captum method, built on netlens' public API."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from netlens.analyzers.base import Analyzer
from netlens.errors import AnalyzerError, TargetError
from netlens.layers import eval_mode

from .methods import LogitsModule, Method
from .result import AttributionResult

if TYPE_CHECKING:
    from netlens.lens import Lens

__all__ = ["CaptumAnalyzer", "resolve_targets"]


def resolve_targets(lens: Lens, target: Any, logits: torch.Tensor) -> list[int]:
    """One class index per image: the predicted class by default.

    ``target`` may be an index, a class name, ``"3,cat"`` (one per image), or a list of
    indices/names with one entry per image.
    """
    n, k = logits.shape
    if target is None:
        return logits.argmax(dim=1).tolist()
    if isinstance(target, str) and "," in target:
        target = [t.strip() for t in target.split(",")]
    if isinstance(target, (torch.Tensor, np.ndarray)):
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise TargetError(
                f"got {len(target)} targets for {n} images; give one target, or one per image"
            )
        return [lens.class_index(t, k) for t in target]
    return [lens.class_index(target, k)] * n


class CaptumAnalyzer(Analyzer):
    """Runs one captum attribution method on a batch of images and returns its maps.

    Options: ``target`` (class index or name, one per image, default: the prediction) plus the
    method's own options (``steps``, ``baseline``, ``window``, ``layer``, ...: see
    ``netlens plugins`` and the plugin's README).
    """

    def __init__(self, method: Method) -> None:
        self.method = method
        self.name = method.name  # type: ignore[misc]
        self.description = method.description  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CaptumAnalyzer({self.name!r})"

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The method's defaults updated with ``given``; an unknown option fails with one line."""
        unknown = sorted(set(given) - set(self.method.defaults))
        if unknown:
            known = ", ".join(["target", *self.method.defaults]) or "target"
            raise AnalyzerError(
                f"{self.name} has no option {', '.join(unknown)} (options: {known})"
            )
        return {**self.method.defaults, **given}

    def run(
        self, lens: Lens, inputs: Any = None, *, target: Any = None, **options: Any
    ) -> AttributionResult:
        """Attribute the target class of each image in ``inputs`` to its input pixels."""
        opts = self.options(options)
        batch = lens.batch(inputs)
        x = batch.tensor.detach().clone()
        net = LogitsModule(lens)
        with eval_mode(lens.model), torch.enable_grad(), warnings.catch_warnings():
            # captum warns that it hooks ReLUs (removed again after the call): expected here
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            with torch.no_grad():
                probs = torch.softmax(lens.logits(x), dim=1)
            targets = resolve_targets(lens, target, probs)
            attr, extra = self.method.compute(net, x.requires_grad_(), targets, lens, opts)
        attributions = attr.detach().float().cpu().numpy()
        return self._result(lens, batch, x, attributions, targets, probs, opts, extra)

    def _result(
        self,
        lens: Lens,
        batch: Any,
        x: torch.Tensor,
        attributions: np.ndarray,
        targets: list[int],
        probs: torch.Tensor,
        opts: dict[str, Any],
        extra: dict[str, Any],
    ) -> AttributionResult:
        maps = attributions.sum(axis=1)
        inputs = np.stack([lens.transform.denormalize(t) for t in x.cpu()])
        p = [float(probs[i, t]) for i, t in enumerate(targets)]
        rows = []
        for i, name in enumerate(batch.names):
            row = {
                "image": name,
                "target": targets[i],
                "class": lens.class_name(targets[i]),
                "probability": p[i],
                "attribution_sum": float(attributions[i].sum()),
                "min": float(maps[i].min()),
                "max": float(maps[i].max()),
            }
            if "completeness_delta" in extra:
                row["completeness_delta"] = extra["completeness_delta"][i]
            rows.append(row)
        meta = {
            "method": self.method.title,
            "images": list(batch.names),
            "targets": targets,
            "classes": [lens.class_name(t) for t in targets],
            "probabilities": p,
            "signed": bool((maps < 0).any()),
            "options": opts,
            **extra,
        }
        if batch.errors:
            meta["skipped"] = list(batch.errors)
        return AttributionResult(
            name=self.name,
            arrays={
                "attributions": attributions,
                "maps": maps.astype(np.float32),
                "inputs": inputs,
            },
            table=rows,
            meta=meta,
        )
