"""What an ablation is scored by: metrics from logits, with their direction and what they need.

Label metrics compare predictions with the data's labels: ``accuracy``, ``top5``, ``loss``
(cross-entropy) and ``f1`` (macro-F1, :func:`netlens.train.evaluation.macro_f1`). Baseline metrics
need no labels, so they work on any images, for any model: ``prob`` (the probability the ablated
model gives the class the intact model predicted), ``kl`` (KL divergence, in nats, from the intact
model's softmax to the ablated one's) and ``agreement`` (how often the ablated model's top-1
class is the intact model's). A multi-label model's independent sigmoids are read as such
(:data:`MULTILABEL_METRICS`): ``kl`` between the label probabilities, summed over labels,
``agreement`` per label decision (logit > 0), ``prob`` of the labels the intact model predicts;
the label metrics, which read one class per image, are refused for it. Every metric says which
way is better; a study reports the signed
``delta`` (ablated − intact) and the harm: the ``drop`` of a higher-is-better metric or the
``increase`` of a lower-is-better one.

Per image only the prediction, the intact model's prediction, the label and the metric's own
value are kept (:class:`Outcomes`), so a study over many ablations stays small in memory; for a
multi-label model also both models' label decisions (logit > 0), for its most-hurt labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import AnalyzerError
from ...targets import as_logits
from ...train.evaluation import confusion_matrix, macro_f1

__all__ = [
    "METRICS",
    "MULTILABEL_METRICS",
    "Metric",
    "Outcomes",
    "class_scores",
    "hurt_classes",
    "metric_value",
]

PerImage = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    top = z.max(1, keepdims=True)
    return z - (top + np.log(np.exp(z - top).sum(1, keepdims=True)))


def _own(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return z[np.arange(len(y)), y]


def _correct(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (z.argmax(1) == y).astype(np.float64)


def _top5(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether the label is among the 5 highest logits, ties broken by class index as
    ``argmax`` breaks them (the lower index ranks first), so a top-1 hit is always a top-5
    hit and tied logits (a dead network's all-equal ones) are not all counted as hits."""
    own = _own(z, y)[:, None]
    lower = np.arange(z.shape[1])[None] < y[:, None]
    return (((z > own) | ((z == own) & lower)).sum(1) < 5).astype(np.float64)


def _loss(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    return -_own(_log_softmax(z), y)


def _prob(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.exp(_own(_log_softmax(z), b.argmax(1)))


def _kl(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    log_p, log_q = _log_softmax(b), _log_softmax(z)
    return (np.exp(log_p) * (log_p - log_q)).sum(1)


def _agreement(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (z.argmax(1) == b.argmax(1)).astype(np.float64)


def _log_sigmoids(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log σ(z) and log(1 − σ(z)), without overflow."""
    return -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)


def _kl_labels(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL from the intact model's independent label probabilities to the ablated ones',
    summed over the labels (the KL of their joint distribution)."""
    (lp, lnp), (lq, lnq) = _log_sigmoids(b), _log_sigmoids(z)
    return (np.exp(lp) * (lp - lq) + np.exp(lnp) * (lnp - lnq)).sum(1)


def _agreement_labels(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The share of label decisions (logit > 0) the ablated model makes as the intact one."""
    return ((z > 0) == (b > 0)).mean(1)


def _prob_labels(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The mean probability the ablated model gives the labels the intact model predicts
    (logit > 0; its top label when it predicts none)."""
    chosen = b > 0
    chosen[np.arange(len(b)), b.argmax(1)] |= ~chosen.any(1)
    return (np.exp(_log_sigmoids(z)[0]) * chosen).sum(1) / chosen.sum(1)


@dataclass(frozen=True)
class Metric:
    """A metric: its name, what it measures, which way is better, whether it needs labels;
    ``multilabel``: whether it reads a multi-label model's independent labels (broken down by
    label: the share of the images the intact model gives a label that the ablated one still
    gives it)."""

    name: str
    title: str
    higher_is_better: bool
    needs_labels: bool
    per_image: PerImage
    multilabel: bool = False

    @property
    def harm(self) -> str:
        """The column that says how much worse an ablation made it: ``drop`` or ``increase``."""
        return "drop" if self.higher_is_better else "increase"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def harm_of(self, delta: float) -> float:
        """``delta`` (ablated − intact) turned into harm (positive = worse)."""
        return 0.0 - delta if self.higher_is_better else delta  # 0.0 - 0.0 is 0.0, not -0.0


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", "accuracy", True, True, _correct),
        Metric("top5", "top-5 accuracy", True, True, _top5),
        Metric("loss", "cross-entropy loss", False, True, _loss),
        Metric("f1", "macro-F1", True, True, _correct),
        Metric("prob", "probability of the intact model's class", True, False, _prob),
        Metric("kl", "KL divergence from the intact model (nats)", False, False, _kl),
        Metric("agreement", "top-1 agreement with the intact model", True, False, _agreement),
    )
}


# A multi-label model's labels are independent sigmoids: the label-free metrics read them so.
MULTILABEL_METRICS = {
    m.name: m
    for m in (
        Metric("prob", "mean probability of the intact model's labels", True, False,
               _prob_labels, multilabel=True),
        Metric("kl", "KL divergence from the intact model's label probabilities (nats)", False,
               False, _kl_labels, multilabel=True),
        Metric("agreement", "share of label decisions (logit > 0) as the intact model's", True,
               False, _agreement_labels, multilabel=True),
    )
}  # fmt: skip


@dataclass
class Outcomes:
    """Per-image results of one model variant, accumulated batch by batch."""

    metric: Metric
    preds: list[np.ndarray] = field(default_factory=list)
    base_preds: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    decisions: list[np.ndarray] = field(default_factory=list)
    base_decisions: list[np.ndarray] = field(default_factory=list)
    num_classes: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor | None, base: torch.Tensor) -> None:
        """Add a batch: the variant's and the intact model's logits (N×K), and the labels.

        Computed in float64 numpy (no thread pool for tiny ops).
        """
        z = as_logits(logits.detach().double(), logits.dtype).cpu().numpy()  # one logit: [0, z]
        b = as_logits(base.detach().double(), base.dtype).cpu().numpy()
        self.num_classes = z.shape[1]
        y = _labels(labels, len(z), self.num_classes, self.metric)
        self.preds.append(z.argmax(1))
        self.base_preds.append(b.argmax(1))
        self.labels.append(y)
        self.values.append(self.metric.per_image(z, y, b))
        if self.metric.multilabel:
            self.decisions.append(z > 0)
            self.base_decisions.append(b > 0)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "pred": np.concatenate(self.preds),
            "base_pred": np.concatenate(self.base_preds),
            "label": np.concatenate(self.labels),
            "value": np.concatenate(self.values),
        }
        if self.metric.multilabel:
            out["decision"] = np.concatenate(self.decisions)
            out["base_decision"] = np.concatenate(self.base_decisions)
        return out


def _labels(labels: torch.Tensor | None, n: int, k: int, metric: Metric) -> np.ndarray:
    """The labels as class indices; -1 where unknown (allowed only for baseline metrics)."""
    y = None if labels is None else torch.as_tensor(labels).reshape(-1).cpu().numpy()
    whole = y is not None and np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y)))
    integral = y is not None and len(y) == n and (np.issubdtype(y.dtype, np.integer) or whole)
    y = y.astype(np.int64) if integral else np.full(n, -1, np.int64)
    if metric.needs_labels and (not integral or y.min() < 0 or y.max() >= k):
        wrong = int(y[(y < 0) | (y >= k)][0]) if integral else None
        bad = (
            _what_labels(labels, n)
            if not integral
            else "no labels (images only)"
            if bool(np.all(y == -1))
            else f"label {wrong}"
        )
        raise AnalyzerError(
            f"the {metric.name} metric needs labels among the model's {k} classes, but the data "
            f"has {bad}; use --metric prob, kl or agreement, which compare with the intact model"
        )
    return np.where((y >= 0) & (y < k), y, -1)


def _what_labels(labels: torch.Tensor | None, n: int) -> str:
    """What the data gave instead of one class index per image, for the refusal."""
    if labels is None:
        return "no class labels"
    t = torch.as_tensor(labels)
    if t.dim() == 2 and t.shape[0] == n:
        return (
            f"labels of shape {n}×{t.shape[1]} (one-hot or multi-hot vectors; give each image "
            "its class index instead)"
        )
    return f"labels of dtype {str(t.dtype).removeprefix('torch.')} (class indices are integers)"


def metric_value(
    metric: Metric, out: dict[str, np.ndarray], idx: np.ndarray | None, k: int
) -> np.ndarray:
    """The metric over each row of image indices ``idx`` (R×N; None: all images once)."""
    idx = np.arange(len(out["value"]))[None] if idx is None else idx
    if metric.name != "f1":
        return out["value"][idx].mean(1)
    step = max(1, 20_000_000 // (k * k))  # keep the R×K×K confusion tensors small
    return np.concatenate(
        [
            _f1_rows(out["label"][idx[i : i + step]], out["pred"][idx[i : i + step]], k)
            for i in range(0, len(idx), step)
        ]
    )


def _f1_rows(label: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of (label, pred) index arrays (R×N)."""
    r = label.shape[0]
    flat = (np.arange(r)[:, None] * k * k + label * k + pred).ravel()
    return macro_f1(np.bincount(flat, minlength=r * k * k).reshape(r, k, k))


def class_scores(out: dict[str, np.ndarray], k: int, by: str) -> np.ndarray:
    """Per class: accuracy by true class (``by="label"``) or agreement with the intact model by
    its predicted class (``by="base_pred"``); for a multi-label model per label, the share of the
    images the intact model gives it that the variant still gives it. NaN for classes with no
    image."""
    if "decision" in out:
        given = out["base_decision"]
        count = given.sum(0)
        kept = (given & out["decision"]).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, kept / np.maximum(count, 1), np.nan)
    group = out[by]
    known = group >= 0
    cm = confusion_matrix(group[known], out["pred"][known], k).astype(np.float64)
    count = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.diag(cm) / np.maximum(count, 1), np.nan)


def hurt_classes(
    base: dict[str, np.ndarray],
    out: dict[str, np.ndarray],
    k: int,
    by: str,
    names: list[str] | None = None,
    top: int = 3,
) -> list[dict[str, object]]:
    """The classes whose score falls most: ``{"class", "before", "after"}``, worst first."""
    before, after = class_scores(base, k, by), class_scores(out, k, by)
    fall = np.nan_to_num(before - after, nan=-np.inf)
    order = np.argsort(-fall, kind="stable")[:top]
    return [
        {
            "class": _name(int(i), names),
            "before": round(float(before[i]), 4),
            "after": round(float(after[i]), 4),
        }
        for i in order
        if fall[i] > 0
    ]


def _name(i: int, names: list[str] | None) -> str:
    return names[i] if names and i < len(names) else str(i)
