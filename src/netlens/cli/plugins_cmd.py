"""``netlens plugins``: what is registered, by which package, and what failed to load."""

from __future__ import annotations

from typing import Any

from .common import cli_errors, emit_json
from .options import JsonOpt


@cli_errors
def plugins(json: JsonOpt = False) -> None:
    """List plugins, their analyzers, CAM methods, loaders and archs, and load problems."""
    from rich.markup import escape

    from ..plugins.manager import PluginHost
    from .runner import err, out

    host = PluginHost()
    kinds = {
        "analyzer": host.analyzers,
        "cam-method": host.cam_methods,
        "arch": host.archs,
        "dataset": host.datasets,
        "metric": host.metrics,
        "loader": host.model_loaders,
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
    if json:
        plugins_ = [vars(p) for p in host.plugins.values()]
        emit_json({"plugins": plugins_, "registered": rows, "problems": host.problems})
        return
    out.print(_plugins_table(host))
    out.print(_registered_table(rows))
    for p in host.problems:
        err.print(f"[yellow]skipped:[/yellow] {escape(p)}", soft_wrap=True)


def _plugins_table(host: Any) -> Any:
    from rich.table import Table

    table = Table(title="plugins")
    for col in ("plugin", "package", "version", "status"):
        table.add_column(col, no_wrap=True)
    for p in host.plugins.values():
        status = "[red]failed[/red]" if p.error else "built-in" if p.builtin else "ok"
        table.add_row(p.name, p.package, p.version, status)
    return table


def _registered_table(rows: list[dict[str, Any]]) -> Any:
    """Names are never cut (they are what a user types); descriptions wrap at word ends."""
    from rich.table import Table

    table = Table(title="registered by plugins")
    widest = max((len(r["name"]) for r in rows), default=4)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", no_wrap=True, min_width=widest)
    table.add_column("package", no_wrap=True)
    table.add_column("description", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["package"], r["description"])
    return table
