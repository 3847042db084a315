"""What ``evaluate`` tells of its scope: which part of the data it scored ("the first N of M
images (K of C classes)", as a report's sections say it), which default metrics the model's
output leaves out (a dense or regression output has no class probability to follow), the
names of the images it speaks of, and its summary table's rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..data.items import item_labels
from ..errors import AnalyzerError
from ..metrics.bootstrap import mean_ci

if TYPE_CHECKING:
    from ..lens import Lens

__all__ = [
    "before_limit",
    "check_class_scores",
    "data_scope",
    "image_names",
    "left_out_note",
    "nothing_to_score",
    "not_class_scores",
    "probe_output",
    "scope_warning",
    "summary_rows",
]


def not_class_scores(lens: Lens, x: torch.Tensor) -> tuple[str, str] | None:
    """``(task, shape)`` when the output explained for ``x`` is not a classifier's class
    scores (a dense map, a regression output); None when it is."""
    from ..layers import eval_mode

    with torch.no_grad(), eval_mode(lens.model):
        out = lens.output(x)
    task = lens.task_for(out)
    if out.dim() != 2 or task in ("dense", "regression"):
        return task, "N×" + "×".join(map(str, out.shape[1:]))
    return None


def probe_output(lens: Lens, ds: Any) -> tuple[str, str] | None:
    """:func:`not_class_scores` of the first images of ``ds`` (one, or two for a model that
    cannot run on one); None also when they cannot be read or run (the run says why)."""
    from ..few_images import on_fewest

    try:
        x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(2, len(ds)))])
        x = x.to(lens.device)
        if x.is_floating_point() and isinstance(getattr(lens, "dtype", None), torch.dtype):
            x = x.to(lens.dtype)
        return on_fewest(lambda few: not_class_scores(lens, few), x)
    except Exception:  # noqa: BLE001 - an unreadable first item: the run meets and says it
        return None


def check_class_scores(lens: Lens, x: torch.Tensor, scored: list[str]) -> None:
    """One line when a metric of ``scored`` (those that follow a class probability as pixels
    go: all but pointing and energy, which need only maps and masks) is asked for and the
    output explained is not a classifier's, as a dense map or a regression output is not."""
    found = not_class_scores(lens, x) if scored else None
    if found is None:
        return
    task, shape = found
    raise AnalyzerError(
        f"{', '.join(scored)} {'follows' if len(scored) == 1 else 'follow'} a class's "
        f"probability as pixels go, but the output explained is {shape} ({task}); pick the "
        "class scores with --output KEY (output= in Python), or ask only for --metric "
        "pointing,energy (metrics= in Python: maps against masks)"
    )


def left_out_note(dropped: list[str], found: tuple[str, str]) -> str:
    """The line saying which default metrics the output leaves out, and why."""
    task, shape = found
    return (
        f"{', '.join(dropped)} left out: they follow a class's probability as pixels go, and "
        f"the output explained is {shape} ({task}); pick the class scores with --output KEY "
        "(output= in Python) to run them"
    )


def nothing_to_score(found: tuple[str, str]) -> str:
    """The line when the default metrics leave nothing: no masks, no class probability."""
    task, shape = found
    return (
        f"no metric can score this: the output explained is {shape} ({task}), with no class "
        "probability for deletion, insertion or ROAD to follow, and pointing and energy need "
        "ground-truth masks, which this data has none of; give masks (--masks, a dataset with "
        ".mask(i)) or pick the class scores with --output KEY (output= in Python)"
    )


def before_limit(whole: Dataset, limit: Any) -> Dataset:
    """The data before ``--limit``'s cut: under the Subset of its first items, if cut."""
    cut = type(whole) is Subset and limit is not None and whole.indices == range(int(limit))
    return whole.dataset if cut else whole  # type: ignore[attr-defined]


def data_scope(data: Any, used: int) -> dict[str, Any]:
    """How much of ``data`` (the data before ``--limit``'s cut) the ``used`` first images are:
    ``images``, ``images_total``, and, where the labels can be read off the dataset's list
    (no image is read), ``classes`` and ``classes_total``; ``text`` says it as a report
    does: "the first N of M images (K of C classes)" or "all M images"."""
    total = len(data)
    scope: dict[str, Any] = {"images": used, "images_total": total}
    labels = item_labels(data)
    if labels is not None:
        scope |= {"classes": len(set(labels[:used])), "classes_total": len(set(labels))}
    if used >= total:
        return scope | {"text": f"all {total} images"}
    text = f"the first {used} of {total} images"
    if labels is not None:
        text += f" ({scope['classes']} of {scope['classes_total']} classes)"
    return scope | {"text": text}


def read_scope(
    scope: dict[str, Any], positions: Any, labels: list[int] | None = None
) -> dict[str, Any]:
    """``scope`` (:func:`data_scope`) once its images were read (``positions``: those scored;
    ``labels``: every item's class, as :func:`data_scope` read them): with ``unreadable``, the
    images that could not be, the classes of those scored, and a text saying so ("5 of 6
    images (1 unreadable)", "the first 6 of 10 images, 5 of them read (1 unreadable), 3 of 4
    classes": the classes counted are those of the images read)."""
    read = len(positions)
    missing = scope["images"] - read
    if missing <= 0:
        return scope
    scope = scope | {"unreadable": missing}
    if labels is not None and "classes" in scope:  # the classes of the images scored
        scope["classes"] = len({labels[int(i)] for i in positions})
    n, total = scope["images"], scope["images_total"]
    if n >= total:
        return scope | {"text": f"{read} of {n} images ({missing} unreadable)"}
    text = f"the first {n} of {total} images, {read} of them read ({missing} unreadable)"
    if "classes" in scope:
        text += f", {scope['classes']} of {scope['classes_total']} classes"
    return scope | {"text": text}


def scope_warning(scope: dict[str, Any]) -> list[str]:
    """One line when the images scored leave some of the data's classes out: the first images
    of a ``--limit``, or the readable ones."""
    used, every = scope.get("classes"), scope.get("classes_total")
    if used is None or used == every:
        return []
    n, total = scope["images"], scope["images_total"]
    more = f"; --limit {total} (limit={total} in Python) uses all of them" if n < total else ""
    if scope.get("unreadable"):
        return [
            f"only {used} of the data's {every} classes are in the {n - scope['unreadable']} "
            f"images scored ({scope['unreadable']} unreadable): these scores do not cover the "
            f"other classes{more}"
        ]
    if n >= total:
        return []
    return [
        f"only {used} of the data's {every} classes are in its first {n} images (the items are "
        f"taken in order, and a folder is sorted by class): these scores do not cover the other "
        f"classes{more}"
    ]


def image_names(ds: Any, positions: Any) -> list[str]:
    """Each dataset position's image file (as the data names it), else ``item I``."""
    from ..data.items import item_source
    from ..naming import display_path

    names = []
    for i in (int(p) for p in positions):
        inner, j = ds, i
        while isinstance(inner, Subset) or hasattr(inner, "masks_root"):  # evaluate's _FolderMasks
            inner, j = (
                (inner.dataset, int(inner.indices[j]))
                if isinstance(inner, Subset)
                else (inner.ds, j)
            )
        src = item_source(inner, j)
        names.append(display_path(src) if src is not None else f"item {i}")
    return names


def summary_rows(
    lens: Lens,
    arrays: dict[str, np.ndarray],
    methods: list[str],
    metrics: list[str],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One table row per method and metric: mean ± CI (bootstrap seeded by ``seed``, as
    ``--seed`` seeds every bootstrap; the Wilson interval for a metric of hits whose every
    value is 0 or 1, see :func:`~netlens.metrics.bootstrap.mean_ci`), and the baseline's."""
    rows = []
    for method in methods:
        for name in metrics:
            metric = lens.host.metrics.get(name)
            score = arrays[f"{method}/{name}/score"]
            hits = getattr(metric, "proportion", False)  # 0/1 per image: Wilson, not bootstrap
            mean, lo, hi, n = mean_ci(score, seed=seed, proportion=hits)
            row: dict[str, Any] = {
                "method": method,
                "metric": name,
                "mean": mean,
                "ci_low": lo,
                "ci_high": hi,
                "n": n,
                "better": "higher" if metric.higher_is_better else "lower",
            }
            base = arrays.get(f"{method}/{name}/baseline")
            if base is not None:  # over the images the score counts (not a flat map's)
                b, blo, bhi, _ = mean_ci(np.where(np.isnan(score), np.nan, base), seed=seed)
                kind = "chance" if getattr(metric, "needs_masks", False) else "random order"
                row |= {
                    "baseline": b,
                    "baseline_low": blo,
                    "baseline_high": bhi,
                    "baseline_kind": kind,
                }
            rows.append(row)
    return rows
