"""AblationResult: the rows of a study, its baseline, and the curves of a channel study."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ABLATED_KINDS", "AblationResult", "curve_arrays"]

ABLATED_KINDS = ("residual", "layer", "channel")


@dataclass(frozen=True)
class AblationResult(Result):
    """A layer-ablation study: ``.baseline`` (the intact model) and ``.rows`` (one per ablation).

    Each row (see :mod:`netlens.analyzers.ablation.rows`) has the ``layer``, the ``unit``
    switched off, the ``mode``, the metric ``value`` with its bootstrap CI (``ci_low`` /
    ``ci_high``), the signed ``delta`` from the intact model with its CI, the harm (``drop`` or
    ``increase``: ``meta["harm"]`` names it) and ``hurt_classes`` (the classes that fall most,
    ``{"class", "before", "after"}``). Channel studies add ``arrays["curve_k"]`` and the
    cumulative curves ``curve_importance`` / ``curve_random`` (Morcos et al., 2018).
    ``config`` holds the settings the rows were made with (what a resume must match).
    """

    config: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def save(self, directory: str | Path, *, arrays: bool | None = None) -> list[Path]:
        """The result's files (see :meth:`Result.save`); the rows this study kept in
        ``directory`` as they finished (``--out``) then give way to them, their settings
        kept as ``ablation-config.json`` for a later ``--resume``."""
        from ...output import folder_lock
        from ...storage import finish_rows

        with folder_lock(directory):
            files = super().save(directory, arrays=arrays)
            if self.config is None:
                return files
            return files + finish_rows(directory, self.name, self.config, keep_rows=False)

    @property
    def baseline(self) -> dict[str, Any]:
        """The intact model: ``value``, ``ci_low``, ``ci_high``, ``n`` (images)."""
        return self.meta["baseline"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per ablated block, layer or channel (not the baseline or curve points)."""
        return [r for r in self.table if r["kind"] in ABLATED_KINDS]

    def harm(self) -> dict[str, float]:
        """How much worse each ablation made the metric (``drop`` or ``increase``), by unit."""
        return {r["unit"]: r[self.meta["harm"]] for r in self.rows}

    def headline(self) -> str:
        """``ablation of 8 blocks: accuracy 0.912 intact; most harm: layer3.0 (drop 0.410)``."""
        m, harm = self.meta, self.harm()
        what = "channels" if m.get("channels") else "units"
        line = f"ablation of {len(harm)} {what}: {m['metric']} {self.baseline['value']:.3f} intact"
        if not harm:
            return line
        worst = max(harm, key=lambda k: harm[k])
        return f"{line}; most harm: {worst} ({m['harm']} {harm[worst]:.3f})"

    def figures(self) -> dict[str, Figure]:
        from ...render.ablation_figures import channel_figure, harm_figure

        if self.meta.get("channels"):
            return {"ablation-channels": channel_figure(self.rows, self.arrays, self.meta)}
        return {"ablation": harm_figure(self.rows, self.meta)}


def curve_arrays(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Cumulative-ablation curves from the curve rows (by order, sorted by k)."""
    arrays: dict[str, np.ndarray] = {}
    for order in ("importance", "random"):
        pts = sorted((r for r in rows if r["kind"] == f"curve-{order}"), key=lambda r: r["k"])
        if not pts:
            continue
        arrays["curve_k"] = np.array([r["k"] for r in pts])
        arrays[f"curve_{order}"] = np.array([r["value"] for r in pts])
        if pts[0].get("per_class") is not None:
            per_class = [[np.nan if v is None else v for v in r["per_class"]] for r in pts]
            arrays[f"curve_{order}_classes"] = np.array(per_class, dtype=float)
    return arrays
