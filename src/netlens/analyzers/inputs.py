"""What an analyzer runs on, resolved once by the template: images or a dataset.

Both follow one policy for bad items: an image that cannot be read is skipped and recorded
(``skipped``: one line each, ``"<item>: <reason>"``), the run goes on, and the edges report them
(the CLI prints them at the end and exits with status 3 unless ``--skip-bad``); ``strict=True``
stops at the first. Called without inputs, image analyzers use the model's sample images (else
the first images of the dataset the model was trained on) and dataset analyzers use that dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)
from torch.utils.data._utils.collate import default_collate

from ..data.items import BAD_ITEM, as_pair, hub_rows, item_name
from ..errors import DataError

if TYPE_CHECKING:
    from ..distributed import Group
    from ..images import Batch
    from ..lens import Lens

__all__ = ["Data", "resolve_data", "resolve_images"]


def resolve_images(lens: Lens, inputs: Any, *, strict: bool = False) -> Batch:
    """The images as one preprocessed :class:`~netlens.images.Batch` (see the module doc)."""
    if isinstance(inputs, (DataLoader, Dataset)):  # a DataLoader iterates as batches, not images
        from ..errors import ImageError

        raise ImageError(
            f"cannot read images from a {type(inputs).__name__}; this takes images: pass paths, "
            "arrays or an image tensor (e.g. one batch: x, y = next(iter(loader)))"
        )
    return lens.batch(inputs, strict=strict)


@dataclass
class Data:
    """A dataset to stream, with where it came from and how its labels were read.

    Attributes:
        dataset: yields ``(image tensor, label)``.
        source: a short description (``"dataset shapes (test split)"``, ``"folder val"``).
        label_source: how labels map to the model's classes, when the dataset says.
        skipped: bad items met so far (filled while batches are drawn).
        loader_given: the user passed a DataLoader: its batching is used as is.
        group: the processes of a distributed run; each streams its share (see ``loader``).
        dtype: floating images come in this dtype (the model's: a half-precision model gets half).
    """

    dataset: Dataset
    source: str
    label_source: str | None = None
    skipped: dict[int, str] = field(default_factory=dict)
    strict: bool = False
    loader_given: DataLoader | None = None
    group: Group | None = None
    dtype: torch.dtype | None = None
    agreed: bool = False  # the processes have agreed whether any could read an item
    _order: list[list[int]] | None = field(default=None, repr=False)  # a given loader's batches

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def classes(self) -> list[str] | None:
        return getattr(self.dataset, "classes", None) or getattr(
            getattr(self.dataset, "dataset", None), "classes", None
        )

    def loader(self, batch_size: int, *, with_index: bool = False, whole: bool = False) -> Batches:
        """Batches ``(x, y)`` in a fixed order; bad items skipped and recorded.

        ``with_index``: batches are ``(x, y, index)``, ``index`` the dataset positions (they
        skip what was skipped). In a distributed run each process gets its contiguous share of
        the batches (:meth:`~netlens.distributed.Group.share`): every item once, in the very
        batches one process would form, so per-batch results match bit for bit. ``whole``:
        all the batches, in any run.
        """
        group = self.group if self.group is not None and not whole else None
        if self.loader_given is not None:
            given = self.loader_given
            _refuse_shuffled(given)
            relabel = getattr(self.dataset, "relabel", None)  # labels by the model's names
            shared = group is not None and group.world > 1
            if shared and not _indexable(given):  # each process would stream all of it
                raise DataError(
                    "a DataLoader over a stream (an IterableDataset, or one without batch_size) "
                    "cannot be split between processes: each would read all of it. Pass a "
                    "map-style Dataset (__getitem__ and __len__) or a DataLoader over one, or "
                    "run in one process"
                )
            bs = given.batch_sampler  # batch_sampler=: torch's sampler is a default sequential one
            in_order = (
                isinstance(bs, BatchSampler)
                and isinstance(bs.sampler, SequentialSampler)
                and not shared
            )
            if self._order is None and _indexable(given) and not in_order:
                # drawn once: a sampler's order (a Subset's, a custom list's) is the images'
                # dataset positions, which results name and re-read, the same in every pass
                self._order = [[int(i) for i in b] for b in given.batch_sampler]  # type: ignore[union-attr]
            if self._order is None or in_order:
                return Batches(
                    given,
                    given.batch_size or 1,
                    with_index,
                    dtype=self.dtype,
                    relabel=relabel,
                    dataset=self.dataset,
                )
            batches = _batches_of(given, self._order, group, with_index, self.dtype, relabel)
            batches.dataset = self.dataset  # re-read (top images) as netlens reads its items
            return batches
        n = len(self.dataset)
        spans = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        mine = group.part(len(spans)) if group is not None else range(len(spans))
        loader = DataLoader(
            _Guarded(self.dataset, self),
            batch_sampler=spans[mine.start : mine.stop],
            collate_fn=_collate,
        )
        return Batches(
            loader,
            batch_size,
            with_index,
            indexed=True,
            first=mine.start,
            dtype=self.dtype,
            group=group if group is not None and group.world > 1 else None,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able: source, label source, size, skipped count (for the run header)."""
        return {
            "source": self.source,
            "label_source": self.label_source,
            "items": len(self),
            "skipped": len(self.skipped),
        }

    def skipped_lines(self) -> list[str]:
        return [self.skipped[k] for k in sorted(self.skipped)]


class Batches:
    """A re-iterable of ``(x, y)`` batches that leaves out batches with no readable item.

    ``start``: the stream position of the first item (a share of a user's DataLoader);
    ``first``: the number of the first batch in the whole data (a share's offset), for work
    seeded per batch. ``group``: this is a share of a distributed run, which may draw nothing
    (its items all unreadable) while other shares draw: the processes agree at the end of the
    first pass, and only when none drew anything is the data refused.
    """

    def __init__(
        self,
        loader: DataLoader,
        batch_size: int,
        with_index: bool,
        indexed: bool = False,
        start: int = 0,
        first: int = 0,
        dtype: torch.dtype | None = None,
        relabel: Callable[[Any], torch.Tensor] | None = None,
        positions: list[list[int]] | None = None,
        group: Group | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        self.loader, self.batch_size, self.dtype = loader, batch_size, dtype
        self.with_index, self.indexed, self.start, self.first = with_index, indexed, start, first
        # the items by position as netlens reads them (``(image tensor, label)``), for results
        # that re-read an image: a user's DataLoader's dataset as netlens resolved it
        self.dataset = (
            dataset if dataset is not None else getattr(loader.dataset, "inner", loader.dataset)
        )
        self.relabel, self.positions, self.group = relabel, positions, group

    def __iter__(self) -> Iterator[Any]:
        drawn = False
        for b in self._read():
            drawn = True
            yield b
        guard = self.loader.dataset
        if not isinstance(guard, _Guarded):  # a user's loader: its items are not guarded
            return
        data = guard.data  # the guard's record of bad items
        if self.group is not None and self.group.store is not None:  # a share of a joined
            # run (not a plan of shares made without one): whether any process drew, asked once
            if data.agreed:
                return
            data.agreed = True
            parts = self.group.gather((drawn, len(data.skipped), data.skipped_lines()[:1]))
            drawn = any(p[0] for p in parts)
            count, lines = sum(p[1] for p in parts), [x for p in parts for x in p[2]]
        else:
            count, lines = len(data.skipped), data.skipped_lines()
        if not drawn and count:
            raise DataError(f"none of the {count} images could be read ({lines[0]})")

    def peek(self) -> Any:
        """The first batch that has a readable item (None: none has); reads no further."""
        return next(self._read(), None)

    def _read(self) -> Iterator[Any]:
        start = self.start
        for k, b in enumerate(_drawn(self.loader)):
            if b is None:
                continue
            b = as_pair(b)  # a batch collated from dict items: {"pixel_values": ..., ...}
            if isinstance(b, torch.Tensor):  # bare images, no labels: N×C×H×W, not (x, y)
                b = (b, torch.full((len(b),), -1, dtype=torch.long))
            x, y, idx = b if self.indexed else (b[0], b[1], None)
            if idx is None and self.positions is not None:
                idx = torch.tensor(self.positions[k], dtype=torch.long)
            if idx is None:
                idx = torch.arange(start, start + len(x))
                start += len(x)
            if self.dtype is not None and x.is_floating_point() and x.dtype != self.dtype:
                x = x.to(self.dtype)
            if self.relabel is not None:
                y = self.relabel(y)
            yield (x, y, idx) if self.with_index else (x, y)

    def __len__(self) -> int:
        return len(self.loader)


def _drawn(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches; a user's loader that cannot batch its items (PIL images: an
    ``ImageFolder`` without a transform) is one line saying what to pass instead."""
    batches = iter(loader)
    while True:
        try:
            b = next(batches)
        except StopIteration:
            return
        except TypeError as exc:
            if "collate" not in str(exc):
                raise
            raise DataError(
                "the DataLoader cannot batch its Dataset's items (PIL images or arrays of "
                "different sizes?): pass the Dataset itself, which netlens preprocesses as the "
                "model's images, or give it the model's transform (lens.transform)"
            ) from None
        yield b


def _refuse_shuffled(given: DataLoader) -> None:
    if isinstance(given.sampler, RandomSampler):
        raise DataError(
            "the DataLoader shuffles; pass one with shuffle=False so every pass sees "
            "the same images in the same order"
        )


def _indexable(given: DataLoader) -> bool:
    """Whether a user's DataLoader draws positions of a map-style dataset (not a stream)."""
    stream = isinstance(given.dataset, IterableDataset) or getattr(given, "netlens_stream", False)
    return given.batch_sampler is not None and not stream


def _batches_of(
    given: DataLoader,
    order: list[list[int]],
    group: Group | None,
    with_index: bool,
    dtype: torch.dtype | None,
    relabel: Callable[[Any], torch.Tensor] | None,
) -> Batches:
    """A user's DataLoader's batches, ``order`` (its dataset positions), as it forms them
    (its collate function and workers); in a distributed run, this process's share."""
    part = group.part(len(order)) if group is not None else range(len(order))
    mine = order[part.start : part.stop]
    loader = DataLoader(
        given.dataset,
        batch_sampler=mine,
        collate_fn=given.collate_fn,
        num_workers=given.num_workers,
        pin_memory=given.pin_memory,
        worker_init_fn=given.worker_init_fn,
        multiprocessing_context=given.multiprocessing_context,
        timeout=given.timeout,
    )
    return Batches(
        loader,
        given.batch_size or 1,
        with_index,
        first=part.start,
        dtype=dtype,
        relabel=relabel,
        positions=mine,
    )


class _Guarded(Dataset):
    """Returns None (and records why) for an item that cannot be read."""

    def __init__(self, inner: Dataset, data: Data) -> None:
        self.inner, self.data = inner, data

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        try:
            x, y = self.inner[i][:2]
            return x, y, i
        except BAD_ITEM as exc:
            if self.data.strict:
                raise
            name, said = item_name(self.inner, i), str(exc)
            self.data.skipped[i] = said if name in said else f"{name}: {said}"  # named once
            return None


def _collate(batch: list[Any]) -> Any:
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


def resolve_data(
    lens: Lens,
    inputs: Any,
    *,
    what: str,
    limit: int | None = None,
    strict: bool = False,
    split: str = "test",
) -> Data:
    """The data an analyzer streams: ``inputs``, else the model's own dataset.

    Args:
        lens: the model (its preprocessing, class names and card).
        inputs: a folder, a ``.csv`` list, a dataset name, a Dataset, a DataLoader or an
            ``(images, labels)`` pair; None: the dataset on the model's card.
        what: the analyzer's name, for the message when there is no data at all.
        limit: use the first ``limit`` items.
        strict: stop at the first unreadable item instead of skipping it.
    """
    source = _describe(inputs)
    if inputs is None:
        inputs = lens.default_data()
        if inputs is None:
            raise DataError(
                f"{what} needs data: give --data (a folder with class subfolders, a .csv list "
                "or a dataset name such as shapes) or data= in Python"
            )
        said = inputs if isinstance(inputs, Dataset) else f"dataset {inputs}"
        source = f"{said} (from the model card)"
    given = inputs if isinstance(inputs, DataLoader) else None
    if given is not None:
        _refuse_shuffled(given)
        if given.batch_sampler is None and not isinstance(given.dataset, IterableDataset):
            raise DataError(
                "the DataLoader has batch_size=None, so it yields single items, not batches: "
                "give it a batch_size, or pass its Dataset itself"
            )
    if given is None:
        ds = lens.dataset(inputs, split=split)
    elif isinstance(given.dataset, Dataset) or hub_rows(given.dataset) is not None:
        ds = lens.dataset(given.dataset, split=split)  # matched by class names; relabelled as drawn
        if isinstance(given.dataset, IterableDataset) and given.batch_size is not None:
            # a stream: drawn as netlens reads it (once, its peeked items kept), in its batches
            one = {"num_workers": 0, "multiprocessing_context": None, "timeout": 0}
            kw = {**_loader_options(given), **one, "worker_init_fn": None}
            given = DataLoader(ds, batch_size=given.batch_size, drop_last=given.drop_last, **kw)
            given.netlens_stream = True  # still a stream: no process can draw a share of it
        elif ds is not given.dataset and type(ds) is type(given.dataset):
            given = _over(given, ds)  # one of netlens' own, remade for the model: draw that
        elif getattr(ds, "per_part", False):  # a ConcatDataset, each part relabelled its way
            if given.collate_fn is not default_collate:
                raise DataError(
                    "a DataLoader with its own collate_fn over a ConcatDataset of parts with "
                    "their own class names cannot be relabelled batch by batch: pass the "
                    "ConcatDataset itself"
                )
            given = _over(given, ds)
    else:  # a loader over a plain list of pairs
        ds = given.dataset
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:  # a stream (an IterableDataset without __len__)
        raise DataError(
            f"the data for {what} has no length ({type(ds).__name__} is a stream without "
            "__len__): give it __len__ (its number of images) or pass a map-style Dataset "
            "(__getitem__ and __len__)"
        ) from None
    if limit is not None and given is not None and _indexable(given):
        given = _first_drawn(given, int(limit))  # the first items the loader draws, its way
        n = min(n, sum(len(b) for b in given.batch_sampler))  # type: ignore[union-attr]
    elif limit is not None and limit < n:
        given = None  # a cut stream: its first items, in our batches
        ds = first_items(ds, int(limit))
        n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"the data for {what} is empty ({source})")
    label_source = getattr(ds, "label_source", None) or getattr(
        getattr(ds, "dataset", None), "label_source", None
    )
    return Data(ds, source, label_source, strict=strict, loader_given=given, dtype=lens.dtype)


def _first_drawn(given: DataLoader, limit: int) -> DataLoader:
    """The user's DataLoader cut to the first ``limit`` items it draws (its sampler's or batch
    sampler's order), in its batches, with its collate function."""
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    cut: list[list[int]] = []
    for b in given.batch_sampler:  # type: ignore[union-attr]
        cut.append([int(i) for i in b][: limit - sum(len(c) for c in cut)])
        if sum(len(c) for c in cut) >= limit:
            break
    return DataLoader(given.dataset, batch_sampler=cut, **_loader_options(given))


def _loader_options(given: DataLoader) -> dict[str, Any]:
    """A user's DataLoader's options other than its batching."""
    return {
        "collate_fn": given.collate_fn,
        "num_workers": given.num_workers,
        "pin_memory": given.pin_memory,
        "worker_init_fn": given.worker_init_fn,
        "multiprocessing_context": given.multiprocessing_context,
        "timeout": given.timeout,
    }


def _over(given: DataLoader, ds: Dataset) -> DataLoader:
    """The user's DataLoader drawing from ``ds`` (the same items, remade with the model's
    preprocessing and class numbering) with its own batching, sampler and collate function."""
    kw = _loader_options(given)
    if given.batch_size is None:  # a batch sampler of the user's
        return DataLoader(ds, batch_sampler=given.batch_sampler, **kw)
    return DataLoader(
        ds, batch_size=given.batch_size, sampler=given.sampler, drop_last=given.drop_last, **kw
    )


def first_items(ds: Dataset, limit: int) -> Dataset:
    """The first ``limit`` items of ``ds``, keeping its classes, label source and masks."""
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    if limit >= len(ds):  # type: ignore[arg-type]
        return ds
    sub = Subset(ds, range(limit))
    for attr in ("classes", "label_source", "masks"):
        if hasattr(ds, attr):
            setattr(sub, attr, getattr(ds, attr))
    if hasattr(ds, "mask"):
        sub.mask = ds.mask  # type: ignore[attr-defined]
    if hasattr(ds, "image"):
        sub.image = ds.image  # type: ignore[attr-defined]
    return sub


def _describe(inputs: Any) -> str:
    from pathlib import Path

    if inputs is None:
        return ""
    if isinstance(inputs, (str, Path)):
        p = Path(inputs)
        if p.is_dir():
            return f"folder {p}"
        if p.suffix.lower() == ".csv":
            return f"CSV list {p}"
        return f"dataset {inputs}"
    if isinstance(inputs, tuple):
        return f"{len(inputs[0])} tensors with labels"
    return type(inputs).__name__


def first_tensor(batch: Any) -> torch.Tensor:
    """The image tensor of a batch that is ``x`` or ``(x, y, ...)``."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch
