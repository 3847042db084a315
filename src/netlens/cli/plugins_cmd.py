"""``netlens plugins``: what is registered, by which package, and what failed to load."""

from __future__ import annotations

from .common import JsonOpt, cli_errors, emit_json


@cli_errors
def plugins(json: JsonOpt = False) -> None:
    """List plugins, their analyzers, CAM methods, loaders and archs, and load problems."""
    from rich.table import Table

    from ..plugins.manager import PluginHost
    from .common import console

    host = PluginHost()
    kinds = {
        "analyzer": host.analyzers, "cam-method": host.cam_methods, "arch": host.archs,
        "dataset": host.datasets, "metric": host.metrics,
    }
    rows = [
        {"kind": kind, "name": e.name, "plugin": e.plugin, "package": e.package,
         "version": e.version, "description": e.description}
        for kind, reg in kinds.items() for e in reg.entries.values()
    ]
    plugins_ = [vars(p) for p in host.plugins.values()]
    if json:
        emit_json({"plugins": plugins_, "registered": rows, "problems": host.problems})
        return
    table = Table(title="netlens plugins")
    for col in ("kind", "name", "package", "version", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["package"], r["version"], r["description"][:60])
    console.print(table)
    for p in host.problems:
        console.print(f"[yellow]skipped:[/yellow] {p}")
