"""The Analyzer template and the Result every analyzer (built-in or plugin) returns.

An analyzer declares its options and what it runs on, and writes only its computation::

    class Brightness(Analyzer):
        \"\"\"Mean input brightness per image.\"\"\"

        name = "brightness"
        takes = "images"
        options = (Option("scale", 1.0, "multiply by this", float, low=0),)

        def compute(self, run: Run) -> Result:
            x = run.images.tensor
            values = x.mean(dim=(1, 2, 3)) * run.options.scale
            table = [{"image": n, "value": float(v)} for n, v in zip(run.images.names, values)]
            return Result("brightness", table=table)

:meth:`Analyzer.run` (in the spirit of torch-cam's ``__call__ → _precheck → compute``) checks
the options against the declarations (unknown ones refused with close-name hints), resolves the
images or data once (sample images / the model card's dataset when none are given, one policy
for unreadable items), puts the model in eval mode (restoring every module's own flag after),
hands :meth:`Analyzer.compute` a :class:`Run`, and stamps the Result with the reproducibility
header (:mod:`netlens.provenance`). Analyzers report progress through ``run.progress`` and keep
partial rows in ``run.storage``; they never print, draw bars or write files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .options import Option, Options, parse_options

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..distributed import Group
    from ..images import Batch
    from ..lens import Lens
    from ..progress import Progress
    from ..storage import Storage
    from .inputs import Data
    from .specs import Spec

__all__ = ["Analyzer", "Option", "Result", "Run", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """numpy / torch / paths → plain JSON types (NaN and infinities → None); a function or
    class (a callable target in a run's options) → its qualified name, ``module.qualname``;
    any other object JSON has no type for → its ``repr()``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        obj = obj.item()
    elif isinstance(obj, np.ndarray) or (hasattr(obj, "tolist") and hasattr(obj, "dim")):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float)):
        return obj
    if isinstance(obj, functools.partial):  # the function and the arguments it was given
        args = [repr(a) for a in obj.args] + [f"{k}={v!r}" for k, v in obj.keywords.items()]
        return f"functools.partial({', '.join([to_jsonable(obj.func), *args])})"
    if isinstance(obj, (set, frozenset)):  # an order that does not change with the hash seed
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if callable(obj):
        kind = obj if hasattr(obj, "__qualname__") else type(obj)  # an instance with __call__
        module = getattr(kind, "__module__", None)
        return f"{module}.{kind.__qualname__}" if module else kind.__qualname__
    return repr(obj)


@dataclass(frozen=True)
class Result:
    """What an analyzer returns: named arrays, a table (list of row dicts) and metadata.

    ``meta["run"]`` is the reproducibility header and ``meta["skipped"]`` the unreadable items
    (one line each), the same keys for every analyzer. ``save(dir)`` writes, as one set that
    lands whole or not at all (:mod:`netlens.output`): the figures (``figures()``) and pictures
    (``pictures()``) as PNG, ``NAME.json`` (header, meta, table), ``NAME.csv`` (the table),
    arrays as ``.npy`` (``array_files()``) and ``NAME.manifest.json``.
    In Jupyter a result shows itself inline (every image, paged; the table; a short header);
    ``repr()`` is a few lines of shapes (:mod:`netlens.render.display`).
    """

    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    save_arrays: ClassVar[bool] = False

    # -- what gets written (override in subclasses) ----------------------------------------
    def figures(self) -> dict[str, Figure]:
        """Figures to save, by file stem; the first one is the inline picture."""
        return {}

    def pictures(self) -> dict[str, np.ndarray]:
        """Plain pictures (H×W×3 uint8) to save as PNG, by file stem (e.g. CAM overlays)."""
        return {}

    def array_files(self) -> dict[str, np.ndarray]:
        """Arrays to save as ``.npy``, by file stem (default: every array, ``NAME-KEY``)."""
        from ..output import safe_name

        return {f"{self.name}-{safe_name(k)}": v for k, v in self.arrays.items()}

    def headline(self) -> str:
        """One line saying what was found, for the terminal (subclasses say more)."""
        return f"{self.name}: {len(self.table)} rows"

    def summary(self) -> dict[str, Any]:
        """The JSON document: analyzer, the run header first, then meta and the table."""
        meta = {k: v for k, v in self.meta.items() if k != "run"}
        head = {"analyzer": self.name, "run": self.meta.get("run")}
        return to_jsonable({**head, **meta, "table": self.table})

    @property
    def skipped(self) -> list[str]:
        """Items that could not be read (one line each)."""
        return list(self.meta.get("skipped") or [])

    def stamped(self, header: dict[str, Any], skipped: list[str]) -> Result:
        """A copy with the run header and the skipped items in ``meta``."""
        meta = {**self.meta, "run": header, "skipped": skipped}
        return dataclasses.replace(self, meta=meta)

    # -- output ----------------------------------------------------------------------------
    def save(self, directory: str | Path, *, arrays: bool | None = None) -> list[Path]:
        """Write the result's files into ``directory`` (see the class doc); returns them."""
        from ..output import OutputSet, csv_text, npy_bytes
        from ..render.figures import figure_png
        from ..render.overlay import png_bytes

        with OutputSet(directory, self.name) as out:
            for stem, fig in self.figures().items():
                out.write_bytes(f"{stem}.png", figure_png(fig))
            for stem, image in self.pictures().items():
                out.write_bytes(f"{stem}.png", png_bytes(image))
            if self.save_arrays if arrays is None else arrays:
                for stem, arr in self.array_files().items():
                    out.write_bytes(f"{stem}.npy", npy_bytes(arr))
            if self.table:
                out.write_text(f"{self.name}.csv", csv_text(self.table))
            doc = self.summary()
            doc["files"] = [*out.names, f"{self.name}.json"]
            out.write_text(f"{self.name}.json", json.dumps(doc, indent=2))
        return out.written

    # -- display (delegates to netlens.render.display) --------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep the short repr in subclasses (``@dataclass`` would generate a long one)."""
        super().__init_subclass__(**kwargs)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = Result.__repr__  # type: ignore[method-assign]

    def __repr__(self) -> str:
        from ..render.display import text_repr

        return text_repr(self)

    __str__ = __repr__

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from ..render.display import bundle

        return bundle(self)

    def _repr_html_(self) -> str:
        from ..render.display import result_html

        return result_html(self)

    def _repr_png_(self) -> bytes | None:
        from ..render.display import result_png

        return result_png(self)

    def figure(self, i: int = 0) -> Figure:
        """Figure ``i`` of :meth:`figures`; displays inline in Jupyter without any magic."""
        from ..render.display import nth_figure

        return nth_figure(self, i)

    def show(self, page: int = 1, *, per_page: int = 12, out: str | Path | None = None) -> Any:
        """In Jupyter: display page ``page`` (every image of the batch, ``per_page`` at a time).
        Elsewhere: save to ``out`` (default ``netlens-out/``) and print the files' paths."""
        from ..render.display import show

        return show(self, page, per_page, out)


@dataclass
class Run:
    """What :meth:`Analyzer.compute` works with.

    Attributes:
        lens: the model with its preprocessing and class names.
        options: the checked options (``run.options.top``).
        progress: where to report progress (:mod:`netlens.progress`).
        storage: where to keep finished rows of a long study (:mod:`netlens.storage`).
        images: the preprocessed images (analyzers that take images).
        data: the dataset to stream (analyzers that take data); in a distributed run its
            ``loader`` yields this process's share of the batches.
        layers: set by the analyzer to the layers it resolved (for the header).
        group: the processes of a distributed run (:mod:`netlens.distributed`): its exchanges
            combine partial results; in one process they return their input.
    """

    lens: Lens
    options: Options
    progress: Progress
    storage: Storage
    images: Batch | None = None
    data: Data | None = None
    layers: list[str] | None = None
    group: Group = field(default_factory=lambda: _single())
    started: datetime | None = None
    clock: float = field(default_factory=time.perf_counter)

    @property
    def skipped(self) -> list[str]:
        if self.images is not None:
            return list(self.images.errors)
        return self.data.skipped_lines() if self.data is not None else []


class Analyzer(ABC):
    """Base for analyzers: declare ``name``, ``takes``, ``options``; write :meth:`compute`.

    Attributes:
        name: registry name (``netlens NAME`` / ``lens.run(NAME)``).
        description: one line for listings.
        takes: ``"images"``, ``"data"`` (a dataset, with labels) or ``"model"`` (nothing else).
        reads_labels: with ``takes="data"``, whether :meth:`compute` reads the labels; when
            not, any images will do (a flat folder, tensors, folders named otherwise than the
            model's classes: :mod:`.unlabelled`).
        options: the declared :class:`Option` s.
        distributed: :meth:`compute` combines its partial results through ``run.group``, so
            it may run sharded over several processes (torchrun).
        spec: a built-in's :class:`~netlens.analyzers.specs.Spec`, which sets all of the above.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    takes: ClassVar[str] = "images"
    reads_labels: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = ()
    distributed: ClassVar[bool] = False
    spec: ClassVar[Spec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that sets ``spec`` (a built-in's declaration) takes everything from it."""
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:
            cls.name, cls.description, cls.takes = spec.name, spec.description, spec.takes
            cls.options, cls.distributed = spec.options, spec.distributed

    def declared_options(self) -> tuple[Option, ...]:
        """The options this analyzer accepts (override for per-instance options)."""
        return tuple(self.options)

    def run(
        self,
        lens: Lens,
        inputs: Any = None,
        *,
        progress: Progress | bool | None = None,
        storage: Storage | None = None,
        strict: bool = False,
        group: Group | None = None,
        **options: Any,
    ) -> Result:
        """Check options, resolve inputs, compute, stamp the header; see the module doc.

        Args:
            lens: the model.
            inputs: images or data, as the analyzer takes (None: the model's own).
            progress: a :class:`~netlens.progress.Progress`, True/False, or None (a bar in
                Jupyter, nothing elsewhere).
            storage: where long studies keep finished rows (default: memory).
            strict: stop at the first unreadable image instead of skipping it.
            group: run sharded over the processes of this distributed job
                (:meth:`netlens.distributed.Group.join`, on every rank); every rank returns
                the combined result. None: this process alone.
            **options: the analyzer's declared options.
        """
        import torch

        from ..callable_output import target_scope
        from ..distributed.sinks import for_rank
        from ..layers import eval_mode, exclusive
        from ..progress import auto_progress
        from ..provenance import now
        from ..storage import MemoryStorage

        group = group or _single()
        declared = self.declared_options()
        kept = [o.name for o in declared if o.name in _RUN_KEYWORDS]
        if kept:  # the keyword above would take it: the analyzer would never see its value
            from ..errors import AnalyzerError

            raise AnalyzerError(
                f"{self.name}: option '{kept[0]}' is a name Analyzer.run keeps for itself "
                f"({', '.join(_RUN_KEYWORDS)}); rename the option"
            )
        for alias in _INPUT_WORDS:  # lens.run("stats", data="imgs"), as lens.ablate takes it
            if alias in options and inputs is None and all(o.name != alias for o in declared):
                inputs = options.pop(alias)
        opts = parse_options(self.name, declared, options)
        sinks = for_rank(auto_progress(progress), storage or MemoryStorage(), group)
        run = Run(lens, opts, *sinks, group=group, started=now())
        # a call from inside torch.inference_mode() (a notebook cell, an eval function) still
        # gets its gradients: the analyzers choose inference mode themselves where it is exact;
        # torch's global RNG is left as it was (a DataLoader draws its base seed from it): a
        # script that seeds, analyses, then trains gets the run it gets without the analysis;
        # so are the CUDA generators where CUDA is in use (noise drawn on the GPU)
        cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
        with (
            exclusive(lens.model),  # one analysis of a model at a time, whichever thread
            group.guard(),
            torch.inference_mode(False),
            torch.random.fork_rng(devices=cuda, device_type="cuda"),
            target_scope(options.get("target"), lens.model),  # a function's: the raw output
        ):
            self._check_distributed(group)
            self._resolve_inputs(run, inputs, strict)
            _align_targets(run)
            with eval_mode(lens.model), _refusing_inference_weights(lens.model):
                _learn_output(run)
                result = self.compute(run)
            if run.data is not None:  # every rank's skipped items (the last exchange)
                run.data.skipped = group.union(run.data.skipped)
        if not callable(getattr(result, "stamped", None)):  # a plugin's slip, in one line
            from ..errors import AnalyzerError

            raise AnalyzerError(
                f"analyzer '{self.name}': compute() returned a {type(result).__name__}; return "
                "a netlens Result (netlens.analyzers.base.Result, see docs/plugins.md)"
            )
        return result.stamped(self._header(run), run.skipped)

    def _check_distributed(self, group: Group) -> None:
        from ..errors import AnalyzerError

        if group.world > 1 and not self.distributed:
            raise AnalyzerError(
                f"{self.name} does not combine results across processes; run it in one "
                "process (without --distributed or torchrun)"
            )

    def _resolve_inputs(self, run: Run, inputs: Any, strict: bool) -> None:
        from ..errors import AnalyzerError
        from .inputs import resolve_data, resolve_images

        if self.takes == "images":
            run.images = resolve_images(run.lens, inputs, strict=strict)
        elif self.takes == "data":
            limit = run.options.get("limit")
            given = inputs
            if not self.reads_labels:  # any images will do: none of their labels is read
                from .unlabelled import unlabelled_data

                inputs = unlabelled_data(run.lens, inputs)
            run.data = resolve_data(run.lens, inputs, what=self.name, limit=limit, strict=strict)
            run.data.group = run.group
            if not self.reads_labels:
                from .unlabelled import describe

                run.data.label_source = f"not used: {self.name} reads no labels"
                run.data.source = describe(given) or run.data.source
        elif inputs is not None:
            raise AnalyzerError(f"{self.name} takes no images or data; drop them")

    def _header(self, run: Run) -> dict[str, Any]:
        from ..provenance import run_header

        header = run_header(
            run.lens,
            started=run.started,  # type: ignore[arg-type]
            seconds=time.perf_counter() - run.clock,
            options=dict(run.options),
            layers=run.layers,
            data=run.data.describe() if run.data is not None else None,
        )
        if run.group.world > 1:
            header["processes"] = run.group.world
        return header

    @abstractmethod
    def compute(self, run: Run) -> Result:
        """The analysis itself: inputs and options are in ``run``; return a Result."""


_RUN_KEYWORDS = ("progress", "storage", "strict", "group")  # Analyzer.run's own keywords
# what the inputs are called as a keyword: the data (``lens.ablate(data=...)``) or images
_INPUT_WORDS = ("data", "images")


def _single() -> Group:
    from ..distributed import Group

    return Group()


def _align_targets(run: Run) -> None:
    """A per-image ``target`` list given for every input, the unreadable ones included, kept
    for the images that were read (:func:`netlens.targets.align_targets`), for built-in and
    plugin analyzers alike."""
    if run.images is None or run.options.get("target") is None:
        return
    from ..targets import align_targets

    spec = run.options["target"]
    aligned = align_targets(spec, run.images, run.lens.classes or [])
    if aligned is not spec:
        run.options = Options({**run.options, "target": aligned})


def _learn_output(run: Run) -> None:
    """Tell how the model's output reads (:meth:`Lens.learn_output`) before ``compute`` sets
    any hook: from the first image, else the model's example input, else the data's first
    item; an analyzer that runs no model (kernels) needs none."""
    import torch

    lens = run.lens
    if run.images is not None:
        lens.learn_output(run.images.tensor[:1])
        return
    if run.data is None:
        return
    try:
        example = lens.example()
    except Exception:  # noqa: BLE001 - no known input size: the data's first item
        try:
            example = torch.as_tensor(run.data.dataset[0][0])[None]
        except Exception:  # noqa: BLE001 - unreadable: told at the first forward instead
            return
    lens.learn_output(example)


@contextmanager
def _refusing_inference_weights(model: Any) -> Iterator[None]:
    """Autograd's error on weights made under ``torch.inference_mode()`` as one line."""
    from ..model_checks import inference_refusal

    try:
        yield
    except Exception as exc:
        refusal = inference_refusal(model, exc)
        if refusal is None:
            raise
        raise refusal from exc
