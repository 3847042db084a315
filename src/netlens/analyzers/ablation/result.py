"""AblationResult, its figures, and the row-by-row CSV a long study writes (and resumes from)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import AnalyzerError
from ..base import Result, to_jsonable
from .metrics import Outcomes, bootstrap, class_accuracy, hurt_classes, resample_indices
from .units import Unit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["COLUMNS", "AblationResult", "PartialCsv", "StudyRows"]

COLUMNS = [
    "key",
    "unit",
    "kind",
    "channel",
    "k",
    "mode",
    "metric",
    "value",
    "value_lo",
    "value_hi",
    "drop",
    "drop_lo",
    "drop_hi",
    "downsample",
    "path",
    "hurt_classes",
    "class_acc",
]
_FLOATS = {"value", "value_lo", "value_hi", "drop", "drop_lo", "drop_hi"}
_INTS = {"channel", "k"}


@dataclass(frozen=True)
class AblationResult(Result):
    """A layer-ablation study: ``.baseline`` (the intact model) and ``.rows`` (one per ablation).

    Each row has the unit, the mode, the metric ``value`` with its bootstrap CI
    (``value_lo``/``value_hi``), the ``drop`` from the baseline with its CI, and ``hurt_classes``
    (the classes that lose most). Channel studies add ``arrays["curve_k"]`` and the cumulative
    curves ``curve_importance`` / ``curve_random`` (Morcos et al., 2018).
    """

    @property
    def baseline(self) -> dict[str, Any]:
        return self.meta["baseline"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for r in self.table if r["kind"] in ("residual", "layer", "channel")]

    def drops(self) -> dict[str, float]:
        """Drop per ablated unit (or ``unit#cN`` channel)."""
        return {r["key"]: r["drop"] for r in self.rows}

    def summary(self) -> dict[str, Any]:
        table = [{k: v for k, v in r.items() if k != "class_acc"} for r in self.table]
        return to_jsonable({"analyzer": self.name, **self.meta, "table": table})

    def figures(self) -> dict[str, Figure]:
        if self.meta.get("channels"):
            return {"ablation-channels": channel_figure(self)}
        return {"ablation": drops_figure(self)}


class StudyRows:
    """Rows of a study as ablations finish: bootstrap CIs, hurt classes, the partial CSV."""

    def __init__(
        self,
        metric: str,
        mode: str,
        classes: list[str] | None,
        units: dict[str, Unit],
        path_of: Callable[[str], str],
        csv: PartialCsv | None,
        resamples: int,
        seed: int,
    ) -> None:
        self.metric, self.mode, self.classes, self.units = metric, mode, classes, units
        self.path_of, self.csv, self.resamples, self.seed = path_of, csv, resamples, seed
        self.baseline = Outcomes()
        self.rows: dict[str, dict[str, Any]] = dict(csv.rows) if csv else {}
        self._base: dict[str, np.ndarray] | None = None
        self.resumed = len(self.rows)

    @property
    def needs_baseline(self) -> bool:
        return self._base is None

    def base(self) -> dict[str, np.ndarray]:
        if self._base is None:
            self._base = self.baseline.arrays()
            self.k = self.baseline.num_classes
            self.idx = resample_indices(len(self._base["label"]), self.resamples, self.seed)
            row = {
                "key": "baseline",
                "unit": "(none)",
                "kind": "baseline",
                "mode": "",
                "metric": self.metric,
                "path": "",
                **bootstrap(self.metric, self._base, None, self.idx, self.k),
            }
            row |= {"drop": 0.0, "drop_lo": 0.0, "drop_hi": 0.0}
            self._add(row)
        return self._base

    def _add(self, row: dict[str, Any]) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        if self.csv is not None and row["key"] not in self.csv:
            self.csv.add(row)
        self.rows[row["key"]] = row

    def done(self, key: str, out: Outcomes) -> None:
        base, arr = self.base(), out.arrays()
        unit_name = key.split("#")[0].split("@")[0]
        unit = self.units[unit_name]
        row: dict[str, Any] = {
            "key": key,
            "unit": unit_name,
            "kind": unit.kind,
            "mode": self.mode,
            "metric": self.metric,
            "downsample": unit.downsample,
            "path": self.path_of(unit_name),
        }
        if "#c" in key:
            row |= {"kind": "channel", "channel": int(key.split("#c")[1])}
        elif "@" in key:
            order, k = key.split("@")[1].split(":")
            row |= {
                "kind": f"curve-{order}",
                "k": int(k),
                "class_acc": np.round(class_accuracy(arr, self.k), 6).tolist(),
            }
        row |= bootstrap(self.metric, arr, base, self.idx, self.k)
        row["hurt_classes"] = [list(h) for h in hurt_classes(base, arr, self.k, self.classes)]
        self._add(row)


def _parse(key: str, text: str) -> Any:
    if text == "":
        return None
    if key in _FLOATS:
        return float(text)
    if key in _INTS:
        return int(text)
    if key == "downsample":
        return text == "True"
    if key in ("hurt_classes", "class_acc"):
        return json.loads(text)
    return text


class PartialCsv:
    """``ablation.csv`` written one row at a time, with the study's config next to it.

    With ``resume``, rows already in the file are kept (and not run again) when the config in
    ``ablation-config.json`` matches; otherwise the file is started afresh.
    """

    def __init__(self, directory: str | Path, config: dict[str, Any], resume: bool) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "ablation.csv"
        self.config_path = self.dir / "ablation-config.json"
        self.config = to_jsonable(config)
        self.rows: dict[str, dict[str, Any]] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._load()
        else:
            self.config_path.write_text(json.dumps(self.config, indent=2))
            with self.path.open("w", newline="") as fh:
                csv.DictWriter(fh, COLUMNS).writeheader()

    def _load(self) -> None:
        old = json.loads(self.config_path.read_text()) if self.config_path.exists() else None
        if old != self.config:
            diff = sorted(
                k for k in {*self.config, *(old or {})} if (old or {}).get(k) != self.config.get(k)
            )
            raise AnalyzerError(
                f"{self.path} was made with other settings ({', '.join(diff) or 'no config'}); "
                "run without --resume to start afresh, or use another --out"
            )
        with self.path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                self.rows[row["key"]] = {k: _parse(k, v) for k, v in row.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished row (flushed at once, so an interrupt loses nothing done)."""
        self.rows[row["key"]] = row
        cells = {k: _cell(row.get(k)) for k in COLUMNS}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, COLUMNS).writerow(cells)


def _cell(v: Any) -> Any:
    v = to_jsonable(v)
    return json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)


def curve_arrays(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Cumulative-ablation curves from the curve rows (by order, sorted by k)."""
    arrays: dict[str, np.ndarray] = {}
    for order in ("importance", "random"):
        pts = sorted((r for r in rows if r["kind"] == f"curve-{order}"), key=lambda r: r["k"])
        if not pts:
            continue
        arrays["curve_k"] = np.array([r["k"] for r in pts])
        arrays[f"curve_{order}"] = np.array([r["value"] for r in pts])
        if pts[0].get("class_acc") is not None:
            arrays[f"curve_{order}_classes"] = np.array([r["class_acc"] for r in pts], dtype=float)
    return arrays


def _title(result: AblationResult) -> str:
    b, m = result.baseline, result.meta
    return (
        f"{m.get('model', 'model')}: ablation mode '{m['mode']}'\n{m['metric']} of the intact "
        f"model {b['value']:.3f} (95% CI {b['value_lo']:.3f}–{b['value_hi']:.3f}, n={b['n']})"
    )


def drops_figure(result: AblationResult) -> Figure:
    """Bar chart of the drop per ablated unit with bootstrap CIs; downsampling blocks hatched."""
    from ...render.figures import new_figure

    rows = result.rows
    n = len(rows)
    fig = new_figure(max(6.0, 0.45 * n + 2), 4.2)
    ax = fig.add_subplot()
    drops = np.array([r["drop"] for r in rows])
    err = np.array([[r["drop"] - r["drop_lo"], r["drop_hi"] - r["drop"]] for r in rows]).T
    colors = ["#d95f02" if r["downsample"] else "#1b9e77" for r in rows]
    bars = ax.bar(
        np.arange(n),
        drops,
        color=colors,
        yerr=np.clip(err, 0, None),
        capsize=3,
        edgecolor="black",
        linewidth=0.5,
    )
    for bar, r in zip(bars, rows, strict=True):
        if r["downsample"]:
            bar.set_hatch("//")
    ax.set_xticks(np.arange(n), [r["unit"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"{result.meta['metric']} drop (higher = more important)")
    ax.set_title(_title(result), fontsize=9)
    if any(r["downsample"] for r in rows):
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(facecolor="#1b9e77", label="block"),
                Patch(facecolor="#d95f02", hatch="//", label="downsampling block"),
            ],
            fontsize=8,
            loc="upper right",
        )
    return fig


def channel_figure(result: AblationResult) -> Figure:
    """Per-channel drops (sorted), cumulative curves, and per-class curves (importance order)."""
    from ...render.figures import new_figure

    fig = new_figure(13.0, 4.0)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    drops = np.sort(np.array([r["drop"] for r in result.rows]))[::-1]
    ax1.bar(np.arange(len(drops)), drops, width=1.0, color="#1b9e77")
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_xlabel("channels, most important first")
    ax1.set_ylabel(f"{result.meta['metric']} drop")
    ax1.set_title(f"single channels of {result.meta['units'][0]}", fontsize=9)
    a = result.arrays
    if "curve_k" in a:
        k = a["curve_k"]
        ax2.plot(k, a["curve_importance"], "o-", ms=3, label="most important first")
        ax2.plot(k, a["curve_random"], "s-", ms=3, label="random order")
        ax2.axhline(result.baseline["value"], color="gray", linestyle=":", label="intact")
        ax2.set_xlabel("channels removed")
        ax2.set_ylabel(result.meta["metric"])
        ax2.set_title("cumulative ablation", fontsize=9)
        ax2.legend(fontsize=8)
        per_class = a.get("curve_importance_classes")
        if per_class is not None:
            names = result.meta.get("classes") or [str(i) for i in range(per_class.shape[1])]
            for c in range(per_class.shape[1]):
                ax3.plot(k, per_class[:, c], linewidth=1, label=names[c][:12])
            ax3.set_xlabel("channels removed (most important first)")
            ax3.set_ylabel("class accuracy")
            ax3.set_title("per class", fontsize=9)
            if per_class.shape[1] <= 12:
                ax3.legend(fontsize=7, ncol=2, loc="lower left", framealpha=0.6)
    fig.suptitle(_title(result), fontsize=9)
    return fig
