"""The Analyzer and Result contracts every analyzer (built-in or plugin) follows."""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens

__all__ = ["Analyzer", "Result", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """numpy / torch / paths → plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist") and hasattr(obj, "dim"):  # a torch tensor
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@dataclass(frozen=True)
class Result:
    """What an analyzer returns: named arrays, a table (list of row dicts) and metadata.

    ``save(dir)`` writes ``<name>.png`` (when there is a figure), ``<name>.json`` (meta + table)
    and ``<name>.csv`` (the table); subclasses add arrays-to-picture logic by overriding
    ``figures``. In Jupyter the result shows itself inline (every image, paged; the table; a
    short header); ``repr()`` is a few lines of shapes (``netlens.render.display``).
    """

    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- rendering (override in subclasses) ------------------------------------------------
    def figures(self) -> dict[str, Figure]:
        """Figures to save, by file stem; the first one is the inline picture."""
        return {}

    def summary(self) -> dict[str, Any]:
        """The JSON summary: meta, the table and names of the arrays."""
        return to_jsonable({"analyzer": self.name, **self.meta, "table": self.table})

    # -- output ----------------------------------------------------------------------------
    def save(self, directory: str | Path, *, arrays: bool = False) -> list[Path]:
        """Write PNG figures, a JSON summary, a CSV table (and ``.npy`` arrays) to a folder."""
        from ..render.figures import save_figure

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = [save_figure(fig, out / f"{stem}.png") for stem, fig in self.figures().items()]
        if arrays:
            for key, arr in self.arrays.items():
                np.save(out / f"{self.name}-{key}.npy", arr)
                written.append(out / f"{self.name}-{key}.npy")
        if self.table:
            written.append(write_csv(self.table, out / f"{self.name}.csv"))
        summary = self.summary()
        summary["files"] = [str(p) for p in written]
        json_path = out / f"{self.name}.json"
        json_path.write_text(json.dumps(summary, indent=2))
        return [*written, json_path]

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


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write a list of row dicts as CSV (columns in first-seen order)."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in cols})
    return path


def _cell(v: Any) -> Any:
    v = to_jsonable(v)
    return json.dumps(v) if isinstance(v, (list, dict)) else v


class Analyzer(ABC):
    """Base for analyzers: give a ``name`` and a ``run`` method returning a :class:`Result`.

    ``run(lens, inputs=None, **options)``: ``inputs`` are images or data, as the analyzer
    documents; options are keyword arguments (strings from the CLI's ``--opt key=value`` are
    converted by the analyzer). Register with ``registry.add(name, AnalyzerInstance)`` from a
    ``netlens_register_analyzers`` hook.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @abstractmethod
    def run(self, lens: Lens, inputs: Any = None, **options: Any) -> Result:
        """Analyse ``inputs`` with ``lens`` and return a Result."""
