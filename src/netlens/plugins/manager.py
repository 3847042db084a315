"""The plugin host: one pluggy manager per session, never a global one.

Plugins come from the ``netlens`` entry point group (netlens' own built-ins included, exactly as
a third-party package ships them) and from objects passed in. A plugin that fails to import or to
register is reported in ``problems`` and skipped; ``NETLENS_DISABLE_PLUGINS=a,b`` blocks by name.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from ..errors import close_names
from . import PROJECT, hookspecs
from .registry import Registry

__all__ = ["PluginHost", "PluginInfo"]

BUILTIN_PACKAGE = "netlens"
HOOKS = {  # registration hook → what its registry holds, in the order they are filled
    "netlens_register_analyzers": "analyzer",
    "netlens_register_cam_methods": "CAM method",
    "netlens_register_archs": "architecture",
    "netlens_register_datasets": "dataset",
    "netlens_register_metrics": "metric",
    "netlens_register_commands": "command",
    "netlens_register_model_loaders": "model loader",
}


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as ``netlens plugins`` lists it."""

    name: str
    package: str
    version: str
    builtin: bool
    error: str = ""


def disabled_from_env() -> set[str]:
    """Plugin names blocked by ``NETLENS_DISABLE_PLUGINS`` (comma-separated)."""
    raw = os.environ.get("NETLENS_DISABLE_PLUGINS", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


class PluginHost:
    """Owns a pluggy manager and the registries its plugins fill.

    Args:
        plugins: extra plugin objects (modules or instances) to register, e.g. in tests.
        entry_points: load the ``netlens`` entry point group (built-ins live there too).
        disable: plugin names to block; defaults to ``NETLENS_DISABLE_PLUGINS``.

    Example:
        >>> host = PluginHost()
        >>> host.analyzers.names()
        ['cam', 'kernels', ...]
    """

    def __init__(
        self,
        plugins: Iterable[Any] = (),
        *,
        entry_points: bool = True,
        disable: Iterable[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disable) if disable is not None else disabled_from_env()
        for name in self.disabled:
            self.pm.set_blocked(name)  # pluggy refuses to register a blocked name
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self._registries: dict[str, Registry] = {}
        self._failed: set[str] = set()  # plugins whose hook raised
        if entry_points:
            self._load_entry_points()
        for obj in plugins:
            self.register(obj)

    # -- loading ---------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        found = sorted(_entry_points(), key=lambda f: (f[1] != BUILTIN_PACKAGE, f[0].name, f[1]))
        for ep, package, version in found:
            if self.pm.is_blocked(ep.name) or package in self.disabled:
                continue
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin: never fatal
                _reraise_a_stop(exc)
                self._problem(ep.name, package, version, f"failed to import: {_short(exc)}")
                continue
            self.register(obj, name=ep.name, package=package, version=version)

    def register(
        self, plugin: Any, *, name: str | None = None, package: str = "", version: str = ""
    ) -> None:
        """Register a plugin object (module or instance) with this host."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.is_blocked(name):
            return
        if self.pm.get_plugin(name) is not None:  # pluggy's words would name a module object
            owner = self.plugins.get(name)
            by = (owner.package or "another plugin") if owner else "another plugin"
            self._problem(
                name,
                package,
                version,
                f"failed to register: plugin name '{name}' is taken by {by}; skipped",
            )
            return
        try:
            self.pm.register(plugin, name=name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            _reraise_a_stop(exc)
            self._problem(name, package, version, f"failed to register: {_short(exc)}")
            return
        self.plugins[name] = PluginInfo(name, package, version, package == BUILTIN_PACKAGE)
        self._registries.clear()
        for caller in self.pm.get_hookcallers(plugin) or []:
            optional = any(i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin)
            if caller.spec is None and not optional:  # a misspelt hook is otherwise never called
                specs = [n for n in dir(hookspecs) if n.startswith(f"{PROJECT}_")]
                close = close_names(caller.name, specs, n=1)
                guess = f" (did you mean {close[0]}?)" if close else ""
                self.problems.append(
                    f"plugin '{name}' ({package or 'unknown package'}): unknown hook "
                    f"{caller.name}{guess}; it is never called"
                )

    def _problem(self, name: str, package: str, version: str, what: str) -> None:
        key = name if name not in self.plugins else f"{name} ({package or 'unknown package'})"
        self.plugins[key] = PluginInfo(name, package, version, False, error=what)
        self.problems.append(f"plugin '{name}' ({package or 'unknown package'}): {what}")

    # -- registries ------------------------------------------------------------------------
    def _fill(self, hook_name: str, kind: str) -> Registry:
        registry: Registry = Registry(kind)
        hook = getattr(self.pm.hook, hook_name)
        impls = sorted(hook.get_hookimpls(), key=lambda i: not self._is_builtin(i.plugin_name))
        for impl in impls:  # one by one: a plugin that raises must not stop the others
            if impl.plugin_name in self._failed:  # raised in another hook: none of it is kept
                continue
            info = self.plugins.get(impl.plugin_name)
            view = registry.scoped(
                plugin=impl.plugin_name,
                package=info.package if info else "",
                version=info.version if info else "",
                builtin=bool(info and info.builtin),
            )
            try:
                impl.function(view)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                registry.problems.append(
                    f"plugin '{impl.plugin_name}' failed in {hook_name}: {_short(exc)}; skipped"
                )
                self._fail(impl.plugin_name, f"failed in {hook_name}: {_short(exc)}", registry)
        self.problems.extend(p for p in registry.problems if p not in self.problems)
        return registry

    def _fail(self, plugin_name: str, what: str, filling: Registry) -> None:
        """A plugin whose hook raised: what it added anywhere is taken back (no half plugin),
        later hooks skip it, and ``netlens plugins`` shows it failed."""
        self._failed.add(plugin_name)
        for registry in (filling, *self._registries.values()):
            for key in [k for k, e in registry.entries.items() if e.plugin == plugin_name]:
                del registry.entries[key]
        info = self.plugins.get(plugin_name)
        if info is not None and not info.error:
            self.plugins[plugin_name] = dataclasses.replace(info, error=what)

    def _is_builtin(self, plugin_name: str) -> bool:
        info = self.plugins.get(plugin_name)
        return bool(info and info.builtin)

    def _get(self, hook_name: str) -> Registry:
        regs = self._registries
        if hook_name not in regs:
            # with the registries its plugins add to as well: a plugin whose hook raises is
            # taken back from all of them before any lookup sees what it added
            for name in self._together(hook_name):
                regs[name] = self._fill(name, HOOKS[name])
            broken = [p for p in self.problems if " failed " in p]  # said on an unknown name
            for registry in regs.values():
                registry.broken = broken
        return regs[hook_name]

    def _together(self, hook_name: str) -> list[str]:
        """The registration hooks filled with ``hook_name``: those of every plugin implementing
        it, and of every plugin implementing those, and so on. A plugin is then whole or gone
        in all its registries at once, whichever is asked for first; a registry no plugin of
        these adds to stays unfilled (built-ins import their implementations in their hooks:
        opening a model file need not import every analyzer)."""
        by_plugin: dict[str, set[str]] = {}
        for name in HOOKS:
            for impl in getattr(self.pm.hook, name).get_hookimpls():
                by_plugin.setdefault(impl.plugin_name, set()).add(name)
        group, grew = {hook_name}, True
        while grew:
            grew = False
            for hooks in by_plugin.values():
                if hooks & group and not hooks <= group:
                    group |= hooks
                    grew = True
        return [name for name in HOOKS if name in group and name not in self._registries]

    @property
    def analyzers(self) -> Registry:
        return self._get("netlens_register_analyzers")

    @property
    def cam_methods(self) -> Registry:
        return self._get("netlens_register_cam_methods")

    @property
    def archs(self) -> Registry:
        return self._get("netlens_register_archs")

    @property
    def datasets(self) -> Registry:
        return self._get("netlens_register_datasets")

    @property
    def metrics(self) -> Registry:
        return self._get("netlens_register_metrics")

    @property
    def commands(self) -> Registry:
        return self._get("netlens_register_commands")

    @property
    def model_loaders(self) -> Registry:
        """The model loaders' registry (entries say which plugin added each)."""
        return self._get("netlens_register_model_loaders")

    @property
    def loaders(self) -> list[Any]:
        """Model loaders, third-party ones first and netlens' own last."""
        entries = sorted(self.model_loaders.entries.values(), key=lambda e: e.builtin)
        return [e.item for e in entries]

    def checked_result(self, name: str, result: Any) -> Any:
        """``result`` of analyzer ``name``, if it is a netlens Result; anything else (a plain
        object's ``run`` returning a dict, None) fails in one line naming the analyzer and the
        plugin that registered it, instead of at the first ``result.save``."""
        from ..analyzers.base import Result
        from ..errors import AnalyzerError

        if isinstance(result, Result):
            return result
        entry = self.analyzers.entries.get(name)
        who = (entry.package or entry.plugin) if entry is not None else ""
        got = "None" if result is None else _a(type(result).__name__)
        raise AnalyzerError(
            f"analyzer '{name}'{f' (plugin {who})' if who else ''} returned {got}, not a netlens "
            "Result; its run must return netlens.analyzers.base.Result (see docs/plugins.md)"
        )

    def loader_entries(self) -> list[Any]:
        """The loaders' registry entries in the order :attr:`loaders` tries them."""
        return sorted(self.model_loaders.entries.values(), key=lambda e: e.builtin)


Found = list[tuple[md.EntryPoint, str, str]]  # entry point, its distribution's name, version
_FOUND: list[tuple[tuple, Found]] = []  # [(the environment's state, what was found)]


def _entry_points() -> Found:
    """The ``netlens`` group's entry points with their distributions' names and versions, read
    again only when the environment changed.

    Reading them parses every installed distribution's ``entry_points.txt`` (about 10 ms) and
    each plugin distribution's METADATA (about 0.7 ms), for every plugin host otherwise, that is
    for every ``netlens.cam(model, x)`` on a bare module. Installing or removing a distribution
    adds or removes a folder (``*.dist-info``) in a ``sys.path`` folder, which changes that
    folder's modification time and, on most file systems, its link count (which moves even
    within one clock tick). A replaced ``importlib.metadata.entry_points`` (a test's or a tool's
    view of the environment) is asked again too.
    """
    state = (md.entry_points, *(_folder_state(p) for p in sys.path))
    if not _FOUND or _FOUND[0][0] != state:
        eps = md.entry_points(group=PROJECT)
        _FOUND[:] = [(state, [(ep, *_name_version(ep)) for ep in eps])]
    return _FOUND[0][1]


def _folder_state(path: str) -> tuple[str, int, int, int]:
    try:
        st = os.stat(path or ".")
    except OSError:
        return path, -1, -1, -1
    return path, st.st_ino, st.st_mtime_ns, st.st_nlink


def _name_version(ep: md.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("", "")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _reraise_a_stop(exc: BaseException) -> None:
    """A ``SystemExit`` raised by a stop signal's handler while a plugin loads is the run's
    end, not the plugin's failure (a ``--distributed`` worker told to stop ran on and wrote)."""
    if isinstance(exc, SystemExit):
        from ..distributed.parent import stopping

        if stopping() is not None:
            raise exc
