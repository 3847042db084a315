"""``netlens layers``: the layer table of a model (on stdout: `netlens layers | grep Conv2d`)."""

from __future__ import annotations

from typing import Any

from .common import cli_errors, emit_json
from .options import Common, ModelArg, command


@cli_errors
@command()
def layers(model: ModelArg = None, *, common: Common) -> None:
    """List every layer: name, type, output shape, parameters (selectors for --layer)."""
    from .runner import open_lens, out, set_threads

    set_threads(common.threads)
    if common.device is None:
        common.device = "cpu"
    lens = open_lens(model, common)
    rows = lens.layers()
    if common.json:
        emit_json({"model": lens.name, "layers": [r.to_dict() for r in rows]})
        return
    out.print(_table(lens, rows))


def _table(lens: Any, rows: list[Any]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=f"{lens.name} ({type(lens.model).__name__})", box=box.SIMPLE)
    widest = max((len(r.name) for r in rows), default=4)
    table.add_column("name", no_wrap=True, min_width=widest)
    table.add_column("type", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    for col in ("params", "trainable"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        shape = "×".join(map(str, r.output_shape)) if r.output_shape else "-"
        table.add_row(r.name, r.type, shape, f"{r.params:,}", f"{r.trainable:,}")
    return table
