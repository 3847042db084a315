"""``sanity``: the model-parameter randomisation test (Adebayo et al. 2018) for CAM methods.

A deep copy of the model is randomised block by block from the logits down; after each step the
heatmaps are recomputed (same images, same target classes: the trained model's predictions) and
compared with the trained model's by Spearman rank correlation and SSIM. The verdict rule is in
:mod:`netlens.metrics.randomization`: a method passes when the fully randomised model's maps no
longer rank like the trained model's (mean Spearman below the threshold, 0.5 by default).

Sharded over processes (torchrun), every rank runs the cascade (the same seeded randomisations)
on its contiguous share of the images, cut at ``lens.cam``'s chunk boundaries so the maps are
those of one process bit for bit; maps and similarities are gathered in image order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import AnalyzerError
from ..metrics.bootstrap import mean_ci
from ..metrics.randomization import (
    CascadeResult,
    cascade_blocks,
    cascading_randomization,
)
from .base import Analyzer, Result, Run
from .evaluate import cam_explainer, names
from .specs import SANITY

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["SanityAnalyzer", "SanityResult", "cam_explainer"]


def verdict_text(passes: bool, final: float, threshold: float) -> str:
    """The one-line verdict for a method."""
    if passes:
        return (
            f"passes: maps depend on the learned weights (Spearman {final:.2f} < "
            f"{threshold:g} once all layers are random)"
        )
    return (
        f"FLAGGED: maps barely change when the weights are randomised (Spearman "
        f"{final:.2f} ≥ {threshold:g}); they do not explain this model"
    )


class SanityAnalyzer(Analyzer):
    """Cascading model-parameter randomisation: do the heatmaps depend on the weights?"""

    spec = SANITY

    def compute(self, run: Run) -> SanityResult:
        """Run the randomisation test on ``run.images`` (the model's samples by default)."""
        lens, o, batch = run.lens, run.options, run.images
        methods = names(o.method) or ["gradcam"]
        for m in methods:
            lens.host.cam_methods.get(m)
        x = batch.tensor
        targets, region = _class_targets(run, x)
        steps = len(methods) * len(cascade_blocks(lens.model))
        run.progress.note(
            f"sanity: {len(x)} images × {len(methods)} method(s), {steps // len(methods)} "
            f"randomisation steps: {steps + len(methods)} CAM runs"
        )
        run.layers = [str(o.layer)]
        arrays: dict[str, np.ndarray] = {}
        table: list[dict[str, Any]] = []
        verdicts: dict[str, dict[str, Any]] = {}
        with run.progress.task("sanity", steps, unit="steps") as advance:
            for m in methods:
                res = _method_test(run, m, x, targets, advance, region)
                arrays |= {f"{m}/maps": res.maps, f"{m}/spearman": res.spearman}
                arrays[f"{m}/ssim"] = res.ssim
                table += _rows(m, res.steps, res.spearman, res.ssim, o.seed)
                verdicts[m] = _verdict(res, o.threshold)
        originals = [
            batch.original(i) if orig is not None else lens.transform.denormalize(t)
            for i, (orig, t) in enumerate(zip(batch.originals, x, strict=True))
        ]
        meta = {"methods": methods, "steps": res.steps, "threshold": o.threshold}
        meta |= {"targets": targets.tolist(), "images": batch.names, "verdicts": verdicts}
        meta |= {"layer": str(o.layer), "seed": o.seed}
        return SanityResult("sanity", arrays=arrays, table=table, meta=meta, originals=originals)


def _class_targets(run: Run, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """One class per image (the model's prediction by default), through the shared targets;
    and, for a dense model, its region target (the intact model's pixels, or a mask file's),
    which every randomised copy is explained over."""
    from ..targets import RegionTarget, resolve_targets

    with torch.no_grad():
        output = run.lens.output(x)
    target = resolve_targets(run.options.target, output, run.lens)[0]
    targets = torch.as_tensor(target.index(len(x)))
    if bool((targets < 0).any()):
        raise AnalyzerError("sanity explains classes: give a class target (index or name)")
    return targets, target if isinstance(target, RegionTarget) else None


def _method_test(
    run: Run, method: str, x: torch.Tensor, targets: torch.Tensor, advance: Any, region: Any
) -> Any:
    """The cascade for one method on this process's share of the images, all shares joined."""
    from ..targets import RegionTarget

    o, mine = run.options, _share(run.group, len(x))
    part = None
    if len(mine):
        if region is not None:  # this share's images' regions, fixed across the cascade
            region = RegionTarget(region.classes[mine], region.masks[mine])
        part = cascading_randomization(
            run.lens.model,
            x[mine.start : mine.stop],
            targets[mine.start : mine.stop].to(x.device),
            cam_explainer(run.lens, method, o.layer, region),
            seed=o.seed,
            threshold=o.threshold,
            on_step=lambda _b: advance(1),
        )
    return _joined(run.group.gather(part), o.threshold)


def _verdict(res: Any, threshold: float) -> dict[str, Any]:
    return {
        "passes": res.passes,
        "final_spearman": res.final_spearman,
        "final_ssim": float(res.ssim[-1].mean()),
        "verdict": verdict_text(res.passes, res.final_spearman, threshold),
    }


def _share(group: Any, n: int) -> range:
    """This rank's images: a contiguous run of whole ``lens.cam`` chunks (all in one process)."""
    from .cam import CamAnalyzer

    chunk = next(opt.default for opt in CamAnalyzer.options if opt.name == "chunk")
    starts = group.share(range(0, n, chunk))
    return range(starts[0], min(starts[-1] + chunk, n)) if len(starts) else range(0)


def _joined(parts: list[CascadeResult | None], threshold: float) -> CascadeResult:
    """Every rank's cascade on its images, joined in image order."""
    done = [p for p in parts if p is not None]
    return CascadeResult(
        done[0].steps,
        np.concatenate([p.maps for p in done], axis=1),
        np.concatenate([p.spearman for p in done], axis=1),
        np.concatenate([p.ssim for p in done], axis=1),
        threshold,
    )


def _rows(
    method: str, steps: list[str], rho: np.ndarray, sim: np.ndarray, seed: int = 0
) -> list[dict]:
    rows = []
    for k, block in enumerate(steps):
        r, rlo, rhi, n = mean_ci(rho[k], seed=int(seed))
        s, slo, shi, _ = mean_ci(sim[k], seed=int(seed))
        rows.append(
            {
                "method": method,
                "step": k + 1,
                "randomised": block,
                "spearman": r,
                "spearman_low": rlo,
                "spearman_high": rhi,
                "ssim": s,
                "ssim_low": slo,
                "ssim_high": shi,
                "n": n,
            }
        )
    return rows


@dataclass(frozen=True)
class SanityResult(Result):
    """Maps per step (``arrays["METHOD/maps"]``: (S+1)×N×H×W), similarities and verdicts."""

    def headline(self) -> str:
        return "; ".join(f"{m}: {v['verdict']}" for m, v in self.meta["verdicts"].items())

    originals: list[np.ndarray] | None = None

    @property
    def verdicts(self) -> dict[str, dict[str, Any]]:
        return self.meta["verdicts"]

    def passes(self, method: str) -> bool:
        """Whether ``method``'s maps depend on the learned weights."""
        return bool(self.verdicts[method]["passes"])

    def figures(self) -> dict[str, Figure]:
        from ..render.quality_figures import sanity_curve_figure, sanity_strip_figure

        steps = self.meta["steps"]
        figs: dict[str, Figure] = {}
        series = {
            m: {"spearman": self.arrays[f"{m}/spearman"], "ssim": self.arrays[f"{m}/ssim"]}
            for m in self.meta["methods"]
        }
        figs["sanity-similarity"] = sanity_curve_figure(series, steps, self.meta["threshold"])
        for m in self.meta["methods"]:
            v = self.verdicts[m]
            title = f"{m}: cascading randomisation, top → bottom — {v['verdict'].split(':')[0]}"
            figs[f"sanity-strip-{m}"] = sanity_strip_figure(
                self.originals or [], self.arrays[f"{m}/maps"], steps, title
            )
        return figs
