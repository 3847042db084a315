"""``netlens layers``: the layer table of a model."""

from __future__ import annotations

from .common import ArchOpt, JsonOpt, ModelArg, NumClassesOpt, TrustOpt, cli_errors, emit_json


@cli_errors
def layers(
    model: ModelArg = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    json: JsonOpt = False,
) -> None:
    """List every layer: name, type, output shape, parameters (selectors for --layer)."""
    from rich.table import Table

    from .common import console, open_lens

    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device="cpu")
    rows = lens.layers()
    if json:
        emit_json({"model": lens.name, "layers": [r.to_dict() for r in rows]})
        return
    table = Table(title=f"{lens.name} ({type(lens.model).__name__})")
    for col in ("name", "type", "output shape", "params", "trainable"):
        table.add_column(col, justify="right" if col in ("params", "trainable") else "left")
    for r in rows:
        shape = "×".join(map(str, r.output_shape)) if r.output_shape else "-"
        table.add_row(r.name, r.type, shape, f"{r.params:,}", f"{r.trainable:,}")
    console.print(table)
