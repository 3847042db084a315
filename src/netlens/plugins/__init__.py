"""netlens' plugin system (pluggy, project name and entry point group ``netlens``).

Plugin authors import the marker from here::

    from netlens.plugins import hookimpl

    @hookimpl
    def netlens_register_analyzers(registry):
        registry.add("my-analyzer", MyAnalyzer())
"""

from __future__ import annotations

import pluggy

PROJECT = "netlens"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]
