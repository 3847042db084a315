"""The plugin host: built-ins via entry points, extra plugins, clashes, blocking."""

from __future__ import annotations

from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost


class Extra:
    @hookimpl
    def netlens_register_archs(self, registry):
        registry.add("extra-net", lambda num_classes=3: None, description="an extra arch")

    @hookimpl
    def netlens_register_model_loaders(self, registry):
        registry.add("netlens-checkpoint", lambda s, r: None)  # clashes with a built-in


def test_builtins_come_from_the_entry_point_group():
    host = PluginHost()
    info = host.plugins["core"]
    assert info.builtin and info.package == "netlens" and info.version
    assert len(host.loaders) >= 3


def test_extra_plugin_registers_and_clash_is_reported():
    host = PluginHost([Extra()])
    assert host.archs.entries["extra-net"].description == "an extra arch"
    reg = host.loaders
    assert reg[-1].__name__ == "load_pickled_module"  # built-ins last
    assert any("'netlens-checkpoint' is taken" in p for p in host.problems)


def test_disable_by_env(monkeypatch):
    monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", "core, other")
    host = PluginHost()
    assert "core" not in host.plugins and host.loaders == []


def test_failing_hook_is_skipped():
    class Broken:
        @hookimpl
        def netlens_register_archs(self, registry):
            raise RuntimeError("boom")

    host = PluginHost([Broken()], entry_points=False)
    assert len(host.archs) == 0
    assert any("boom" in p for p in host.problems)
