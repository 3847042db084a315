"""What a report is asked to show: the model, the images it explains (at most ``max_images``
readable ones), the data its dataset sections read, and how to name them on a command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.items import item_source
from ..errors import NetlensError
from .repro import Invocation

if TYPE_CHECKING:
    from ..layers import LayerInfo
    from ..lens import Lens

__all__ = ["DATA_LIMITS", "EVAL_METRICS", "ReportInputs", "data_scope"]

DATA_LIMITS = {"stats": 512, "ablate": 512, "evaluate": 32}
EVAL_METRICS = ("pointing", "energy", "deletion", "insertion")  # ROAD is slow; ask for it


@dataclass
class ReportInputs:
    """What the report was asked to show, and how to name it on a command line."""

    lens: Lens
    images: Any = None
    data: Any = None
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradcam++", "scorecam"])
    limit: int | None = None
    max_images: int = 8
    seed: int = 0
    call: Invocation = field(default_factory=Invocation)
    progress: Any = None  # a netlens.progress.Progress, handed to every analyzer
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    target: str | None = None  # "output:0" once a regression model is met (cam, sanity)
    cam_methods: list[str] | None = None  # the methods the CAM section could run
    _layers: list[LayerInfo] | None = None
    _images: Any = None
    _cut: bool = False  # images were left out (a limit, or unreadable): name the files
    _bad: list[str] = field(default_factory=list)  # unreadable images, not told yet
    _data: Any = None

    def layers(self) -> list[LayerInfo]:
        """The layer table (one dry forward, made once); on the first image when the model
        records no input size (the size every analysis then takes from it)."""
        if self._layers is None:
            from ..layers import layer_table

            try:
                self._layers = self.lens.layers()
            except NetlensError:
                if self.images is None:
                    raise
                first = self.lens.batch(self.images, strict=self.strict).tensor[:1]
                self._layers = layer_table(self.lens.model, first)
        return self._layers

    def data_source(self) -> Any:
        """The data given, else the dataset the model card names; None when neither."""
        return self.data if self.data is not None else self.lens.default_data()

    def need_data(self) -> Any:
        data = self.data_source()
        if data is None:
            raise NetlensError("no data: this model's card names no dataset; give --data")
        return data

    def limit_for(self, section: str) -> int:
        return self.limit if self.limit is not None else DATA_LIMITS[section]

    def report_images(self) -> Any:
        """The images to explain: the given ones, the model's samples, or the data's first;
        at most ``max_images`` readable ones (an unreadable file does not count)."""
        if self._images is None:
            self._images = self._pick_images()
        return self._images

    def _pick_images(self) -> Any:
        n = self.max_images
        if self.images is not None:
            if hasattr(self.images, "dim"):
                return self.images[:n] if self.images.dim() == 4 else self.images
            return self._readable(_flat(self.images), n)
        if self.lens.samples:
            self._cut = len(self.lens.samples) > n
            return self.lens.samples[:n]
        data = self.data_source()
        if data is None:
            raise NetlensError("no images: give IMAGES, or --data to take the first images from")
        from ..data import as_dataset

        ds = as_dataset(data, self.lens.transform, host=self.lens.host, split="test")
        files = _files(ds)
        if files is not None:  # a folder or CSV list: its files, named on the command line
            self._cut = True
            return self._readable(files, n)
        import torch

        return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])

    def _readable(self, items: list[Any], n: int) -> list[Any]:
        """The first ``n`` items that can be read; the others are told once (skipped)."""
        from ..images import read_image

        out: list[Any] = []
        for item in items:
            if len(out) == n:
                self._cut = True
                break
            if isinstance(item, (str, Path)):
                try:
                    read_image(item)
                except NetlensError as exc:
                    if self.strict:
                        raise
                    self._bad.append(str(exc))
                    self._cut = True
                    continue
            out.append(item)
        if not out:
            raise NetlensError(self._bad[0] if self._bad else "no images given")
        return out

    def image_words(self) -> list[str]:
        """The explained images on a command line: as given, or each file when only some of
        them (or the data's first) were explained; [] for images held in memory."""
        picked = self.report_images()
        files = isinstance(picked, list) and all(isinstance(p, (str, Path)) for p in picked)
        if files and (self._cut or not self.call.images):
            if self.images is None and self.lens.samples and not self._cut:
                return []  # the model's own samples: the commands' default
            return [str(p) for p in picked]
        return list(self.call.images)

    def untold_bad(self) -> list[str]:
        """Unreadable images not yet shown on the page (each is shown once)."""
        bad, self._bad = self._bad, []
        return bad

    def dataset(self) -> Any:
        """The data as the analyzers see it (labels through the model's label map)."""
        if self._data is None:
            self._data = self.lens.dataset(self.need_data())
        return self._data


def _flat(images: Any) -> list[Any]:
    """A path, folder or list as a flat list of items (a folder's images, sorted)."""
    from ..images import list_images

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    flat: list[Any] = []
    for item in items:
        is_dir = isinstance(item, (str, Path)) and Path(item).is_dir()
        flat += list_images(item) if is_dir else [item]
    return flat


def _files(ds: Any) -> list[str] | None:
    """The image files of a folder or CSV dataset (never read), else None."""
    files = [item_source(ds, i) for i in range(len(ds))]
    return None if not files or None in files else files  # type: ignore[return-value]


def data_scope(ctx: ReportInputs, limit: int) -> tuple[str, list[str]]:
    """How much of the data a section used: "the first N of M images (K of C classes)" when
    the limit cuts it (as ``evaluate`` says it: :func:`~netlens.analyzers.evaluate_notes.
    data_scope`), and a note when classes are left out."""
    from ..analyzers.evaluate_notes import data_scope as scope_of

    try:
        ds = ctx.dataset()
        len(ds)
    except (NetlensError, TypeError):
        return "", []
    scope = scope_of(ds, limit)
    used, every, total = scope.get("classes"), scope.get("classes_total"), scope["images_total"]
    if used is None or used == every or limit >= total:
        return scope["text"], []
    note = (
        f"Only {used} of the data's {every} classes are in its first {limit} images (the "
        f"items are taken in order, and a folder is sorted by class): these numbers do not "
        f"cover the other classes. --limit {total} uses all of them."
    )
    return scope["text"], [note]
