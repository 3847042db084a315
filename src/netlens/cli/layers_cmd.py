"""``netlens layers``: the layer table of a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import ArchOpt, JsonOpt, ModelArg, NumClassesOpt, TrustOpt, cli_errors, emit_json

if TYPE_CHECKING:
    from ..layers import LayerInfo


@cli_errors
def layers(
    model: ModelArg = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    json: JsonOpt = False,
) -> None:
    """List every layer: name, type, output shape, calls per forward, parameters.

    A module that runs more than once (calls > 1) is selected per call with NAME@K (K from 0,
    -1 for the last call), e.g. --layer act@1.
    """
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from .common import console, open_lens

    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device="cpu")
    rows = lens.layers()
    if json:
        emit_json({"model": lens.name, "layers": [r.to_dict() for r in rows]})
        return
    table = Table(title=f"{lens.name} ({type(lens.model).__name__})")
    for col in ("name", "type", "output shape", "calls", "params", "trainable"):
        right = col in ("calls", "params", "trainable")
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        table.add_row(r.name, r.type, _shapes(r), str(r.calls), f"{r.params:,}", f"{r.trainable:,}")
    # at its natural width, never cut: the names are what --layer takes
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    wide = Console(stderr=True, highlight=False, width=max(console.width, natural))
    wide.print(table, crop=False)


def _shapes(row: LayerInfo) -> str:
    """The output shape; one per call (``a / b``) when the calls differ."""
    shapes = [s for s in row.call_shapes if s]
    distinct = list(dict.fromkeys(shapes))
    if len(distinct) <= 1:
        return "×".join(map(str, distinct[0])) if distinct else "-"
    text = " / ".join("×".join(map(str, s)) for s in shapes[:3])
    return text + (" / …" if len(shapes) > 3 else "")
