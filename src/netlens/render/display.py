"""Rich display of Results: an HTML card with embedded PNGs, one PNG, a short text repr.

Pure functions (a Result in, a string or bytes out); the hooks on ``Result`` delegate here.
What "every image of a batch" means depends on the result:

- a CAM result: one card per image (the image, an overlay per explained class with its
  probability, the top predictions), paged by images;
- any other result: its figures (``Result.figures()``), paged by figures.

Pages hold :data:`PER_PAGE` items; the card says how many there are and how to see the rest
(``res.show(page=2)``, ``res.figure(i)``). Tables become HTML tables (the first
:data:`TABLE_ROWS` rows, with a count of the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NetlensError
from .cam_display import cam_grid_figure, cam_rows, colour_legend, is_cam
from .png import png_uri, png_width, stack_pngs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..analyzers.base import Result

__all__ = [
    "PER_PAGE",
    "Page",
    "ResultPage",
    "bundle",
    "card_view",
    "header",
    "inline_figure",
    "nth_figure",
    "result_html",
    "result_png",
    "show",
    "table_view",
    "text_repr",
]

PER_PAGE = 12
TABLE_ROWS = 20


# -- pages ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    """Page ``number`` (1-based) of ``total`` items, ``per_page`` at a time."""

    number: int
    per_page: int
    total: int

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def start(self) -> int:
        return (self.number - 1) * self.per_page

    @property
    def stop(self) -> int:
        return min(self.total, self.start + self.per_page)

    def check(self) -> Page:
        """Itself, or one line saying which pages exist."""
        if self.per_page < 1:
            raise NetlensError(f"per_page must be at least 1, got {self.per_page}")
        if not 1 <= self.number <= self.count:
            raise NetlensError(
                f"page {self.number} does not exist: {self.total} items make "
                f"{self.count} page(s) of {self.per_page}"
            )
        return self

    def note(self, what: str) -> str:
        """How many items there are and, when paged, how to see the others."""
        if self.total <= self.per_page:
            return f"{self.total} {what.removesuffix('s') if self.total == 1 else what}"
        text = f"showing {what} {self.start + 1}–{self.stop} of {self.total}"
        if self.number < self.count:
            text += f"; res.show(page={self.number + 1}) shows the next {self.per_page}"
        return text + "; res.figure(i) shows any one"


class ResultPage:
    """One page of a Result, displayable in Jupyter (what ``res.show(page=n)`` displays)."""

    def __init__(self, result: Result, page: int = 1, per_page: int = PER_PAGE) -> None:
        self.result, self.page, self.per_page = result, page, per_page

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return bundle(self.result, self.page, self.per_page)

    def __repr__(self) -> str:
        return text_repr(self.result)


# -- text ----------------------------------------------------------------------------------------
def text_repr(result: Result, width: int = 100) -> str:
    """A few lines: what the result is, its verdicts and warnings (as the CLI and the notebook
    view say them), the shapes of its arrays (never their contents)."""
    head = " · ".join(f"{k} {v}" for k, v in header(result))
    arrays = [
        f"{k} {_dtype(a)}[{'×'.join(map(str, np.shape(a)))}]" for k, a in result.arrays.items()
    ]
    keys = list(result.meta)
    lines = [
        f"{type(result).__name__}({result.name}){': ' + head if head else ''}",
        *(f"  {line}" for line in [*_verdicts(result.meta), *noted(result.meta)]),
        "  arrays: " + (_fit(arrays, width - 10, "res.arrays") or "none"),
        f"  table: {len(result.table)} rows · meta: " + (_fit(keys, width - 30, "res.meta") or "–"),
        "  res.show() · res.figure(i) · res.save(dir) · res.summary()",
    ]
    return "\n".join(lines)


def _verdicts(meta: dict[str, Any]) -> list[str]:
    """``METHOD: verdict`` per method of a result with verdicts (sanity's)."""
    verdicts = meta.get("verdicts")
    if not isinstance(verdicts, dict):
        return []
    return [
        f"{m}: {v['verdict']}"
        for m, v in verdicts.items()
        if isinstance(v, dict) and v.get("verdict")
    ]


def _dtype(a: Any) -> str:
    return str(getattr(a, "dtype", type(a).__name__))


def _fit(items: list[str], width: int, where: str) -> str:
    """Whole items joined up to ``width`` characters, then a count of the rest."""
    out: list[str] = []
    for item in items:
        if out and len(", ".join([*out, item])) > width:
            return ", ".join(out) + f", … {len(items) - len(out)} more ({where})"
        out.append(item)
    return ", ".join(out)


def header(result: Result) -> list[tuple[str, str]]:
    """(label, value) pairs for the card's header: model, method, layer, images, targets, time."""
    meta = result.meta
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}

    def first(*keys: str) -> Any:
        for key in keys:
            value = meta.get(key)
            if value not in (None, "", [], {}):
                return value
        return None

    items = [
        ("model", first("model") or (run.get("model") or {}).get("name")),
        ("method", first("method", "methods")),
        ("layer", first("layer", "layers")),
        ("images", _count(first("images"))),
        ("samples", first("samples")),
        ("data", first("data") or (run.get("data") or {}).get("source")),
        ("targets", _targets(result)),
        ("time", _seconds(first("seconds") or run.get("seconds"))),
    ]
    return [(k, _text(v)) for k, v in items if v is not None]


def _count(images: Any) -> Any:
    return len(images) if isinstance(images, (list, tuple)) else images


def _targets(result: Result) -> str | None:
    meta = result.meta
    if "targets" not in result.arrays or "probs" not in result.arrays:
        return None
    if meta.get("top"):
        return f"top {meta['top']} classes"
    if not meta.get("explicit_target"):
        return "predicted class"
    names = meta.get("target_names")
    if names:
        return _fit(list(dict.fromkeys(str(n) for row in names for n in row)), 60, "res.targets")
    classes = meta.get("classes") or []
    seen = dict.fromkeys(int(t) for t in np.ravel(result.arrays["targets"]))
    return _fit(
        [str(classes[t]) if 0 <= t < len(classes) else str(t) for t in seen], 60, "res.targets"
    )


def _seconds(value: Any) -> Any:
    if not isinstance(value, (int, float)):
        return value
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


# -- HTML and PNG --------------------------------------------------------------------------------
def result_html(result: Result, page: int = 1, per_page: int = PER_PAGE) -> str:
    """The result as an HTML card: header, notes, page of images, table."""
    return bundle(result, page, per_page, png=False)["text/html"]


def result_png(result: Result, page: int = 1, per_page: int = PER_PAGE) -> bytes | None:
    """One PNG with every image of the page (for front-ends that show no HTML)."""
    return bundle(result, page, per_page, html=False).get("image/png")


def bundle(
    result: Result, page: int = 1, per_page: int = PER_PAGE, *, html: bool = True, png: bool = True
) -> dict[str, Any]:
    """Jupyter's mime bundle (text/plain, text/html, image/png), each picture drawn once."""
    out: dict[str, Any] = {"text/plain": text_repr(result)}
    view, pictures = card_view(result, page, per_page, cam_html=html)
    if png and is_cam(result) and pictures:
        from .figures import figure_png

        out["image/png"] = figure_png(cam_grid_figure(result, pictures))
    elif png and pictures:
        out["image/png"] = stack_pngs(pictures)
    if html:
        from ..report.templating import render

        out["text/html"] = render("result.html.j2", v=view)
    return out


def card_view(
    result: Result,
    page: int = 1,
    per_page: int = PER_PAGE,
    *,
    table_rows: int = TABLE_ROWS,
    cam_html: bool = True,
) -> tuple[dict[str, Any], list[Any]]:
    """The card template's view of one page of ``result``, and the page's pictures (the image
    indices of a CAM result, else the figures' PNG bytes)."""
    if is_cam(result):
        pg = Page(page, per_page, len(result.names)).check()
        indices = list(range(pg.start, pg.stop))
        view = _view(result, pg.note("images"), table_rows)
        if cam_html:
            view["cam"] = {
                "legend": colour_legend(),
                "values": result.meta.get("task") == "regression",
                "rows": cam_rows(result, indices),
            }
        return view, indices
    from .figures import figure_png

    figs = list(result.figures().items())
    pg = Page(page, per_page, len(figs)).check()
    pngs = [(stem, figure_png(fig)) for stem, fig in figs[pg.start : pg.stop]]
    view = _view(result, pg.note("figures") if len(figs) > 1 else "", table_rows)
    view["figures"] = [{"uri": png_uri(p), "stem": s, "width": png_width(p)} for s, p in pngs]
    return view, [p for _, p in pngs]


_NOTED = (
    ("warnings", "warning"),
    ("skipped", "skipped"),
    ("skipped_units", "not ablated (identity cannot skip a unit that changes the shape)"),
)


def noted(meta: dict[str, Any]) -> list[str]:
    """A result's warnings and skipped items, a line each kind (three at most, then a count)."""
    notes = []
    for key, label in _NOTED:
        lines = meta.get(key)
        if isinstance(lines, list) and lines:
            shown = "; ".join(str(x) for x in lines[:3])
            more = f" (… {len(lines) - 3} more in res.meta['{key}'])" if len(lines) > 3 else ""
            notes.append(f"{label}: {shown}{more}")
    return notes


def _view(result: Result, page_note: str, table_rows: int) -> dict[str, Any]:
    """The template's view of a result, before its pictures."""
    meta = result.meta
    notes: list[str] = _verdicts(meta)
    if meta.get("shown") is not None and meta.get("total") and meta["shown"] < meta["total"]:
        notes.append(f"{meta['shown']} of {meta['total']} filters drawn (max_filters)")
    notes += noted(meta)
    return {
        "kind": f"{type(result).__name__}({result.name})",
        "header": header(result),
        "notes": notes,
        "cam": None,
        "figures": [],
        "page_note": page_note,
        "table": table_view(result.table, table_rows, "res.table"),
    }


def table_view(rows: list[dict[str, Any]], max_rows: int, where: str) -> dict[str, Any] | None:
    """Columns (in first-seen order) and formatted cells of the first ``max_rows`` rows."""
    from ..report.templating import cell

    if not rows or max_rows < 1:
        return None
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    body = [
        [{"text": cell(r.get(c)), "num": _is_number(r.get(c))} for c in columns]
        for r in rows[:max_rows]
    ]
    more = max(0, len(rows) - max_rows)
    return {"columns": columns, "rows": body, "more": more, "total": len(rows), "where": where}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


# -- figures and show ----------------------------------------------------------------------------
class _PngOf:
    """``figure._repr_png_``: Jupyter shows the figure without ``%matplotlib inline``."""

    def __init__(self, fig: Figure) -> None:
        self.fig = fig

    def __call__(self) -> bytes:
        from .figures import figure_png

        return figure_png(self.fig)


def inline_figure(fig: Figure) -> Figure:
    """The same Figure, made to display inline in Jupyter.

    netlens draws with matplotlib's object API and never imports pyplot, so the inline backend
    is not active and Jupyter would print ``<Figure size ...>``; a ``_repr_png_`` on the
    instance makes it draw itself (where the inline backend *is* active, it takes precedence).
    """
    if not callable(getattr(fig, "_repr_png_", None)):
        fig._repr_png_ = _PngOf(fig)  # type: ignore[attr-defined]
    return fig


def nth_figure(result: Result, i: int) -> Figure:
    """Figure ``i`` of ``result.figures()``, displayable inline; a bad index is one line."""
    figs = list(result.figures().values())
    if not -len(figs) <= i < len(figs):
        raise NetlensError(
            f"figure {i} does not exist: this {result.name} result has {len(figs)} figure(s)"
            + (f" (0..{len(figs) - 1})" if figs else "")
        )
    return inline_figure(figs[i])


def show(
    result: Result, page: int = 1, per_page: int = PER_PAGE, out: str | Path | None = None
) -> list[Path] | None:
    """In Jupyter: display a page of the result. Elsewhere: save it to ``out`` (default
    ``netlens-out/``, like every command's ``--out``) and print where its files are."""
    from ..progress import in_notebook

    if in_notebook():
        from IPython.display import display

        display(ResultPage(result, page, per_page))
        return None
    folder = Path(out) if out is not None else Path("netlens-out")
    paths = result.save(folder)
    pictures = [p for p in paths if p.suffix == ".png"]
    print(f"{result.name}: wrote {len(paths)} files to {folder}/")
    per_page = max(1, int(per_page))
    pages = max(1, -(-len(pictures) // per_page))
    page = min(max(1, int(page)), pages)  # the page's pictures, as Jupyter pages its images
    shown = pictures[(page - 1) * per_page : page * per_page]
    if pages > 1:
        print(
            f"  pictures {(page - 1) * per_page + 1}–{(page - 1) * per_page + len(shown)} of "
            f"{len(pictures)} (page {page} of {pages}; show(page=K) for another):"
        )
    for p in shown:
        print(f"  {p}")
    return paths
