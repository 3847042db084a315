"""The rows of a study, made as ablations finish and kept in the run's row store.

One row per ablation (and one for the intact model, ``key="baseline"``), in the shared
vocabulary: ``layer`` is the module, ``unit`` the thing switched off (a block, ``LAYER#cN`` =
channel N of LAYER, ``LAYER@ORDER:K`` = its first K channels in ORDER), ``value`` the metric with
its bootstrap interval ``ci_low``/``ci_high``, ``delta`` = value − intact value with the interval
of the paired differences ``delta_ci_low``/``delta_ci_high``, and the harm column (``drop`` or
``increase``, see :mod:`.scoring`). Intervals come from :mod:`netlens.metrics.bootstrap`, with the
same resampled images for every row, so deltas are paired. The intact model's row also keeps
``images_sha256``, a hash of the images and labels the study read
(:func:`.fingerprint.images_digest`): rows kept from an interrupted run are used only when the
images read now hash the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import AnalyzerError
from ...metrics.bootstrap import Resampler, percentile_ci
from .scoring import Metric, Outcomes, class_scores, hurt_classes, metric_value
from .units import Unit

if TYPE_CHECKING:
    from ...storage import RowStore
    from .engine import Ablation

__all__ = ["StudyRows", "columns", "parse_cell"]

_FLOATS = {"value", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high"}
_FLOATS |= {"drop", "increase"}
_INTS = {"channel", "k"}
_JSON = {"hurt_classes", "per_class"}


def columns(metric: Metric) -> list[str]:
    """The columns of a study's rows (the harm column named for the metric)."""
    return [
        *("key", "kind", "layer", "unit", "channel", "k", "mode", "metric"),
        *("value", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high", metric.harm),
        *("downsample", "path", "hurt_classes", "per_class", "images_sha256"),
    ]


def parse_cell(key: str, text: str) -> Any:
    """A CSV cell back to its value (for resuming from a row file)."""
    if text == "":
        return None
    if key in _FLOATS:
        return float(text)
    if key in _INTS:
        return int(text)
    if key == "downsample":
        return text == "True"
    return json.loads(text) if key in _JSON else text


class StudyRows:
    """Rows of a study as ablations finish: bootstrap intervals, hurt classes, the row store.

    Args:
        metric: what the study measures.
        mode: the ablation mode (for the rows).
        classes: class names, for the hurt classes.
        units: the units by name.
        path_of: ``"cached"`` or ``"naive"`` for a unit.
        store: where finished rows go (and come from, on resume).
        resamples, seed: the bootstrap.

    ``images`` (set by the study after the baseline pass, before the baseline row is needed):
    the digest of the images and labels read; resumed rows made on others are refused.
    """

    def __init__(
        self,
        metric: Metric,
        mode: str,
        classes: list[str] | None,
        units: dict[str, Unit],
        path_of: Callable[[str], str],
        store: RowStore,
        resamples: int,
        seed: int,
    ) -> None:
        self.metric, self.mode, self.classes, self.units = metric, mode, classes, units
        self.path_of, self.store = path_of, store
        self.resamples, self.seed = resamples, seed
        self.baseline = Outcomes(metric)
        self.resumed = len(store.rows)
        self.by = "label" if metric.needs_labels else "base_pred"
        self.images: str | None = None
        self._base: dict[str, np.ndarray] | None = None
        self._about: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (unit, its cells)

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.store.rows

    @property
    def needs_baseline(self) -> bool:
        return self._base is None

    def base(self) -> dict[str, np.ndarray]:
        """The intact model's outcomes (its row is added the first time)."""
        if self._base is None:
            self._check_resumed()
            self._base = self.baseline.arrays()
            self.k = self.baseline.num_classes
            self.resampler = Resampler(len(self._base["value"]), self.resamples, self.seed)
            self._base_value = float(metric_value(self.metric, self._base, None, self.k)[0])
            self._base_samples = self._samples(self._base)
            row = {"key": "baseline", "kind": "baseline", "metric": self.metric.name}
            row["images_sha256"] = self.images
            self._add(row | self._value_cells(self._base_value, self._base_samples))
        return self._base

    def _check_resumed(self) -> None:
        """Refuse rows kept from a run on other images (same settings, same data fingerprint,
        but a Dataset the fingerprint cannot see into), before any of them is used."""
        if not self.rows or self.images is None:
            return
        old = self.rows.get("baseline", {}).get("images_sha256")
        if old == self.images:
            return
        where = getattr(self.store, "path", None) or "the row store"
        made = f"on other images ({old[:12]}…)" if old else "on images it does not record"
        raise AnalyzerError(
            f"{where} was made {made}: the images and labels read now hash to "
            f"{self.images[:12]}…; run without --resume to start afresh, or use another --out"
        )

    def _samples(self, out: dict[str, np.ndarray]) -> np.ndarray:
        return self.resampler.apply(lambda idx: metric_value(self.metric, out, idx, self.k))

    def _value_cells(self, value: float, samples: np.ndarray) -> dict[str, float]:
        low, high = percentile_ci(samples)
        delta = value - self._base_value
        d_low, d_high = percentile_ci(samples - self._base_samples)
        return {
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "delta": delta,
            "delta_ci_low": d_low,
            "delta_ci_high": d_high,
            self.metric.harm: self.metric.harm_of(delta),
        }

    def _add(self, row: dict[str, Any]) -> None:
        if row["key"] not in self.store.rows:
            self.store.add({k: row.get(k) for k in columns(self.metric)})

    def expect(self, ablations: list[Ablation]) -> None:
        """Note what each key of ``ablations`` switches off (its unit, and its channel or curve
        point), for its row: a key is never parsed, as a module's name may hold ``@``, ``#``
        and ``:`` (onnx2torch names its modules ``Conv@0``, ``Div@17``)."""
        for abl in ablations:
            for i, key in enumerate(abl.keys):
                self._about[key] = (abl.unit, abl.cells[i] if abl.cells else {})

    def done(self, key: str, out: Outcomes) -> None:
        """Make and keep the row of ablation ``key`` (:meth:`expect`-ed) from its outcomes."""
        base, arr = self.base(), out.arrays()
        layer, cells = self._about[key]
        unit = self.units[layer]
        row: dict[str, Any] = {"key": key, "unit": key, "layer": layer, "kind": unit.kind}
        row |= {"mode": self.mode, "metric": self.metric.name, "downsample": unit.downsample}
        row["path"] = self.path_of(layer)
        row |= cells
        if str(row["kind"]).startswith("curve-"):
            row["per_class"] = _rounded(class_scores(arr, self.k, self.by))
        value = float(metric_value(self.metric, arr, None, self.k)[0])
        row |= self._value_cells(value, self._samples(arr))
        row["hurt_classes"] = hurt_classes(base, arr, self.k, self.by, self.classes)
        self._add(row)


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in values]
