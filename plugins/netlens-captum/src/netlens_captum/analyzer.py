"""``CaptumAnalyzer``: one netlens analyzer per captum method, built on netlens' public API."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from netlens.analyzers.base import Analyzer, Option, Run
from netlens.analyzers.options import as_is
from netlens.errors import AnalyzerError, TargetError

from .methods import LogitsModule, Method
from .result import AttributionResult

if TYPE_CHECKING:
    from netlens.lens import Lens

__all__ = ["CaptumAnalyzer", "class_targets"]


def class_targets(lens: Lens, target: Any, output: torch.Tensor) -> list[int]:
    """One class index per image, resolved by netlens' target module (the prediction by
    default; an index, a class name, ``"3,cat"`` or a list with one per image)."""
    from netlens.targets import resolve_targets

    found = resolve_targets(target, output, lens)[0]
    idx = found.index(len(output))
    if found.kind not in ("class", "output", "binary") or (idx < 0).any():
        raise TargetError(
            f"captum methods explain one class per image; {found.kind} targets "
            "are not supported here"
        )
    return [int(i) for i in idx]  # a single logit's: 0 negative, 1 positive (LogitsModule)


class CaptumAnalyzer(Analyzer):
    """Runs one captum attribution method on a batch of images and returns its maps.

    Options: ``target`` (class index or name, one per image, default: the prediction) plus the
    method's own options (``steps``, ``baseline``, ``window``, ``layer``, ...: see
    ``netlens plugins`` and the plugin's README).
    """

    takes = "images"

    def __init__(self, method: Method) -> None:
        self.method = method
        self.name = method.name  # type: ignore[misc]
        self.description = method.description  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CaptumAnalyzer({self.name!r})"

    def declared_options(self) -> tuple[Option, ...]:
        target = Option("target", None, "class index or name, one per image", as_is)
        return (target, *self.method.options)

    def compute(self, run: Run) -> AttributionResult:
        """Attribute the target class of each image to its input pixels."""
        lens, batch = run.lens, run.images
        opts = {k: v for k, v in run.options.items() if k != "target"}
        x = batch.tensor.detach().clone()
        with torch.enable_grad(), warnings.catch_warnings():
            # captum warns that it hooks ReLUs (removed again after the call): expected here
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            with torch.no_grad():
                logits = lens.logits(x)
                probs = lens.probabilities(logits)
            net = LogitsModule(lens, binary=lens.task_for(logits) == "binary")
            targets = class_targets(lens, run.options.target, logits)
            try:
                attr, extra = self.method.compute(net, x.requires_grad_(), targets, lens, opts)
            except RuntimeError as exc:
                if not _no_gradient_path(exc):
                    raise
                raise AnalyzerError(
                    f"{self.name}: no gradient flows from the model's output back to its input "
                    "(something in its forward is not differentiable: a quantized layer, "
                    ".detach(), torch.no_grad(), argmax); use occlusion, which needs none"
                ) from None
        attributions = attr.detach().float().cpu().numpy()
        extra["values"] = lens.task_for(logits) == "regression"  # outputs, not probabilities
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
        score = "value" if extra.get("values") else "probability"  # a regression's output
        rows = []
        for i, name in enumerate(batch.names):
            row = {
                "image": name,
                "target": targets[i],
                "class": lens.class_name(targets[i]),
                score: p[i],
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


def _no_gradient_path(exc: RuntimeError) -> bool:
    """torch's own words for an input the output's gradient does not reach."""
    text = str(exc)
    return "not have been used in the graph" in text or "does not require grad" in text
