"""Metrics from logits and labels, bootstrap confidence intervals, most-hurt classes.

Per image only the prediction, whether the label is in the top 5, and the cross-entropy are kept
(:class:`Outcomes`), so a study over many ablations stays small in memory. ``drop`` is always
"how much worse": baseline - value for accuracy, top5 and f1; value - baseline for loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import AnalyzerError

__all__ = ["METRICS", "Outcomes", "bootstrap", "drop", "hurt_classes", "metric_value"]

METRICS = ("accuracy", "loss", "f1", "top5")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise AnalyzerError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    return metric


@dataclass
class Outcomes:
    """Per-image results of one model variant, accumulated batch by batch."""

    preds: list[np.ndarray] = field(default_factory=list)
    top5: list[np.ndarray] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    num_classes: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the logits of a batch (N×K); computed in numpy (no thread pool for tiny ops)."""
        z = logits.detach().double().cpu().numpy()
        y = labels.detach().cpu().numpy().astype(np.int64)
        self.num_classes = z.shape[1]
        own = z[np.arange(len(y)), y]
        self.preds.append(z.argmax(1))
        self.top5.append((z > own[:, None]).sum(1) < 5)  # label among the 5 largest logits
        top = z.max(1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(1))
        self.losses.append(lse - own)
        self.labels.append(y)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "pred": np.concatenate(self.preds),
            "top5": np.concatenate(self.top5),
            "loss": np.concatenate(self.losses),
            "label": np.concatenate(self.labels),
        }


def _macro_f1(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """Macro F1 over classes present; ``pred``/``label`` are R×N (one row per resample)."""
    r = pred.shape[0]
    flat = (np.arange(r)[:, None] * k * k + label * k + pred).ravel()
    conf = np.bincount(flat, minlength=r * k * k).reshape(r, k, k).astype(np.float64)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    support, predicted = conf.sum(2), conf.sum(1)
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    present = support > 0
    return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)


def metric_value(
    metric: str,
    out: dict[str, np.ndarray],
    idx: np.ndarray | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """The metric for each row of resample indices ``idx`` (R×N; None: all images once)."""
    n = len(out["label"])
    idx = np.arange(n)[None] if idx is None else idx
    if metric == "accuracy":
        return (out["pred"] == out["label"])[idx].mean(1)
    if metric == "top5":
        return out["top5"][idx].mean(1)
    if metric == "loss":
        return out["loss"][idx].mean(1)
    k = num_classes or int(max(out["pred"].max(), out["label"].max())) + 1
    step = max(1, 20_000_000 // (k * k))  # keep the R×K×K confusion tensors small
    return np.concatenate(
        [
            _macro_f1(out["pred"][idx[i : i + step]], out["label"][idx[i : i + step]], k)
            for i in range(0, len(idx), step)
        ]
    )


def drop(metric: str, baseline: np.ndarray | float, value: np.ndarray | float) -> np.ndarray:
    """How much worse ``value`` is than ``baseline`` (positive = hurt)."""
    b, v = np.asarray(baseline, dtype=np.float64), np.asarray(value, dtype=np.float64)
    return v - b if metric == "loss" else b - v


def resample_indices(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """R×N bootstrap indices over images from a seeded generator (the same for every row)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(
    metric: str,
    out: dict[str, np.ndarray],
    base: dict[str, np.ndarray] | None,
    idx: np.ndarray,
    num_classes: int,
    level: float = 0.95,
) -> dict[str, float]:
    """Value and drop with percentile confidence intervals (paired resamples of the images)."""
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    value = float(metric_value(metric, out, None, num_classes)[0])
    boot = metric_value(metric, out, idx, num_classes)
    row = {
        "value": value,
        "value_lo": float(np.percentile(boot, lo)),
        "value_hi": float(np.percentile(boot, hi)),
    }
    if base is not None:
        base_boot = metric_value(metric, base, idx, num_classes)
        base_value = float(metric_value(metric, base, None, num_classes)[0])
        drops = drop(metric, base_boot, boot)
        row |= {
            "drop": float(drop(metric, base_value, value)),
            "drop_lo": float(np.percentile(drops, lo)),
            "drop_hi": float(np.percentile(drops, hi)),
        }
    return row


def class_accuracy(out: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """Accuracy per class (NaN for classes with no image)."""
    label = out["label"]
    hits = np.bincount(label, weights=(out["pred"] == label), minlength=num_classes)
    count = np.bincount(label, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


def hurt_classes(
    base: dict[str, np.ndarray],
    out: dict[str, np.ndarray],
    num_classes: int,
    names: list[str] | None = None,
    top: int = 3,
) -> list[tuple[str, float]]:
    """The classes whose accuracy drops most, with the drop (largest first, drops > 0 only)."""
    delta = class_accuracy(base, num_classes) - class_accuracy(out, num_classes)
    delta = np.nan_to_num(delta, nan=-np.inf)
    order = np.argsort(-delta, kind="stable")[:top]

    def label(i: int) -> str:
        return names[i] if names and i < len(names) else str(i)

    return [(label(int(i)), round(float(delta[i]), 4)) for i in order if delta[i] > 0]
