"""The plugin host with real (temporary) distributions: listing, isolation, clashes, blocking."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.plugins.manager import PluginHost

pytest_plugins = ["netlens.testing"]
runner = CliRunner()

HELLO = """
from netlens.plugins import hookimpl

class Hello:
    '''Says hello.'''
    def run(self, lens, inputs=None, **options):
        raise NotImplementedError

@hookimpl
def netlens_register_analyzers(registry):
    registry.add("hello", Hello())
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Install a fake distribution: ``install("netlens-x", "1.0", {"x": source})``.

    Writes ``<name>-<version>.dist-info`` (METADATA + entry_points.txt) and the modules into a
    folder put on ``sys.path``, so ``importlib.metadata`` finds it like a pip-installed package.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("NETLENS_DISABLE_PLUGINS", raising=False)
    modules: list[str] = []

    def _install(package: str, version: str, plugins: dict[str, str]) -> Path:
        info = site / f"{package.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        )
        lines = ["[netlens]"]
        for ep_name, source in plugins.items():
            module = f"{package.replace('-', '_')}_{ep_name}"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module}")
            modules.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return site

    yield _install
    for module in modules:
        sys.modules.pop(module, None)


def test_third_party_plugin_is_listed_with_package_and_version(install):
    install("netlens-hello", "1.2.3", {"hello": HELLO})
    host = PluginHost()
    info = host.plugins["hello"]
    assert (info.package, info.version, info.builtin, info.error) == (
        "netlens-hello",
        "1.2.3",
        False,
        "",
    )
    entry = host.analyzers.entries["hello"]
    assert (entry.package, entry.version, entry.description) == (
        "netlens-hello",
        "1.2.3",
        "Says hello.",
    )
    assert "cam" in host.analyzers and host.analyzers.entries["cam"].builtin
    res = runner.invoke(app, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {
        "name": "hello",
        "package": "netlens-hello",
        "version": "1.2.3",
        "builtin": False,
        "error": "",
    } in doc["plugins"]
    res = runner.invoke(app, ["plugins"])
    assert "netlens-hello" in res.output and "1.2.3" in res.output


def test_plugin_that_raises_on_import_is_skipped_and_reported(install):
    install("netlens-broken", "0.1", {"broken": "raise RuntimeError('needs libfoo, not found')"})
    install("netlens-hello", "1.0", {"hello": HELLO})
    host = PluginHost()
    assert host.problems == [
        "plugin 'broken' (netlens-broken): failed to import: RuntimeError: needs libfoo, not found"
    ]
    assert host.plugins["broken"].error.startswith("failed to import")
    assert "hello" in host.analyzers and "cam" in host.analyzers
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0
    assert "netlens-broken" in res.output and "needs libfoo" in res.output
    with pytest.raises(NetlensError, match=r"unknown analyzer 'broken'.*1 plugin\(s\) failed "):
        host.analyzers.get("broken")  # its analyzer is not just unknown: its plugin is broken


def test_plugin_that_exits_on_import_is_skipped_and_reported(install):
    """``sys.exit("needs a GPU")`` at import is no Exception: it ended every command."""
    install("netlens-exiter", "0.1", {"exiter": "import sys; sys.exit('exiter: needs a GPU')"})
    host = PluginHost()
    assert host.problems == [
        "plugin 'exiter' (netlens-exiter): failed to import: SystemExit: exiter: needs a GPU"
    ]
    assert "cam" in host.analyzers
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and "needs a GPU" in res.output


def test_plugin_whose_hook_raises_or_is_malformed_is_skipped(install):
    raises = HELLO.replace('registry.add("hello", Hello())', "raise KeyError('oops')")
    bad_signature = (
        "from netlens.plugins import hookimpl\n\n@hookimpl\n"
        "def netlens_register_analyzers(reg):\n    pass\n"
    )
    typo = (
        "from netlens.plugins import hookimpl\n\n@hookimpl\n"
        "def netlens_register_analyser(registry):\n    pass\n"
    )
    install("netlens-bad", "2.0", {"raises": raises, "sig": bad_signature, "typo": typo})
    host = PluginHost()
    names = host.analyzers.names()
    assert "cam" in names and "hello" not in names
    text = "\n".join(host.problems)
    assert "plugin 'raises' failed in netlens_register_analyzers: KeyError: 'oops'" in text
    assert "plugin 'sig' (netlens-bad): failed to register" in text and "reg" in text
    assert "plugin 'typo' (netlens-bad): unknown hook netlens_register_analyser" in text
    assert "(did you mean netlens_register_analyzers?); it is never called" in text


def test_name_clash_keeps_the_builtin_unless_blocked(install, monkeypatch):
    clash = HELLO.replace('"hello"', '"cam"')
    install("netlens-clash", "1.0", {"aaa": clash})
    host = PluginHost()
    assert host.analyzers.entries["cam"].package == "netlens"
    assert "netlens-clash: analyzer 'cam' is taken by netlens; skipped" in host.problems
    monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", "cam")  # the built-in CAM plugin's name
    host = PluginHost()
    assert host.analyzers.entries["cam"].package == "netlens-clash"
    assert not host.problems


def test_builtins_win_whatever_the_registration_order():
    mod = type(sys)("thirdparty")
    exec(HELLO, mod.__dict__)  # noqa: S102 - a plugin module made in the test
    builtin = type(sys)("builtin_like")
    exec(HELLO.replace("Says hello.", "Built-in hello."), builtin.__dict__)  # noqa: S102
    host = PluginHost(entry_points=False)
    host.register(mod, name="thirdparty", package="netlens-third", version="1")
    host.register(builtin, name="builtin_like", package="netlens", version="0.1.0")
    assert host.analyzers.entries["hello"].description == "Built-in hello."
    assert host.problems == ["netlens-third: analyzer 'hello' is taken by netlens; skipped"]


def test_same_plugin_name_from_two_packages_keeps_the_first(install):
    install("netlens-one", "1.0", {"dup": HELLO})
    install("netlens-two", "1.0", {"dup": HELLO.replace('"hello"', '"hello2"')})
    host = PluginHost()
    assert host.plugins["dup"].error == "" and "hello" in host.analyzers
    assert "hello2" not in host.analyzers
    assert any("netlens-two" in p and "failed to register" in p for p in host.problems)
    assert any(p.package == "netlens-two" and p.error for p in host.plugins.values())


def test_disable_env_blocks_by_plugin_or_package_name(install, monkeypatch):
    install("netlens-hello", "1.0", {"hello": HELLO})
    for blocked in ("hello", "netlens-hello", " other , hello "):
        monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", blocked)
        host = PluginHost()
        assert "hello" not in host.plugins and "hello" not in host.analyzers
        assert "cam" in host.analyzers and not host.problems
    assert "hello" in PluginHost(disable=()).analyzers


def test_broken_plugin_leaves_builtin_commands_working(
    install, tiny_model_file, sample_images, tmp_path
):
    install("netlens-broken", "0.1", {"broken": "import no_such_module_xyz"})
    out = tmp_path / "out"
    for args in (
        ["--help"],
        ["plugins"],
        ["layers", str(tiny_model_file)],
        ["cam", str(tiny_model_file), str(sample_images[0]), "--out", str(out)],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
    assert any(out.glob("*.png"))


def test_broken_plugin_in_a_fresh_process(install):
    site = install("netlens-broken", "0.1", {"broken": "raise SystemError('bad build')"})
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "NETLENS_DISABLE_PLUGINS": ""}
    cmd = [sys.executable, "-c", "from netlens.cli.app import main; main()"]
    helped = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0 and "plugins" in helped.stdout
    listed = subprocess.run(
        [*cmd, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert (
        "plugin 'broken' (netlens-broken): failed to import: SystemError: bad build"
        in (doc["problems"])
    )
    assert "cam" in {r["name"] for r in doc["registered"]}


def test_distribution_metadata_is_read_once_per_process(monkeypatch) -> None:  # noqa: ANN001
    import importlib.metadata as md

    from netlens.plugins import manager

    reads: list[str] = []
    metadata = md.PathDistribution.metadata
    monkeypatch.setattr(
        md.PathDistribution, "metadata", property(lambda d: reads.append("r") or metadata.fget(d))
    )
    monkeypatch.setattr(manager, "_FOUND", [])
    first = PluginHost().plugins
    assert reads  # the first host reads each distribution's name and version
    reads.clear()
    second = PluginHost().plugins
    assert not reads and second == first
    assert first["cam"].package == "netlens" and first["cam"].version


def test_entry_points_are_read_again_only_when_a_distribution_is_installed(install, monkeypatch):
    import importlib.metadata as md

    from netlens.plugins import manager

    scans: list[str] = []
    entry_points = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: scans.append("s") or entry_points(**kw))
    monkeypatch.setattr(manager, "_FOUND", [])
    install("netlens-hello", "1.2.3", {"hello": HELLO})
    assert "hello" in PluginHost().plugins and len(scans) == 1
    assert "hello" in PluginHost().plugins and len(scans) == 1  # nothing changed: no scan
    install("netlens-second", "0.1", {"second": HELLO.replace('"hello"', '"second"')})
    host = PluginHost()  # at once, within the same clock tick: the folder's link count moved
    assert len(scans) == 2 and {"hello", "second"} <= set(host.plugins)
    assert "second" in host.analyzers.names()


def test_the_docs_five_minute_plugin_runs(install):
    """docs/plugins.md's example registered nothing: it overrode ``run`` of an ``Analyzer``
    whose ``compute`` is abstract. Its code, as printed there, is the plugin here."""
    import re

    import torch

    import netlens

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"`src/netlens_hello/__init__.py`:\n\n```python\n(.*?)```", text, re.S)
    install("netlens-hello", "0.1.0", {"hello": code.group(1)})
    host = PluginHost()
    assert host.problems == [] and "mean-logit" in host.analyzers
    lens = netlens.load()
    res = lens.run("mean-logit", lens.samples[:2])
    with torch.no_grad():
        want = lens.logits(lens.preprocess(lens.samples[:2])).mean(0)
    assert [r["mean_logit"] for r in res.table] == pytest.approx(want.tolist(), rel=1e-5)


def test_plugin_commands_plain_objects_and_flags_that_default_on(install):
    """A plain object with ``run`` is an analyzer (its command said "No such command"); a
    boolean option on by default can be turned off (``--no-abs``: "No such option")."""
    import typer

    from netlens.cli.analyzer_commands import plugin_command

    install("netlens-hello", "1.0", {"hello": HELLO})
    cli = typer.Typer()  # as `netlens NAME` adds a plugin's command (cli/app.py)
    for name in ("hello", "saliency"):  # saliency: netlens-captum's, `abs` on by default
        cli.command(name)(plugin_command(name))
    res = runner.invoke(cli, ["hello", "--help"])
    assert res.exit_code == 0 and "Says hello." in res.output, res.output
    res = runner.invoke(cli, ["saliency", "--help"])
    assert res.exit_code == 0 and "--no-abs" in res.output, res.output
