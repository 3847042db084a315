"""``netlens plugins``: what is registered, by which package, and what failed to load."""

from __future__ import annotations

from .common import JsonOpt, cli_errors, emit_json


@cli_errors
def plugins(json: JsonOpt = False) -> None:
    """List plugins, their analyzers, CAM methods, loaders and archs, and load problems."""
    from rich.markup import escape
    from rich.table import Table

    from ..plugins.manager import PluginHost
    from .common import console

    host = PluginHost()
    kinds = {
        "analyzer": host.analyzers,
        "cam-method": host.cam_methods,
        "arch": host.archs,
        "dataset": host.datasets,
        "metric": host.metrics,
    }
    rows = [
        {
            "kind": kind,
            "name": e.name,
            "plugin": e.plugin,
            "package": e.package,
            "version": e.version,
            "description": e.description,
        }
        for kind, reg in kinds.items()
        for e in reg.entries.values()
    ]
    plugins_ = [vars(p) for p in host.plugins.values()]
    if json:
        emit_json({"plugins": plugins_, "registered": rows, "problems": host.problems})
        return
    loaded = Table(title="plugins")
    for col in ("plugin", "package", "version", "status"):
        loaded.add_column(col)
    for p in host.plugins.values():
        status = "[red]failed[/red]" if p.error else "built-in" if p.builtin else "ok"
        loaded.add_row(p.name, p.package, p.version, status)
    console.print(loaded)
    table = Table(title="netlens plugins")
    for col in ("kind", "name", "package", "version", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["package"], r["version"], r["description"][:60])
    console.print(table)
    for p in host.problems:
        console.print(f"[yellow]skipped:[/yellow] {escape(p)}", soft_wrap=True)
