"""What to explain: a target turns the model's output into one score per image.

Every analyzer that explains something (CAMs, evaluate, sanity, plugins) goes through this one
module, in the spirit of pytorch-grad-cam's target objects and captum's ``target=``:

- :func:`model_output` (:mod:`netlens.model_output`) takes the tensor to explain out of whatever
  ``forward`` returned (a tensor, a dict such as torchvision segmentation's ``{"out": ...}``, a
  tuple, a Hugging Face output with ``.logits``);
- a :class:`Target` maps that output (N×K logits, N×1 binary logit, N×K×H×W dense maps) to N
  scores, one per image; ``rows`` says which image each output row belongs to, so per-image
  targets also score masked or ablated copies of an image;
- :func:`resolve_targets` turns what a user wrote (``None``, ``3``, ``"cat"``, ``"3,cat"``,
  ``"neg"``, ``"output:2"``, ``"region:person"``, a list, a callable, a :class:`Target`) into
  target sets for a batch, given the batch's own output.

Tasks (``Lens.task``): ``multiclass`` (softmax over N×K logits), ``multilabel`` (independent
sigmoids), ``binary`` (one logit: positive evidence for ``pos``, negative for ``neg``),
``regression`` (raw outputs) and ``dense`` (N×K×H×W, e.g. segmentation: a region's summed score).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .errors import NetlensError, TargetError
from .model_output import model_output
from .output_reader import is_binary_dense

if TYPE_CHECKING:
    from .images import Batch
    from .lens import Lens

__all__ = [
    "TASKS",
    "BinaryTarget",
    "CallableTarget",
    "ClassTarget",
    "OutputTarget",
    "RegionTarget",
    "Target",
    "align_targets",
    "are_probabilities",
    "as_logits",
    "check_task",
    "detect_task",
    "model_output",
    "probabilities",
    "resolve_targets",
    "split_targets",
]

TASKS = ("multiclass", "multilabel", "binary", "regression", "dense")


def check_task(task: str | None) -> str | None:
    """``task`` when it is one of :data:`TASKS` (or None); one line naming them otherwise."""
    if task is not None and task not in TASKS:
        from .errors import hint

        raise NetlensError(f"unknown task '{task}'{hint(task, TASKS)} (tasks: {', '.join(TASKS)})")
    return task


def detect_task(output: torch.Tensor, multilabel: bool = False) -> str:
    """The task an output tensor suggests: ``dense`` (N×K×H×W), ``binary`` (N×1), else
    ``multilabel`` when asked, else ``multiclass``."""
    if output.dim() == 4:
        return "dense"
    if output.dim() == 2 and output.shape[1] == 1:
        return "binary"
    return "multilabel" if multilabel else "multiclass"


def probabilities(output: torch.Tensor, task: str) -> torch.Tensor:
    """N×K scores a person reads as probabilities: softmax, sigmoid, or the raw values.

    Dense outputs are summarised per class by the mean over pixels of the softmax (a dense
    regression's, depth per pixel, by the mean of its raw values).
    """
    out = output.detach().float()
    if task == "multiclass":
        from .output_reader import are_log_probabilities as logs

        if are_probabilities(out, output.dtype):
            return out
        return out.exp() if logs(out) else torch.softmax(out, dim=1)
    if task == "binary":  # N×2: (negative, positive), indexed as binary targets are
        return torch.softmax(as_logits(out.reshape(len(out), -1)[:, :1]), dim=1)
    if task == "multilabel":
        return torch.sigmoid(out)
    if task == "dense":  # a segmenter ending in nn.Softmax(1): its probabilities as they are
        dense = out if are_probabilities(out, output.dtype) else torch.softmax(out, dim=1)
        return dense.mean(dim=(2, 3))
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out


def are_probabilities(out: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether N×K multi-class outputs (or N×K×H×W dense ones, per pixel) are probabilities
    already (a model ending in ``nn.Softmax``): every value in [0, 1] and every row summing
    to 1, to 1e-3 or the rounding of the model's ``dtype`` (default ``out``'s; a bfloat16
    softmax sums to 1 ± 0.002). Logits never do both by chance; a softmax taken again would
    squash a 0.99 among five classes to 0.40."""
    if out.dim() not in (2, 4) or out.shape[1] < 2 or not out.numel():
        return False
    finite = bool(torch.isfinite(out).all())
    in_range = finite and bool(out.min() >= 0) and bool(out.max() <= 1)
    tol = max(1e-3, 2 * torch.finfo(dtype or out.dtype).eps)
    return in_range and bool((out.double().sum(dim=1) - 1).abs().max() <= tol)


def as_logits(out: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """N×K scores whose softmax is the class probabilities: logits as they are; a single
    logit ``z`` as ``[0, z]`` (softmax: ``1 − σ(z), σ(z)``, negative then positive, as binary
    targets index them); probabilities (a model ending in ``nn.Softmax``) as their logs.
    ``dtype``: the model's, when ``out`` was cast from it (see :func:`are_probabilities`)."""
    if out.dim() == 2 and out.shape[1] == 1:
        return torch.cat([torch.zeros_like(out), out], dim=1)
    if out.dim() == 2 and are_probabilities(out, dtype):
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()
    return out


# -- targets ---------------------------------------------------------------------------------
class Target(ABC):
    """One score per image from the model output; subclasses implement :meth:`score`."""

    kind: ClassVar[str] = "custom"

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``output``'s rows; ``rows[j]`` is the image row ``j`` belongs to."""
        if rows is None:
            rows = torch.arange(output.shape[0], device=output.device)
        return self.score(output, rows.to(output.device))

    @abstractmethod
    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Scores of ``output``'s rows (``rows`` already on the output's device)."""

    def index(self, n: int) -> np.ndarray:
        """The class/output index explained per image (-1 where none applies)."""
        return np.full(n, -1, dtype=np.int64)

    def describe(self, i: int, lens: Lens | None = None) -> str:
        """A short human label for image ``i``'s target."""
        return self.kind


@dataclass(frozen=True, eq=False)
class ClassTarget(Target):
    """The logit of one class per image (multi-class and multi-label classifiers)."""

    classes: torch.Tensor
    kind: ClassVar[str] = "class"

    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(len(rows), device=output.device)
        return output[idx, self.classes.to(output.device)[rows]]

    def index(self, n: int) -> np.ndarray:
        return self.classes.detach().cpu().numpy().astype(np.int64)

    def describe(self, i: int, lens: Lens | None = None) -> str:
        c = int(self.classes[i])
        return lens.class_name(c) if lens is not None else str(c)


@dataclass(frozen=True, eq=False)
class OutputTarget(ClassTarget):
    """One output unit of a regression model (no class semantics)."""

    kind: ClassVar[str] = "output"

    def describe(self, i: int, lens: Lens | None = None) -> str:
        k, names = int(self.classes[i]), (lens.classes if lens is not None else None) or []
        return str(names[k]) if k < len(names) else f"output {k}"  # a regression's "height"


@dataclass(frozen=True, eq=False)
class BinaryTarget(Target):
    """A single-logit model: ``sign=+1`` explains the positive class, ``-1`` the negative one.

    ``sign`` may be one value per image (the prediction: positive where the logit is > 0).
    """

    sign: torch.Tensor
    kind: ClassVar[str] = "binary"

    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return output.reshape(output.shape[0], -1)[:, 0] * self.sign.to(output)[rows]

    def index(self, n: int) -> np.ndarray:
        return (self.sign.detach().cpu().numpy() > 0).astype(np.int64)

    def describe(self, i: int, lens: Lens | None = None) -> str:
        positive = bool(self.sign[i] > 0)
        if lens is not None and lens.classes and len(lens.classes) in (1, 2):
            return binary_names(lens.classes)[int(positive)]
        return "positive" if positive else "negative"


@dataclass(frozen=True, eq=False)
class RegionTarget(Target):
    """A dense (N×K×H×W) output: class ``k``'s scores summed over a region per image.

    ``masks`` is N×H×W bool (fixed when the target is made, so masked copies of an image are
    scored over the same pixels), as pytorch-grad-cam's ``SemanticSegmentationTarget`` does.
    The sum is taken in float32 (float64 for a float64 model), so a float16 or bfloat16
    model's region of many pixels does not overflow to inf. A one-channel binary segmentation
    (:func:`netlens.output_reader.binary_dense`'s ``[−z/2, z/2]``) is scored on the model's own
    logit, ``±z``: at half of it, Score-CAM's softmax over channel scores ran at half the
    model's scale.
    """

    classes: torch.Tensor
    masks: torch.Tensor
    kind: ClassVar[str] = "region"

    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(len(rows), device=output.device)
        maps = output[idx, self.classes.to(output.device)[rows]]
        maps = maps * 2 if is_binary_dense(output) else maps  # ±z/2 back to ±z
        # summed in float32 at least: a float16 model's 12 288 pixels of 8.4 summed to inf
        wide = maps.to(torch.promote_types(maps.dtype, torch.float32))
        return (wide * self.masks.to(wide)[rows]).flatten(1).sum(dim=1)

    def index(self, n: int) -> np.ndarray:
        return self.classes.detach().cpu().numpy().astype(np.int64)

    def describe(self, i: int, lens: Lens | None = None) -> str:
        c = int(self.classes[i])
        name = lens.class_name(c) if lens is not None else str(c)
        if lens is not None and lens.task == "regression" and name == str(c):
            name = f"output {c}"  # a depth map's value, not a class
        return f"{name} ({int(self.masks[i].sum())} px)"


class CallableTarget(Target):
    """A user's function: ``fn(output) -> N scores`` or ``fn(output, rows) -> N scores``.

    ``rows`` (each output row's image) is passed when ``fn`` has two required positional
    parameters, or one named ``rows``: a parameter with a default (``lambda o, c=3: ...``,
    ``functools.partial(fn, cls=3)``) binds something else and is left alone.
    """

    kind: ClassVar[str] = "custom"

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.rows = _rows_argument(fn)

    def score(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.rows == "keyword":
            got = self.fn(output, rows=rows)
        else:
            got = self.fn(output, rows) if self.rows == "positional" else self.fn(output)
        if not isinstance(got, torch.Tensor) or got.shape != (output.shape[0],):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            copies = int(rows.numel()) > int(rows.unique().numel())
            hint = (
                f": this pass scores {output.shape[0]} masked or ablated copies of "
                f"{int(rows.unique().numel())} image(s); take the image each row is a copy of "
                "as a second argument, def target(output, rows): rows[i] is row i's image"
                if copies and self.rows is None
                else ""
            )
            raise TargetError(
                f"a target function must return one score per output row "
                f"({output.shape[0]},), not {shape}{hint}"
            )
        if not got.is_floating_point():  # a flag or a count: every method takes differences
            got = got.float()
        bad = ~torch.isfinite(got.detach())
        if bool(bad.any()):
            images = int(rows[bad.to(rows.device)].unique().numel())
            raise TargetError(
                f"the target function '{self.describe(0)}' returned NaN or infinite scores "
                f"({int(bad.sum())} of {got.shape[0]} rows, for {images} image(s)); return a "
                "finite score for every row (an empty selection's max or mean is NaN: give it "
                "a fallback, e.g. torch.nan_to_num or a where)"
            )
        return got

    def describe(self, i: int, lens: Lens | None = None) -> str:
        return getattr(self.fn, "__name__", "custom")


def _rows_argument(fn: Callable[..., Any]) -> str | None:
    """How ``fn`` takes ``rows``: ``"positional"`` (two required positional parameters),
    ``"keyword"`` (a parameter named ``rows``), or None (not at all)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params.values() if p.kind in positional and p.default is p.empty]
    if len(required) >= 2:
        return "positional"
    named = params.get("rows")
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return "keyword" if named is not None and named.kind in keyword else None


# -- from what the user wrote ----------------------------------------------------------------
def resolve_targets(
    spec: Any,
    output: torch.Tensor,
    lens: Lens,
    *,
    top: int | None = None,
) -> list[Target]:
    """Target sets for a batch whose (unmasked) model output is ``output``.

    Args:
        spec: None or ``"pred"`` (the prediction), a class index or name, ``"3,cat"`` / a list
            (one per image), ``"pos"``/``"neg"`` (binary), ``"output:K"`` (regression),
            ``"region:NAME"`` (dense: that class's predicted pixels), ``"region:NAME@mask.png"``
            (a fixed mask), a callable, or a :class:`Target`.
        output: the model output of the batch (as :func:`model_output` gives it).
        lens: for class names and the task.
        top: one set per rank for the ``top`` highest-scoring classes instead of ``spec``.

    Returns:
        One :class:`Target` per set (several only with ``top``).
    """
    task = lens.task_for(output)
    if top is not None:
        if spec is not None:
            raise TargetError("give either a target or top=K, not both")
        return _top(output, task, int(top))
    if isinstance(spec, Target):
        return [spec]
    if callable(spec) and not isinstance(spec, (str, torch.Tensor, np.ndarray)):
        return [CallableTarget(spec)]
    items = _per_image(spec, output.shape[0], lens.classes or [])
    return [_build(items, output, lens, task)]


def _top(output: torch.Tensor, task: str, k: int) -> list[Target]:
    if k < 1:
        raise TargetError(f"top must be at least 1, got {k}")
    if task == "binary":  # the predicted class, then the other one
        pred = torch.where(output.detach().reshape(len(output), -1)[:, 0] > 0, 1.0, -1.0)
        return [BinaryTarget(pred * sign) for sign in (1.0, -1.0)[:k]]
    if task not in ("multiclass", "multilabel"):
        raise TargetError(f"top=K needs a classifier's N×classes output; this model's is {task}")
    if k > output.shape[1]:  # said, not capped in silence
        import warnings

        from .errors import NetlensWarning

        warnings.warn(
            f"top={k} is more than the model's {output.shape[1]} classes: all of them are "
            "explained",
            NetlensWarning,
            stacklevel=3,
        )
    idx = output.detach().topk(min(k, output.shape[1]), dim=1).indices
    return [ClassTarget(idx[:, j]) for j in range(idx.shape[1])]


def split_targets(spec: Any, names: Sequence[str] = ()) -> Any:
    """``"3,cat"`` as one target per image, ``["3", "cat"]``; any other spec as it is, and so
    is a class name with a comma (ImageNet's ``goldfish, Carassius auratus``)."""
    if isinstance(spec, str) and "," in spec and spec.strip() not in names:
        return [s.strip() for s in spec.split(",")]
    return spec


def align_targets(spec: Any, batch: Batch, names: Sequence[str] = ()) -> Any:
    """``spec`` for the images of ``batch`` that were read (:meth:`Analyzer.run` calls it).

    A per-image list (or ``"3,cat"``, a tensor) has one entry per input given, the unreadable
    ones included: their entries are dropped and the others stay with their images. With every
    input read, that list is returned as it is, and so is any other spec; a list of another
    length is refused with one line saying the counts (one as long as the readable images alone
    too: which images its entries were meant for is unknown)."""
    items = spec.tolist() if isinstance(spec, (torch.Tensor, np.ndarray)) else spec
    items = split_targets(items, names)
    if not isinstance(items, Sequence) or isinstance(items, str):
        return spec
    if batch.given == len(batch):
        if len(items) == len(batch):
            return spec
        raise TargetError(
            f"{len(items)} targets given for {len(batch)} images; give one per image or one for all"
        )
    if len(items) == batch.given and batch.kept is not None:
        return [items[i] for i in batch.kept]
    raise TargetError(
        f"{len(items)} targets for {batch.given} images given, {len(batch)} of them readable; "
        "give one per image given, the unreadable ones included, or one for all"
    )


def _per_image(spec: Any, n: int, names: Sequence[str] = ()) -> list[Any]:
    """One target per image: ``spec`` for all, or its comma-separated parts."""
    if spec is None:
        return ["pred"] * n
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        spec = spec.tolist()
    spec = split_targets(spec, names)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != n:
            raise TargetError(
                f"{len(spec)} targets given for {n} images; give one per image or one for all"
            )
        return [_item(s) for s in spec]
    return [_item(spec)] * n


def _item(item: Any) -> Any:
    """One image's target: a class index or text; one line for anything else."""
    if isinstance(item, str) or (isinstance(item, Integral) and not isinstance(item, bool)):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    raise TargetError(
        f"target {item!r:.40} is not a class index or name (nor pred, pos/neg, output:K, "
        "region:NAME)"
    )


def _build(items: list[Any], output: torch.Tensor, lens: Lens, task: str) -> Target:
    kinds = {_kind(i) for i in items}
    if len(kinds) > 1:
        raise TargetError(f"targets of different kinds in one batch: {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    dense_values = task == "regression" and output.dim() == 4 and kind != "pred"
    if kind == "region" or task == "dense" or dense_values:
        return _region(items, output, lens, task)
    if kind == "output":
        k = output.shape[1]
        return OutputTarget(torch.tensor([_in_range(int(i.split(":", 1)[1]), k) for i in items]))
    if task == "binary":
        return BinaryTarget(torch.tensor([_sign(i, output[j], lens) for j, i in enumerate(items)]))
    if task == "regression" and kind == "pred":
        raise TargetError("a regression model has no prediction to explain; pass output:K")
    pred = output.detach().argmax(dim=1)
    k = output.shape[1]
    classes = [int(pred[j]) if i == "pred" else lens.class_index(i, k) for j, i in enumerate(items)]
    kept = OutputTarget if task == "regression" else ClassTarget  # target=1: "output 1"
    return kept(torch.tensor(classes, dtype=torch.long))


def _kind(item: Any) -> str:
    text = str(item).strip().lower()
    if text == "pred":
        return "pred"
    if text.startswith("output:"):
        return "output"
    if text.startswith("region:"):
        return "region"
    if text in ("pos", "neg", "positive", "negative"):
        return "sign"
    return "class"


def _in_range(k: int, n: int) -> int:
    if not 0 <= k < n:
        raise TargetError(f"output index {k} is out of range: the model has {n} outputs")
    return k


def _sign(item: Any, row: torch.Tensor, lens: Lens) -> float:
    text = str(item).strip().lower()
    if text == "pred":
        return 1.0 if float(row.reshape(-1)[0]) > 0 else -1.0
    if text in ("pos", "positive", "1"):
        return 1.0
    if text in ("neg", "negative", "0"):
        return -1.0
    names = binary_names(lens.classes) if lens.classes and len(lens.classes) < 3 else []
    if text in [n.lower() for n in names]:  # one name: the positive class's
        return 1.0 if [n.lower() for n in names].index(text) == 1 else -1.0
    raise TargetError(
        f"target '{item}' does not fit a single-logit (binary) model: use pos or neg"
        + (f" or {names[1]}/{names[0]}" if names else "")
    )


def binary_names(classes: Sequence[str]) -> list[str]:
    """A single logit's (negative, positive) names: two names as given; one name (Hugging
    Face's ``id2label = {0: "cancer"}``, ``--classes cancer``) the positive class's, the
    negative ``not cancer``."""
    return [f"not {classes[0]}", str(classes[0])] if len(classes) == 1 else list(classes)


def _region(items: list[Any], output: torch.Tensor, lens: Lens, task: str) -> Target:
    if task == "regression" and output.dim() == 4:  # depth per pixel: no predicted region
        from .dense_values import value_region

        return value_region(items, output, lens)
    if task != "dense":
        raise TargetError("region targets need a dense (N×classes×H×W) output, e.g. segmentation")
    n, k = output.shape[:2]

    binary = is_binary_dense(output)  # one channel read as background/foreground
    independent = lens is not None and lens.dense_sigmoids(output)
    on = output.detach() > 0 if independent else None  # multi-label masks: each class's own
    pred = output.detach().argmax(dim=1)
    classes, masks = [], []
    for j, item in enumerate(items):
        text = str(item)
        body = text.split(":", 1)[1] if text.lower().startswith("region:") else text
        name, _, mask_file = body.partition("@")
        counts = on[j].flatten(1).sum(1) if on is not None else torch.bincount(pred[j].flatten())
        c = _main_class(counts, lens, k, binary) if name in ("", "pred") else None
        c = lens.class_index(name, k) if c is None else c
        region = on[j, c] if on is not None else pred[j] == c
        classes.append(c)
        masks.append(_mask_file(mask_file, output.shape[-2:]) if mask_file else region)
    return RegionTarget(torch.tensor(classes), torch.stack([m.to(torch.bool) for m in masks]))


def _main_class(counts: torch.Tensor, lens: Lens, k: int, binary: bool = False) -> int:
    """The class predicted on most pixels (``counts``: pixels per class); a class named
    background only when no other class is predicted anywhere (a VOC model's
    ``__background__`` covers most of most photos, and an explanation of the background is
    not what ``pred`` is asked for). With two unnamed classes, and in a one-channel binary
    segmentation (``binary``: :func:`netlens.output_reader.binary_dense`) whatever its two
    names (``normal``/``lesion``), class 0 is the background."""
    from .data.labels import normalize_name

    order = [int(c) for c in torch.argsort(counts, descending=True, stable=True) if counts[c]]
    named = lens.class_name if lens is not None else str
    unnamed_pair = binary or (k == 2 and (lens is None or not lens.classes))

    def background(c: int) -> bool:
        return normalize_name(named(c)) == "background" or (unnamed_pair and c == 0)

    found = next((c for c in order if not background(c)), None)
    return (order[0] if order else 0) if found is None else found


def _mask_file(path: str, size: torch.Size) -> torch.Tensor:
    """A region mask PNG (:func:`netlens.mask_files.read_mask`) at the output's size: drawn on
    the model's input or output, at any scale; another shape is refused, not stretched."""
    import cv2

    from .mask_files import read_mask, same_shape_up_to_scale

    m = read_mask(Path(path))
    if m is None:
        raise TargetError(f"region mask not found: {path} (a PNG, non-zero = inside)")
    h, w = int(size[0]), int(size[1])
    if not same_shape_up_to_scale(m.shape, (h, w)):
        raise TargetError(
            f"the region mask {path} is {m.shape[1]}×{m.shape[0]}, not shaped as the model's "
            f"output ({w}×{h}): draw it on the model's input (after its resize and crop)"
        )
    m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    if not m.any():
        raise TargetError(
            f"the region mask {path} is empty (no non-zero pixel at the output's {w}×{h}): "
            "draw the region in it (non-zero = inside)"
        )
    return torch.from_numpy(m > 0)
