"""``sanity``: the model-parameter randomisation test (Adebayo et al. 2018) for CAM methods.

A deep copy of the model is randomised block by block from the logits down; after each step the
heatmaps are recomputed (same images, same target classes: the trained model's predictions) and
compared with the trained model's by Spearman rank correlation and SSIM. The verdict rule is in
:mod:`netlens.metrics.randomization`: a method passes when the fully randomised model's maps no
longer rank like the trained model's (mean Spearman below the threshold, 0.5 by default).
Images whose trained-model map is flat (all zero: no evidence at the layer, an empty region)
have nothing to rank and are left out of the verdict and the table (``n`` counts the rest);
when every image's is, the verdict is ``"inconclusive: ..."`` and ``passes`` is ``None``. The
trained model's CAM warnings (a flat map, an empty region) are the result's
``meta["warnings"]``.

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
    flat_maps,
)
from .base import Analyzer, Result, Run
from .evaluate import cam_explainer, names
from .specs import SANITY

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["SanityAnalyzer", "SanityResult", "cam_explainer"]


def verdict_text(
    passes: bool | None,
    final: float,
    threshold: float,
    left_out: int = 0,
    ci: tuple[float, float] | None = None,
) -> str:
    """The one-line verdict for a method (``passes`` None: inconclusive, every map flat).

    ``ci``: the 95 % bootstrap CI of the final mean Spearman over the images; when it spans the
    threshold, the verdict says it is not settled (other images could flip it), and so it does
    when the CI is not finite (one image judged: no interval)."""
    if passes is None:
        return (
            "inconclusive: the trained model's maps are flat for every image (nothing to rank), "
            "so randomising the weights cannot show anything; try another layer, method or "
            "target"
        )
    out = f" ({left_out} image(s) with a flat map left out)" if left_out else ""
    band = ""
    if ci is not None and all(np.isfinite(ci)):
        band = f" (95 % CI [{ci[0]:.2f}, {ci[1]:.2f}])"
        if ci[0] < threshold <= ci[1]:
            out += (
                f"; not settled: the CI spans {threshold:g}, so other images could flip the "
                "verdict (run more images)"
            )
    elif ci is not None:
        out += (
            "; not settled: one image gives no 95 % CI (it takes two or more), so other "
            "images could flip the verdict (run more images)"
        )
    if passes:
        return (
            f"passes: maps depend on the learned weights (Spearman {final:.2f}{band} < "
            f"{threshold:g} once all layers are random){out}"
        )
    return (
        f"FLAGGED: maps barely change when the weights are randomised (Spearman "
        f"{final:.2f}{band} ≥ {threshold:g}); they do not explain this model{out}"
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
        steps = len(methods) * len(cascade_blocks(lens.model, example=x))
        run.progress.note(
            f"sanity: {len(x)} images × {len(methods)} method(s), {steps // len(methods)} "
            f"randomisation steps: {steps + len(methods)} CAM runs"
        )
        layers, auto = _cam_layers(lens.model, o.layer, x[:1], lens.output_key)
        run.layers = layers
        arrays: dict[str, np.ndarray] = {}
        table: list[dict[str, Any]] = []
        verdicts: dict[str, dict[str, Any]] = {}
        warnings: list[str] = []
        with run.progress.task("sanity", steps, unit="steps") as advance:
            for m in methods:
                res = _method_test(run, m, x, targets, advance, region)
                arrays |= {f"{m}/maps": res.maps, f"{m}/spearman": res.spearman}
                arrays[f"{m}/ssim"] = res.ssim
                judged = ~res.flat
                table += _rows(m, res.steps, res.spearman[:, judged], res.ssim[:, judged], o.seed)
                verdicts[m] = _verdict(res, o.threshold, batch.names, o.seed)
                warnings += _warnings(m, res, batch.names)
        originals = [
            batch.original(i) if orig is not None else lens.transform.denormalize(t)
            for i, (orig, t) in enumerate(zip(batch.originals, x, strict=True))
        ]
        meta = {"methods": methods, "steps": res.steps, "threshold": o.threshold}
        meta |= {"targets": targets.tolist(), "images": batch.names, "verdicts": verdicts}
        meta |= {"layer": ", ".join(layers), "layers": layers, "layer_auto": auto}
        meta["seed"] = o.seed
        meta["warnings"] = list(dict.fromkeys(warnings))
        return SanityResult("sanity", arrays=arrays, table=table, meta=meta, originals=originals)


def _cam_layers(model: Any, layer: Any, example: torch.Tensor, output: Any) -> Any:
    """The layers ``lens.cam`` explains for ``layer`` ("auto" resolved), and whether auto."""
    from .cam import _layers

    return _layers(model, layer, example, output)


def _warnings(method: str, res: CascadeResult, names: list[str]) -> list[str]:
    """The trained model's CAM warnings (images named as in the batch), and one line when
    images are left out of the verdict for a flat map."""
    lines = list(res.extra.get("warnings", []))
    flat = [names[i] for i in np.flatnonzero(res.flat)]
    if flat:
        shown = ", ".join(flat[:5]) + (f", … {len(flat) - 5} more" if len(flat) > 5 else "")
        lines.append(
            f"sanity {method}: the trained model's map is flat for {len(flat)} of {len(names)} "
            f"image(s) ({shown}): nothing to rank, left out of the verdict"
            + ("; the verdict is inconclusive" if len(flat) == len(names) else "")
        )
    return lines


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
        if target.kind == "custom":  # a function names no class or output to compare
            raise AnalyzerError(
                "sanity compares maps of one class or output per image, which a target "
                "function does not name: give a class index or name (output:K for a regression)"
            )
        if run.lens.task_for(output) == "regression":
            raise AnalyzerError("sanity explains one output per image: give --target output:K")
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
        trained: list[dict[str, Any]] = []  # the meta of the first call: the trained model's
        part = cascading_randomization(
            run.lens.model,
            x[mine.start : mine.stop],
            targets[mine.start : mine.stop].to(x.device),
            _explainer(run.lens, method, o.layer, region, trained),
            seed=o.seed,
            threshold=o.threshold,
            on_step=lambda _b: advance(1),
        )
        tied = part.extra.get("warnings", [])
        part.extra["warnings"] = _renamed(trained[0], run.images.names[mine.start : mine.stop])
        part.extra["warnings"] += tied
    return _joined(run.group.gather(part), o.threshold)


def _explainer(lens: Any, method: str, layer: Any, region: Any, trained: list) -> Any:
    """:func:`cam_explainer` that keeps the meta of its first call (the trained model's)."""

    def explain(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Any:
        chosen = targets.tolist() if region is None else region
        res = lens.on(model).cam(x, method=method, layer=layer, target=chosen)
        if not trained:
            trained.append(res.meta)
        return res.heatmaps

    return explain


def _renamed(meta: dict[str, Any], names: list[str]) -> list[str]:
    """A CAM result's warnings with its images' names (``image0``, ...) made the batch's."""
    lines = []
    for line in meta.get("warnings") or []:
        for old, new in zip(meta.get("images") or [], names, strict=False):
            if line.startswith(f"{old}: "):
                line = f"{new}: {line[len(old) + 2 :]}"
                break
        lines.append(line)
    return lines


def _verdict(
    res: CascadeResult, threshold: float, names: list[str], seed: int = 0
) -> dict[str, Any]:
    judged = ~res.flat
    left_out = int((~judged).sum())
    _, low, high, _ = mean_ci(res.spearman[-1][judged], seed=int(seed))
    return {
        "passes": res.passes,
        "final_spearman": res.final_spearman,
        "final_spearman_low": low,
        "final_spearman_high": high,
        "settled": res.passes is not None
        and bool(np.isfinite([low, high]).all())
        and not (low < threshold <= high),
        "final_ssim": float(res.ssim[-1][judged].mean()) if judged.any() else float("nan"),
        "images_judged": int(judged.sum()),
        "flat_images": [names[i] for i in np.flatnonzero(~judged)],
        "verdict": verdict_text(res.passes, res.final_spearman, threshold, left_out, (low, high)),
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
        {"warnings": [line for p in done for line in p.extra.get("warnings", [])]},
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

    def passes(self, method: str) -> bool | None:
        """Whether ``method``'s maps depend on the learned weights; None when the test is
        inconclusive (the trained model's map is flat for every image)."""
        v = self.verdicts[method]["passes"]
        return None if v is None else bool(v)

    def figures(self) -> dict[str, Figure]:
        from ..render.quality_figures import sanity_curve_figure, sanity_strip_figure

        steps = self.meta["steps"]
        figs: dict[str, Figure] = {}
        series = {m: self._judged(m) for m in self.meta["methods"]}
        figs["sanity-similarity"] = sanity_curve_figure(series, steps, self.meta["threshold"])
        for m in self.meta["methods"]:
            v = self.verdicts[m]
            title = f"{m}: cascading randomisation, top → bottom — {v['verdict'].split(':')[0]}"
            figs[f"sanity-strip-{m}"] = sanity_strip_figure(
                self.originals or [], self.arrays[f"{m}/maps"], steps, title
            )
        return figs

    def _judged(self, method: str) -> dict[str, np.ndarray]:
        """The similarities of the images in the verdict (all when none has a map to rank)."""
        keep = ~flat_maps(self.arrays[f"{method}/maps"][0])
        keep = keep if keep.any() else slice(None)
        return {k: self.arrays[f"{method}/{k}"][:, keep] for k in ("spearman", "ssim")}
