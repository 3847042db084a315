"""``netlens layers``: the layer table of a model (on stdout: `netlens layers | grep Conv2d`)."""

from __future__ import annotations

from typing import Any

from .common import cli_errors, emit_json
from .options import Common, ModelArg, command


@cli_errors
@command(distributed=False)
def layers(model: ModelArg = None, *, common: Common) -> None:
    """List every layer: name, type, output shape, layout, calls per forward, parameters.

    The layout is how netlens reads a layer's channels: NCHW, NHWC (channels last: ConvNeXt
    MLPs, Swin stages), NLC (tokens) or NCL (a Conv1d's channels × length).

    The table is also written to --out (layers.json with the run header, layers.csv).

    The names are the selectors for --layer. A module that runs more than once per forward
    (calls > 1) is selected per call with NAME@K (K from 0, -1 for the last), e.g. act@1.
    """
    import time

    from ..analyzers.base import Result
    from ..output import folder_lock
    from ..provenance import now, stamped
    from .runner import err, open_lens, out, set_max_pixels, set_threads

    set_threads(common.threads)
    set_max_pixels(common.max_pixels)
    if common.device is None:
        common.device = "cpu"
    started, clock = now(), time.perf_counter()
    lens = open_lens(model, common)
    rows = lens.layers()
    result = Result("layers", table=[r.to_dict() for r in rows], meta={"model": lens.name})
    result = stamped(result, lens, started=started, clock=clock, options={})
    with folder_lock(common.out):
        files = result.save(common.out)
    if common.json:
        doc = {k: v for k, v in result.summary().items() if k != "table"}
        emit_json({**doc, "layers": result.table, "out": str(common.out)})
        return
    out.print(_table(lens, rows))
    err.print(f"layers: wrote {len(files)} files to {common.out}/", soft_wrap=True)


def _table(lens: Any, rows: list[Any]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=f"{lens.name} ({type(lens.model).__name__})", box=box.SIMPLE)
    widest = max((len(r.name) for r in rows), default=4)
    table.add_column("name", no_wrap=True, min_width=widest)
    table.add_column("type", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    table.add_column("layout", no_wrap=True)
    for col in ("calls", "params", "trainable"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        cells = (str(r.calls), f"{r.params:,}", f"{r.trainable:,}")
        table.add_row(r.name, r.type, _shapes(r), r.layout or "-", *cells)
    return table


def _shapes(row: Any) -> str:
    """The output shape; one per call (``a / b``) when the calls differ."""
    shapes = [s for s in row.call_shapes if s]
    distinct = list(dict.fromkeys(shapes))
    if len(distinct) <= 1:
        return "×".join(map(str, distinct[0])) if distinct else "-"
    text = " / ".join("×".join(map(str, s)) for s in shapes[:3])
    return text + (" / …" if len(shapes) > 3 else "")
