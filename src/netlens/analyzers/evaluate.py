"""``evaluate``: measure how good heatmaps are (localisation, deletion/insertion, ROAD).

For every batch of images, each CAM method explains the images' classes (the labels by default)
and every metric scores the heatmaps; per-image scores are summarised as mean ± 95 % bootstrap
CI, next to each metric's baseline (chance level or random pixel order) on the same images.

Masks for the localisation metrics come from the data: any dataset with ``mask(i)`` returning
an H×W bool array (``netlens.data.ArrayDataset(..., masks=...)``, the generated ``shapes``, a
Dataset of your own); an ``(images, labels, masks)`` triple of preprocessed tensors; or, for an
image folder ``root/<class>/<name>.<ext>``, mask PNGs (non-zero = object) at
``masks/<class>/<name>.png``, where ``masks`` is the ``masks=`` option or the sibling folder
``<root>_masks`` (the layout ``netlens.data.shapes.write_folder`` writes). Masks are resized and
cropped as their images are, whatever their size; masks of images that come preprocessed
(float tensors) or through a preprocessing function are used as they are, so they must be at
the model's input size (one line otherwise). A ``Subset`` (a user's split) is scored on the
items it picks, with their masks; a DataLoader on the items its sampler draws.

Misleading scores get a warning line (``meta["warnings"]``) and a count in the JSON: flat maps
(one value everywhere, as an all-zero map is: ``meta["flat_maps"]`` per method), which
pointing and energy leave out and deletion, insertion and ROAD take in random pixel order (the
random baseline's); and targets of negligible probability on the intact image
(``meta["negligible_targets"]``), below a tenth of chance, ``1 / (10·K)`` for K classes (0.025
for 4, 1e-4 for 1000): a class the model all but rules out, whose deletion curve starts at
about zero, so its deletion, insertion and ROAD scores say nothing of the map.

The default metrics (all the data allows) leave out those that follow a class probability
when the output explained is a dense map or a regression output, with a warning; ``--limit``'s
cut is said as a report says it, "the first N of M images (K of C classes)"
(``meta["data_scope"]``), with a warning when classes are left out.

Sharded over processes (torchrun), each rank scores its share of the batches (the very batches
one process forms, so per-image scores are the same bit for bit, seeds included) and the
per-image arrays are gathered in dataset order before the summary: the bootstrap CIs resample
the same values with the same seed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.items import item_labels
from ..data.user_datasets import NO_LABELS, Picked, under_subsets
from ..errors import AnalyzerError, DataError, NetlensError
from ..few_images import on_fewest
from ..naming import display_path
from ..targets import detect_task, model_output, probabilities
from .base import Analyzer, Result, Run
from .evaluate_notes import (
    before_limit,
    check_class_scores,
    data_scope,
    image_names,
    left_out_note,
    nothing_to_score,
    probe_output,
    read_scope,
    scope_warning,
    summary_rows,
)
from .evaluate_warnings import (
    LOCAL,
    empty_mask_warning,
    flat_maps,
    flat_warnings,
    negligible,
    negligible_warning,
    target_probs,
    unscored_warning,
    unused_masks_warning,
)
from .inputs import first_items
from .specs import EVALUATE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens

__all__ = ["EvaluateAnalyzer", "EvaluateResult", "Plan", "cam_explainer", "names"]


def names(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` → ``["a", "b"]``; one line when a value names nothing
    (``","``, ``[]``), rather than quietly running the default. A name given twice counts once
    (``gradcam,gradcam`` scored every image twice and pooled the copies as images)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise AnalyzerError(f"{value!r:.60} is not names: give text such as 'a,b' or ['a', 'b']")
    found = [s.strip() for s in items if s.strip()]
    if not found:
        raise AnalyzerError(f"{value!r} names nothing; give names separated by commas")
    return list(dict.fromkeys(found))  # repeats dropped, first places kept


class CountingModel(nn.Module):
    """Wraps a model and counts the images it forward-passes (the user's model is not hooked);
    returns the output the lens explains (``output=``: one tensor of a dict, tuple or object).
    :func:`netlens.models.wrappers.unwrap` sees through it (``wraps_network``), so what reads
    the network (its input normaliser) reads it, not the counter."""

    wraps_network = True

    def __init__(
        self,
        inner: nn.Module,
        output: Callable[[Any], torch.Tensor] = model_output,
        task: Callable[[torch.Tensor], str] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.output = output  # raw output → the tensor explained (Lens.reader)
        self.task = task  # that tensor → its task (Lens.task_for)
        self.batches: list[int] = []  # appended per call: exact when metrics run threads

    @property
    def images(self) -> int:
        return sum(self.batches)

    def forward(self, x: torch.Tensor) -> Any:
        self.batches.append(int(x.shape[0]))
        return self.output(self.inner(x))

    def class_probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """N×K class probabilities of an output of this model, as its task reads them."""
        return probabilities(out, self.task(out) if self.task else detect_task(out))


def cam_explainer(lens: Lens, method: str, layer: Any = "auto", target: Any = None):  # noqa: ANN201
    """``explain(model, x, targets) -> N×H×W`` heatmaps of ``method`` through ``lens.cam``.

    ``model`` may be another module of the same architecture (a randomised copy). ``target``
    (a :class:`~netlens.targets.Target`), when given, is explained instead of ``targets``'
    classes: a dense model's region stays the pixels it was, whatever a copy predicts.
    """

    def explain(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        if isinstance(model, CountingModel):  # what metrics are handed; explain the model
            model = model.inner
        chosen = targets.tolist() if target is None else target
        return lens.on(model).cam(x, method=method, layer=layer, target=chosen).heatmaps

    return explain


@dataclass(frozen=True)
class Plan:
    """What a run will cost: images, methods, and forward-passed images per metric and method,
    plus ``once``: those made once for all methods and metrics (ROAD's random baseline)."""

    n_images: int
    methods: list[str]
    metrics: list[str]
    passes: dict[str, int]
    once: int = 0
    notes: tuple[str, ...] = ()  # default metrics the model's output leaves out, and why

    @property
    def total(self) -> int:
        return sum(self.passes.values()) * len(self.methods) + self.once

    def describe(self) -> str:
        per = ", ".join(f"{k} {v:,}" for k, v in self.passes.items() if v)
        shared = f"; {self.once:,} once for all methods" if self.once else ""
        return (
            f"evaluate: {self.n_images} images × {len(self.methods)} method(s) "
            f"({', '.join(self.methods)}); metrics will forward-pass {self.total:,} images"
            f"{f' ({per} per method{shared})' if per or shared else ''} plus one CAM per "
            "image and method"
        )


class _FolderMasks(Dataset):
    """An image-folder dataset with masks read from a parallel folder of PNGs."""

    def __init__(self, ds: Any, masks: Path) -> None:
        self.ds, self.masks_root = ds, masks
        self.classes, self.preprocess = ds.classes, ds.preprocess

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds[i]

    def mask(self, i: int) -> np.ndarray:
        """Image ``i``'s mask PNG (:func:`netlens.mask_files.read_mask`), shape checked."""
        from ..mask_files import read_mask

        image = self.ds.items[i][0]
        path = self.masks_root / Path(os.path.relpath(image, self.ds.root)).with_suffix(".png")
        m = read_mask(path)
        if m is None:  # named as they are: the image's own extension, the mask's .png
            raise DataError(
                f"no mask {display_path(path)} for image {display_path(Path(image))}; give "
                "every image a mask PNG at the same relative path"
            )
        _check_mask_shape(m.shape, image, path)
        return m


def _check_mask_shape(shape: tuple[int, ...], image: Path, mask: Path) -> None:
    """Refuse a mask whose shape is not its image's, up to scale: drawn on a rotated image
    (the stored pixels of an EXIF-oriented JPEG, read upright) or on another image."""
    from ..image_decode import upright_size
    from ..mask_files import same_shape_up_to_scale

    size = upright_size(image)
    if size is None or same_shape_up_to_scale(tuple(shape), size):
        return
    (mh, mw), (ih, iw) = shape[:2], size
    raise DataError(
        f"mask {display_path(mask)} is {mw}×{mh} but its image {display_path(image)} is "
        f"{iw}×{ih} as netlens reads it (after its EXIF orientation); draw the mask on the "
        "image as viewers show it"
    )


def open_dataset(lens: Lens, data: Any, masks: str | Path | None = None) -> Dataset:
    """The dataset to evaluate on (``data`` as ``as_dataset`` takes it, or a masks triple)."""
    from ..data import ImageFolderDataset

    if data is None:
        data = lens.default_data()
        if not data:
            raise DataError("give the data to evaluate on: --data shapes, a folder, a dataset")
    if isinstance(data, DataLoader):  # evaluate batches itself; the dataset keeps the masks
        data = data.dataset
    if masks and not _is_dir(Path(masks)):  # whatever the data: a mistyped path is said
        raise DataError(f"mask folder not found: {display_path(Path(masks))[:200]}")
    ds = data if isinstance(data, Dataset) else lens.dataset(data)
    if isinstance(ds, ImageFolderDataset) or _held_out_in_folder(ds):
        folder = Path(masks) if masks else ds.root.with_name(ds.root.name + "_masks")
        if masks and not _is_dir(folder):
            raise DataError(f"mask folder not found: {display_path(folder)[:200]}")
        if _is_dir(folder):
            return _FolderMasks(ds, folder)
    return ds


def _held_out_in_folder(ds: Any) -> bool:
    """``ds`` is a trained model's held-out images recorded in its data folder (their masks
    lie at the same relative paths, as an image folder's)."""
    from ..train.heldout import HeldOut

    return isinstance(ds, HeldOut) and ds.root is not None


def _is_dir(path: Path) -> bool:
    """``path`` is a folder; False where the OS cannot even look (a name too long)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def mask_at_input(ds: Dataset, i: int, lens: Lens) -> np.ndarray | None:
    """Dataset ``ds``'s mask ``i`` brought to the model's input geometry (None: no masks):
    resized and cropped as its images are, whatever its size. Images that come preprocessed
    (``ds`` has no ``preprocess``) or through a function take it as it is, at the input size."""
    get = getattr(ds, "mask", None)
    if get is None or getattr(ds, "masks", True) is None:
        return None
    m = np.asarray(get(i)).astype(bool)
    pre = getattr(ds, "preprocess", None)
    if pre is None or pre.function is not None:
        _check_input_size(m.shape, _image_size(ds, i, lens, pre), i, pre)
        return m
    geo = dataclasses.replace(pre, channels=1, mean=(0.0,), std=(1.0,), interpolation="nearest")
    return geo(m.astype(np.uint8)[..., None] * 255)[0].numpy() > 0.5


def _image_size(ds: Dataset, i: int, lens: Lens, pre: Any) -> tuple[int, ...]:
    """H×W of image ``i`` as it reaches the model: the dataset's own tensor where it comes
    preprocessed (a model of unknown input size has the images' size), else the lens's."""
    if pre is None:
        x = ds[i][0]
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            return tuple(x.shape[-2:])
    return tuple(lens.input_size[1:])


def _check_input_size(shape: tuple[int, ...], size: tuple[int, ...], i: int, pre: Any) -> None:
    """One line when a mask that cannot be resized as its image is not at the input size."""
    if shape == size:
        return
    how = (
        "the preprocessing is a function, whose resize and crop netlens cannot apply to a mask"
        if pre is not None
        else "the images come preprocessed (model inputs)"
    )
    shown = "×".join(map(str, shape[::-1]))
    raise DataError(
        f"mask {i} is {shown}, but {how}: give masks at the model's input size, "
        f"{size[-1]}×{size[0]} (as the images reach the model)"
    )


def plan_cost(
    lens: Lens,
    data: Any = None,
    methods: Any = "gradcam",
    metrics: Any = None,
    limit: int | None = 64,
    masks: str | Path | None = None,
    **opts: Any,
) -> Plan:
    """The cost of ``evaluate`` with these arguments, without running it."""
    ds = open_dataset(lens, data, masks)
    if len(ds) == 0:
        raise DataError("the data to evaluate on is empty")
    n = len(ds) if limit is None else min(int(limit), len(ds))
    return _plan(lens, ds, n, methods, metrics, opts)


def _plan(lens: Lens, ds: Dataset, n: int, methods: Any, metrics: Any, opts: dict) -> Plan:
    """The plan for ``n`` images of ``ds``. Each metric's ``cost`` is handed ``shared``, a
    dict for the run as its calls share one per batch: a metric that computes something once
    for all methods and metrics (ROAD's random baseline) charges it there, once."""
    masked = _needs_masks(lens, metrics) and mask_at_input(ds, 0, lens) is not None
    allowed = _metrics(lens, metrics, has_masks=masked)
    found = probe_output(lens, ds) if metrics is None or metrics == "all" else None
    chosen = allowed if found is None else [m for m in allowed if m in LOCAL]
    if not chosen:  # no masks, and no class probability to follow
        raise DataError(nothing_to_score(found))  # type: ignore[arg-type]
    notes = (left_out_note([m for m in allowed if m not in chosen], found),) if found else ()
    shared: dict[Any, Any] = {}
    passes = {m: lens.host.metrics.get(m).cost(n, **opts, shared=shared) for m in chosen}
    once = sum(v for v in shared.values() if isinstance(v, int))
    return Plan(n, names(methods), chosen, passes, once, notes)


def _needs_masks(lens: Lens, metrics: Any) -> bool:
    """Some metric of ``metrics`` (the default ones: maybe) scores against masks; masks that
    cannot be used are refused only then."""
    if metrics is None or metrics == "all":
        return True
    return any(lens.host.metrics.get(m).needs_masks for m in names(metrics))


def _metrics(lens: Lens, metrics: Any, *, has_masks: bool) -> list[str]:
    reg = lens.host.metrics
    if metrics is None or metrics == "all":
        return [
            m
            for m in reg.names()
            if getattr(reg.get(m), "default", True) and (has_masks or not reg.get(m).needs_masks)
        ]
    chosen = names(metrics)
    for m in chosen:
        if reg.get(m).needs_masks and not has_masks:
            raise DataError(
                f"metric '{m}' needs ground-truth masks and this data has none (use --data "
                "shapes, an image folder whose masks are PNGs in FOLDER_masks/ or --masks DIR "
                "at the same relative paths, or a dataset with .mask(i); --masks is read only "
                "for an image folder or a trained model's held-out images from one)"
            )
    return chosen


class EvaluateAnalyzer(Analyzer):
    """Explanation quality: pointing game, energy, deletion/insertion, ROAD; mean ± CI."""

    spec = EVALUATE

    def compute(self, run: Run) -> EvaluateResult:
        """Score the methods' heatmaps on ``run.data`` (see the module doc)."""
        lens, o = run.lens, run.options
        method_list = names(o.methods) or ["gradcam"]
        for m in method_list:
            lens.host.cam_methods.get(m)
        opts = _metric_options(o)
        whole = run.data.dataset  # --limit's first items (a Subset) or all of the data
        loader = run.data.loader_given
        if loader is not None and hasattr(loader.dataset, "preprocess"):  # a user's DataLoader
            whole = loader.dataset  # over one of netlens' datasets: it makes the images
        # the dataset under a user's Subset and --limit's cut, and the items they pick
        base, picked = under_subsets(whole)
        ds = open_dataset(lens, base, o.masks)  # the dataset itself finds its mask folder
        lines = unused_masks_warning(o.masks, ds)  # given for data that has its own, or none
        if picked is not None:
            ds = Picked(ds, picked)
        drawn = _drawn(loader) if loader is not None else None  # what its sampler draws
        n = len(ds) if drawn is None else drawn
        if n == 0:
            raise DataError("the data to evaluate on is empty")
        if o.target != "pred" and getattr(run.data, "label_source", None) == NO_LABELS:
            raise DataError(
                "evaluate explains each image's label by default, but the data's items are "
                "images without labels; use --target pred (target='pred') to explain the "
                "predicted class, or give (image, label) items"
            )
        plan = _plan(lens, ds, n, method_list, o.metrics, opts)
        run.data.dataset = ds if loader is not None else first_items(ds, plan.n_images)
        scope = None if loader is not None else data_scope(before_limit(whole, o.limit), n)
        run.progress.note(plan.describe())
        if scope is not None and scope["text"].startswith("the first"):
            run.progress.note(f"evaluate: {scope['text']}")
        tally = _Tally(CountingModel(lens.model, lens.reader, lens.task_for), plan.metrics)
        masked = _needs_masks(lens, plan.metrics)
        scored = [m for m in plan.metrics if m not in LOCAL]  # need class scores
        followed = [m for m in scored if m != "randomization"]  # follow a class's probability
        with run.progress.task("evaluate", plan.total, unit="forward passes") as step:
            for x, y, idx in run.data.loader(o.chunk, with_index=True):
                x = x.to(lens.device)
                masks = _masks(ds, idx.tolist(), lens) if masked else None
                if not tally.classifier_checked:  # pointing and energy need maps and masks only
                    on_fewest(lambda few: check_class_scores(lens, few, scored), x)
                    tally.classifier_checked = True
                if o.target == "pred" or followed:  # one forward of the intact images
                    probs = lens.predict(x)
                    y = probs.argmax(dim=1).cpu() if o.target == "pred" else y
                if followed:  # the target's probability on the intact image (not a metric's)
                    tally.acc.setdefault(_PROB, []).append(target_probs(probs, y))
                tally.acc.setdefault(_INDEX, []).append(np.asarray(idx, np.int64))
                seeds = {"image_seeds": [int(opts.get("seed", 0)) + int(i) for i in idx]}
                _score_batch(run, tally, method_list, x, y, masks, opts | seeds, step)
        acc, seconds, fwd = _combine(run.group.gather((tally.acc, tally.seconds, tally.fwd)))
        run.layers = [str(o.layer)]
        flags = {k: np.concatenate(acc.pop(k)) for k in [k for k in acc if k.startswith("_")]}
        arrays = {k: (v[0] if k.endswith("curve_x") else np.concatenate(v)) for k, v in acc.items()}
        table = summary_rows(lens, arrays, method_list, plan.metrics, seed=int(o.seed))
        read = len(flags.get(_INDEX, ()))  # the images scored: the unreadable ones skipped
        per = max(read, 1) * len(method_list)
        cost = {m: {"forward_passes": fwd[m] / per, "seconds": seconds[m] / per} for m in fwd}
        meta = {"methods": method_list, "metrics": plan.metrics, "images": read}
        meta |= {"target": o.target, "layer": str(o.layer), "planned_forward_passes": plan.total}
        meta |= {"forward_passes": sum(fwd.values()), "cost_per_image": cost, "options": opts}
        meta["label_source"] = run.data.label_source
        if scope is not None:  # the first N of M images (K of C classes), U unreadable
            labels = item_labels(before_limit(whole, o.limit))
            scope = read_scope(scope, flags.get(_INDEX, ()), labels)
            meta["data_scope"] = scope
            lines += scope_warning(scope)
        lines += list(plan.notes)
        flat = {m: int(flags[f"{_FLAT}{m}"].sum()) for m in method_list if f"{_FLAT}{m}" in flags}
        meta["flat_maps"] = flat
        named = lambda rows: image_names(ds, flags[_INDEX][rows])  # noqa: E731
        lines += empty_mask_warning(arrays, method_list, plan.metrics, named)
        lines += flat_warnings(flat, len(flags.get(f"{_FLAT}{method_list[0]}", ())), plan.metrics)
        if _PROB in flags:
            weak = negligible(flags[_PROB])
            meta["negligible_targets"] = int(weak.sum())
            lines += negligible_warning(weak, flags[_PROB], followed)
        meta["warnings"] = lines + unscored_warning(table, read)
        return EvaluateResult("evaluate", arrays=arrays, table=table, meta=meta)


def _drawn(loader: DataLoader) -> int | None:
    """How many items a user's DataLoader draws: its sampler's count (``SubsetRandomSampler``
    draws some items of its dataset), less what ``drop_last`` drops; None: unknown."""
    try:
        if loader.batch_size is None:  # a batch sampler of the user's
            return sum(len(b) for b in loader.batch_sampler)  # type: ignore[union-attr]
        n = len(loader.sampler)  # type: ignore[arg-type]
    except TypeError:  # a stream's sampler has no length
        return None
    return n - n % loader.batch_size if loader.drop_last else n


_FLAT, _PROB, _INDEX = "_flat/", "_target_probability", "_index"  # per-image, not arrays


@dataclass
class _Tally:
    """Per-image metric arrays and, per metric, seconds and forward-passed images."""

    counter: CountingModel
    metrics: list[str]
    acc: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    fwd: dict[str, int] = dataclasses.field(default_factory=dict)
    classifier_checked: bool = False

    def __post_init__(self) -> None:
        self.seconds = {m: 0.0 for m in self.metrics}
        self.fwd = {m: 0 for m in self.metrics}


def _score_batch(
    run: Run,
    tally: _Tally,
    methods: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    masks: Any,
    opts: dict[str, Any],
    step: Callable[[int], None],
) -> None:
    """Every method's heatmaps of one batch, scored by every metric; ``step`` counts passes."""
    lens, layer = run.lens, run.options.layer
    shared: dict[Any, Any] = {}  # what the metrics of this batch share (ROAD's baseline)
    for method in methods:
        heat = lens.cam(x, method=method, layer=layer, target=y.tolist()).heatmaps
        tally.acc.setdefault(f"{_FLAT}{method}", []).append(flat_maps(heat))
        explain = cam_explainer(lens, method, layer)
        for name in tally.metrics:
            t0, n0 = time.perf_counter(), tally.counter.images
            metric = lens.host.metrics.get(name)
            out = metric(
                tally.counter, x, heat, y, masks=masks, explain=explain, shared=shared, **opts
            )
            tally.seconds[name] += time.perf_counter() - t0
            tally.fwd[name] += tally.counter.images - n0
            step(tally.counter.images - n0)
            for key, arr in out.items():
                tally.acc.setdefault(f"{method}/{name}/{key}", []).append(np.asarray(arr))


def _combine(parts: list[tuple[dict, dict, dict]]) -> tuple[dict, dict, dict]:
    """Every rank's per-image arrays (joined in rank order = dataset order), times and passes."""
    acc: dict[str, list[np.ndarray]] = {}
    seconds, fwd = dict(parts[0][1]), dict(parts[0][2])
    for i, (part, secs, passes) in enumerate(parts):
        for key, arrays in part.items():
            acc.setdefault(key, []).extend(arrays)
        if i:
            seconds = {m: seconds[m] + secs[m] for m in seconds}
            fwd = {m: fwd[m] + passes[m] for m in fwd}
    return acc, seconds, fwd


def _metric_options(o: Any) -> dict[str, Any]:
    """The options metrics receive (plugin metrics' own ones from ``metric_options``)."""
    keys = ("steps", "batch_size", "tolerance", "random_baseline", "fill", "noise", "seed")
    opts = {k: o[k] for k in keys}
    if o.fractions is not None:
        opts["fractions"] = o.fractions
    return {**opts, **dict(o.metric_options or {})}


def _masks(ds: Dataset, idx: list[int], lens: Lens) -> np.ndarray | None:
    masks = [mask_at_input(ds, i, lens) for i in idx]
    return np.stack(masks) if masks and masks[0] is not None else None


@dataclass(frozen=True)
class EvaluateResult(Result):
    """Per-image scores (``arrays["METHOD/METRIC/score"]``), curves and a summary table."""

    def headline(self) -> str:
        parts = [f"{r['method']} {r['metric']} {r['mean']:.3f}" for r in self.table]
        scope = (self.meta.get("data_scope") or {}).get("text", "")
        over = scope if scope.startswith("the first") else f"{self.meta['images']} images"
        return f"evaluate over {over}: " + ", ".join(parts)

    def figures(self) -> dict[str, Figure]:
        from ..render.quality_figures import curves_figure, scores_figure

        figs: dict[str, Figure] = {}
        if self.table:
            figs["evaluate-scores"] = scores_figure(self.table)
        curves: dict[str, dict[str, np.ndarray]] = {}
        xs: dict[str, np.ndarray] = {}
        base: dict[str, np.ndarray] = {}
        for key, arr in self.arrays.items():
            method, metric, what = key.split("/")
            if what == "curve":
                curves.setdefault(metric, {})[method] = arr
                xs[metric] = self.arrays.get(
                    f"{method}/{metric}/curve_x", np.linspace(0, 1, arr.shape[1])
                )
            elif what == "curve_baseline" and metric not in base:
                base[metric] = arr
        if curves:
            figs["evaluate-curves"] = curves_figure(curves, xs, base)
        return figs

    def score(self, method: str, metric: str) -> float:
        """The mean score of one method on one metric."""
        for row in self.table:
            if row["method"] == method and row["metric"] == metric:
                return float(row["mean"])
        raise NetlensError(f"no row for method '{method}' and metric '{metric}'")
