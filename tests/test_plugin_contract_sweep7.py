"""The plugin contract as docs/plugins.md states it, with in-process plugins (nothing installed):
plain-object analyzers, option and command names netlens keeps, broken plugins and loaders,
CAM method instances, `netlens run`'s inputs, half-registered plugins, plugin name clashes,
`netlens plugins`' loaders, and the page's own code."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import netlens
import netlens.plugins.manager as manager
from netlens.analyzers.base import Analyzer, Option, Result
from netlens.analyzers.cam_base import CamMethod
from netlens.errors import AnalyzerError, NetlensError, NetlensWarning
from netlens.plugins import hookimpl

ZOO = "zoo:shapes-allconv"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.fixture
def install(monkeypatch):
    """``install(*modules, broken=())``: every PluginHost made meanwhile (the CLI's, a Lens')
    holds these plugin modules, as if installed; ``broken``: names of plugins that failed to
    import. The CLI's app gets back its commands afterwards."""
    from netlens.cli import app as app_mod

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # main() sets these: restored after
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "ERROR")
    monkeypatch.delenv("NETLENS_DISABLE_PLUGINS", raising=False)
    before = list(app_mod.app.registered_commands)
    orig = manager.PluginHost

    def _install(*modules: types.ModuleType, broken: tuple[str, ...] = ()) -> None:
        class Host(orig):  # type: ignore[misc, valid-type]
            def __init__(self, plugins=(), **kw):
                super().__init__(plugins, **kw)
                for m in modules:
                    if m.__name__ not in self.plugins:
                        pkg = f"netlens-{m.__name__}"
                        self.register(m, name=m.__name__, package=pkg, version="0.1")
                for name in broken:
                    what = f"failed to import: ImportError: {name} needs scipy>=9"
                    self._problem(name, f"netlens-{name}", "0.1", what)

        monkeypatch.setattr(manager, "PluginHost", Host)

    yield _install
    app_mod.app.registered_commands[:] = before


def cli(monkeypatch, *args: str) -> int:
    """``netlens ARGS`` in-process (the console script's own path); the exit status."""
    from netlens.cli import app as app_mod

    monkeypatch.setattr(sys, "argv", ["netlens", *args])
    try:
        app_mod.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def plugin(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


class MaxLogit:
    """Largest logit per image (a plain object, strict about its options)."""

    def run(self, lens, inputs=None, **options):
        unknown = sorted(set(options) - {"scale"})
        if unknown:
            raise AnalyzerError(f"max-logit has no option '{unknown[0]}' (options: scale)")
        batch = lens.batch(inputs)
        with torch.no_grad():
            top = lens.logits(batch.tensor).max(1).values * options.get("scale", 1.0)
        return Result(
            "max-logit",
            table=[{"image": n, "max": float(v)} for n, v in zip(batch.names, top, strict=True)],
        )


class Blank(Analyzer):
    """Probability drop when the image is a flat fill value."""

    name = "blank-drop"
    takes = "images"
    options = (Option("mean", 0.0, "fill value", float),)

    def compute(self, run):
        return Result(self.name, table=[{"fill": run.options.mean}])


class Matcher(Analyzer):
    """Declares an option named like Analyzer.run's own keyword."""

    name = "matcher"
    takes = "model"
    options = (Option("strict", False, "exact matching only", bool),)

    def compute(self, run):
        return Result(self.name, meta={"strict_seen": run.options.strict})


class TopLogits(Analyzer):
    """Top-k logits per image."""

    name = "top"
    takes = "model"

    def compute(self, run):
        return Result(self.name)


class PowCam(CamMethod):
    """Gradients to a power, averaged per channel."""

    def __init__(self, p=2):
        self.p = p

    def weights(self, ctx):
        return ctx.grads.abs().pow(self.p).mean(dim=(2, 3))


# -- item 2: a plain object is an analyzer --------------------------------------------------
def test_plain_object_analyzer_runs_from_the_cli_with_a_run_header(install, monkeypatch, tmp_path):
    install(
        plugin(
            "maxlogit",
            netlens_register_analyzers=lambda registry: registry.add("max-logit", MaxLogit()),
        )
    )
    assert cli(monkeypatch, "run", "max-logit", "--opt", "scale=2", "--out", str(tmp_path)) == 0
    doc = json.loads((tmp_path / "max-logit.json").read_text())
    assert doc["run"] and doc["run"]["options"] == {"scale": 2}
    assert netlens.load(ZOO).run("max-logit").meta["run"]["model"]["name"] == "shapes-allconv"


# -- item 3: option names netlens keeps ------------------------------------------------------
def test_option_named_like_a_shared_cli_option_is_reported_and_the_command_works(
    install, monkeypatch, capsys
):
    install(
        plugin(
            "blank", netlens_register_analyzers=lambda registry: registry.add("blank-drop", Blank())
        )
    )
    host = manager.PluginHost()
    assert "blank-drop" in host.analyzers  # registered; its clash said
    problems = [p for p in host.problems if "blank-drop" in p]
    assert len(problems) == 1 and "'mean'" in problems[0] and "netlens-blank" in problems[0]
    assert cli(monkeypatch, "blank-drop", "--help") == 0
    assert "Probability drop" in capsys.readouterr().out


def test_option_named_like_a_run_keyword_is_refused(install):
    install(
        plugin(
            "matcher",
            netlens_register_analyzers=lambda registry: registry.add("matcher", Matcher()),
        )
    )
    host = manager.PluginHost()
    assert "matcher" not in host.analyzers
    assert any("'strict'" in p and "matcher" in p for p in host.problems)
    with pytest.raises(AnalyzerError, match="strict"):
        Matcher().run(netlens.load(ZOO), None, strict=True)


# -- item 4: a command name ------------------------------------------------------------------
def test_analyzer_named_like_a_cli_command_is_reported(install):
    install(
        plugin(
            "toplogits",
            netlens_register_analyzers=lambda registry: registry.add("top", TopLogits()),
        )
    )
    host = manager.PluginHost()
    assert "top" in host.analyzers  # `netlens run top` reaches it
    assert any("'top'" in p and "netlens top" in p for p in host.problems)


# -- item 5: a broken plugin's name ------------------------------------------------------------
def test_one_line_keeps_the_failed_plugin_and_shortens_only_quoted_values():
    from netlens.cli.common import one_line

    host = manager.PluginHost()
    host._problem("chanmean", "netlens-chanmean", "0.1", "failed to import: ImportError: x")
    with pytest.raises(NetlensError) as info:
        host.analyzers.get("chan-mean")
    assert "1 plugin(s) failed to load, e.g. plugin 'chanmean'" in one_line(info.value)
    long = one_line(NetlensError(f"no file '{'x' * 300}' here"))
    assert long == f"no file '{'x' * 100}…' here"


def test_command_of_a_plugin_that_failed_to_import_says_so(install, monkeypatch, capsys):
    install(broken=("chanmean",))
    assert cli(monkeypatch, "chan-mean") == 1
    err = capsys.readouterr().err
    assert "failed to load" in err and "chanmean" in err and "No such command" not in err


# -- item 6: a loader that raises --------------------------------------------------------------
def test_a_raising_plugin_loader_is_skipped_with_a_warning(install):
    def load_magic(source, request):
        with open(source, "rb") as f:  # a folder: IsADirectoryError
            f.read(4)
        return None

    install(
        plugin(
            "magic",
            netlens_register_model_loaders=lambda registry: registry.add("magic", load_magic),
        )
    )
    with pytest.warns(NetlensWarning, match="model loader 'magic' .*netlens-magic"):
        lens = netlens.load(ZOO)
    assert lens.model is not None


# -- item 7: a CAM method instance --------------------------------------------------------------
def test_a_cam_method_registered_as_an_instance_runs(install):
    install(
        plugin(
            "powcam",
            netlens_register_cam_methods=lambda registry: registry.add("pow3cam", PowCam(3)),
        )
    )
    result = netlens.load(ZOO).cam(method="pow3cam")
    assert result.name == "cam" and result.meta["run"] is not None


# -- item 8: what `netlens run NAME` takes -------------------------------------------------------
def test_run_says_what_the_analyzer_takes(monkeypatch, capsys, tmp_path):
    from PIL import Image

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "ERROR")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    out = str(tmp_path / "o")
    assert cli(monkeypatch, "run", "stats", ZOO, str(photo), "--out", out) == 1
    assert "stats takes --data DATA" in capsys.readouterr().err
    assert cli(monkeypatch, "run", "cam", "-d", "shapes", "--out", out) == 1
    assert "cam takes images" in capsys.readouterr().err


# -- item 9: a hook that raises half-way ---------------------------------------------------------
def test_a_hook_that_raises_leaves_nothing_and_is_marked_failed(install):
    class First(Analyzer):
        """First analyzer of a half-registered plugin."""

        name = "half-first"
        takes = "model"

        def compute(self, run):
            return Result(self.name)

    def hook(registry):
        registry.add("half-first", First())
        registry.add("half-norun", object())
        raise RuntimeError("second analyzer needs a newer netlens")

    install(plugin("half", netlens_register_analyzers=hook))
    host = manager.PluginHost()
    assert not [n for n in host.analyzers.names() if n.startswith("half")]
    assert host.plugins["half"].error.startswith("failed in netlens_register_analyzers")
    assert any("half-norun" in p and "run(" in p for p in host.problems)


# -- item 10: the same plugin name twice ----------------------------------------------------------
def test_the_same_plugin_name_twice_names_the_distribution_holding_it():
    host = manager.PluginHost(entry_points=False)
    host.register(types.ModuleType("a"), name="dup", package="netlens-dup-a", version="1")
    host.register(types.ModuleType("b"), name="dup", package="netlens-dup-b", version="1")
    assert host.problems == [
        "plugin 'dup' (netlens-dup-b): failed to register: plugin name 'dup' is taken by "
        "netlens-dup-a; skipped"
    ]


# -- item 11: `netlens plugins` lists loaders ----------------------------------------------------
def test_plugins_lists_model_loaders(install, monkeypatch, capsys):
    install(
        plugin(
            "tnz",
            netlens_register_model_loaders=lambda registry: registry.add(
                "tnz-files", lambda path, request: None
            ),
        )
    )
    assert cli(monkeypatch, "plugins", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["registered"]
    loaders = {r["name"]: r["package"] for r in rows if r["kind"] == "loader"}
    assert loaders["tnz-files"] == "netlens-tnz" and loaders["state-dict"] == "netlens"


# -- item 12: the page's code ------------------------------------------------------------------
def test_docs_analyzer_contract_snippets_run():
    doc = DOCS.read_text()
    section = doc[doc.index("## The Analyzer and Result contract") : doc.index("## Isolation")]
    for needed in (
        "def compute(self, run)",
        "declared_options()",
        "run.data.loader(",
        "Option(",
        "`progress`, `storage`, `strict` and `group`",
    ):
        assert needed in section, needed
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "plugins.md", "exec"), {"__name__": "snippet"})  # noqa: S102
    for block in re.findall(r"```python\n(.*?)```", doc, re.S):
        compile(block, "plugins.md", "exec")


def test_cli_names_match_the_shared_options():
    import dataclasses

    from netlens.cli.options import Common
    from netlens.plugins.checks import CLI_NAMES

    assert {f.name for f in dataclasses.fields(Common)} <= CLI_NAMES
