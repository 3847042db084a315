"""Classification metrics: confusion matrix, accuracy, macro precision / recall / F1."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from ..distributed import Group

__all__ = ["confusion_matrix", "evaluate", "logits", "macro_f1", "scores"]


def logits(out: Any) -> torch.Tensor:
    """A model's class scores: its output, or the ``.logits`` of an output object (torchvision's
    GoogLeNet/Inception outputs, Hugging Face's)."""
    return out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """K×K counts; row = true class, column = predicted class."""
    idx = np.asarray(labels, np.int64) * num_classes + np.asarray(preds, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro-averaged F1 of confusion matrices (``…×K×K``, rows = true class); one per matrix.

    netlens' one definition: the mean of the per-class F1 over the classes that occur in the
    labels *or* the predictions, as scikit-learn's ``f1_score(average="macro")``. A class that
    is neither labelled nor predicted is left out (so a subset of the data is not scored on
    classes it does not contain); a class labelled but never predicted, or predicted but never
    labelled, counts with F1 0.

    Example:
        >>> float(macro_f1(np.array([[2, 0, 0], [0, 1, 0], [0, 1, 0]])))  # class 2 never right
        0.5555555555555555
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    seen = cm.sum(-1) + cm.sum(-2)  # labelled + predicted
    f1 = np.divide(2 * tp, seen, out=np.zeros_like(tp), where=seen > 0)
    return (f1 * (seen > 0)).sum(-1) / np.maximum((seen > 0).sum(-1), 1)


def scores(cm: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 from a confusion matrix.

    Macro averages run over the classes that occur in the labels or the predictions (see
    :func:`macro_f1`); a class never predicted has precision 0 (and never labelled, recall 0),
    as in scikit-learn's ``zero_division=0``.
    """
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    seen = (predicted + actual) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": float(precision[seen].mean()) if seen.any() else 0.0,
        "recall": float(recall[seen].mean()) if seen.any() else 0.0,
        "f1": float(macro_f1(cm)),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    criterion: nn.Module | None = None,
    max_batches: int | None = None,
    autocast: bool = False,
    channels_last: bool = False,
    group: Group | None = None,
    on_skipped: Callable[[list[str]], None] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` in eval mode: loss, scores and the confusion matrix.

    Batches are ``(x, y)``, or ``(x, y, unreadable)`` with the lines of the images left out
    (passed to ``on_skipped``; ``x`` None when none was readable).

    The caller is responsible for the model's mode (the trainer owns its model). ``group``: the
    loader is this rank's contiguous share of the batches; labels, predictions and loss terms
    are gathered in batch order, so every rank gets the single-process scores.
    """
    labels, preds, terms = [], [], []
    dev = torch.device(device)
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = batch[0], batch[1]
        if on_skipped is not None and len(batch) > 2:
            on_skipped(batch[2])  # the batch's unreadable images (netlens.train.datasets.collate)
        if x is None:
            continue
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = logits(model(x))
        out = out.float()
        if criterion is not None:
            terms.append(float(criterion(out, y)) * len(y))
        labels.append(y.cpu().numpy())
        preds.append(out.argmax(1).cpu().numpy())
    if group is not None:
        parts = group.gather((labels, preds, terms))
        labels, preds, terms = ([a for p in parts for a in p[i]] for i in range(3))
    losses = 0.0
    for term in terms:  # added in batch order, as one process adds them
        losses += term
    n = int(sum(len(a) for a in labels))
    y_true = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    y_pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    result: dict[str, Any] = scores(cm)
    result["loss"] = losses / n if n and criterion is not None else None
    result["n"] = n
    result["confusion"] = cm.tolist()
    return result
