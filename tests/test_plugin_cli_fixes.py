"""Plugin analyzers on the command line: results named like built-in ones, declared options that
want one flag (or ``--help``), and a plugin's analyzer holding a blocked built-in's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from netlens.analyzers.base import Analyzer, Option, Result
from netlens.analyzers.options import as_is
from netlens.cli import analyzer_commands
from netlens.cli.app import app
from netlens.plugins.checks import analyzer_problems

pytest_plugins = ["netlens.testing"]
pytestmark = [pytest.mark.usefixtures("one_thread")]
runner = CliRunner()
BUILTIN_NAMES = ("stats", "evaluate", "sanity", "cam", "ablation")

RNAME = """
from netlens.plugins import hookimpl
from netlens.analyzers.base import Analyzer, Result

def make(resname):
    class A(Analyzer):
        '''returns a Result named like a built-in one'''
        name = "my-" + resname
        takes = "images"
        def compute(self, run):
            return Result(resname, table=[{"layer": "x", "value": 1.0}])
    return A()

@hookimpl
def netlens_register_analyzers(registry):
    for r in NAMES:
        registry.add("my-" + r, make(r))
""".replace("NAMES", repr(BUILTIN_NAMES))

MYCAM = """
from netlens.plugins import hookimpl
from netlens.analyzers.base import Analyzer, Option, Result

class MyCam(Analyzer):
    '''my own cam'''
    name = "cam"
    takes = "images"
    options = (Option("gain", 2, "how much", int),)
    def compute(self, run):
        return Result("cam", table=[{"gain": run.options.gain}])

@hookimpl
def netlens_register_analyzers(registry):
    registry.add("cam", MyCam())
"""


@pytest.fixture
def install(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A fake distribution with a ``netlens`` entry point in a folder on ``sys.path``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("NETLENS_DISABLE_PLUGINS", raising=False)
    modules: list[str] = []

    def _install(package: str, module: str, source: str) -> Path:
        info = site / f"{package.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[netlens]\n{module} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        modules.append(module)
        return site

    yield _install
    for module in modules:
        sys.modules.pop(module, None)


# -- 1: the terminal table is chosen by the result's kind, not its name ---------------------------
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_plugin_result_named_like_a_builtin_gets_the_generic_summary(name: str) -> None:
    from netlens.cli.tables import summary_table

    # old: cam_table read meta['method'], stats_table meta['samples'], ... (KeyError)
    assert summary_table(Result(name, table=[{"layer": "x", "value": 1.0}])) is None


def test_builtin_results_keep_their_tables_and_a_failing_one_is_no_crash() -> None:
    from netlens.analyzers.cam_result import CamResult
    from netlens.analyzers.stats import StatsResult
    from netlens.cli.tables import summary_table

    row = {"layer": "conv", "mean": 0.5, "std": 1.0, "near_zero": 0.1}
    row |= {"dead_units": 0.2, "dead_channels": 0.0}
    table = summary_table(StatsResult("stats", {}, [row], {"samples": 7}))
    assert table is not None and table.title == "activation statistics over 7 samples"
    assert table.row_count == 1
    # a built-in class a plugin filled otherwise: the generic summary, not exit 1
    assert summary_table(CamResult("cam", {}, [], {})) is None


def test_cli_prints_the_generic_summary_for_such_a_result(
    install, tiny_model_file: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    install("netlens-rname", "nl_rname_t", RNAME)
    for name in BUILTIN_NAMES:
        out = tmp_path / f"o_{name}"
        args = ["run", f"my-{name}", str(tiny_model_file), str(sample_images[0]), "-o", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (name, res.output)
        assert f"{name}: 1 rows" in res.stdout  # Result.headline()
        assert any(out.iterdir())  # the files were written, as before


# -- 3: two declared options wanting one flag, an option named like --help ------------------------
class Two(Analyzer):
    """layer and layers, top and k, method and methods"""

    name = "two"
    takes = "images"
    options = (
        Option("layer", "auto", "the CAM layer", as_is),
        Option("layers", "auto", "layers to probe", as_is),
        Option("top", 1, "top", int),
        Option("k", 2, "k", int),
        Option("method", "a", "one method", str),
        Option("methods", "b", "methods", str),
    )

    def compute(self, run: Any) -> Result:
        return Result(self.name, table=[dict(run.options)])


class Helpy(Analyzer):
    """option named help"""

    name = "helpy"
    takes = "images"
    options = (Option("help", 1, "a number", int), Option("size", 3, "a size", int))

    def compute(self, run: Any) -> Result:
        return Result(self.name, table=[dict(run.options)])


def _cli(analyzer: Any) -> typer.Typer:
    cli = typer.Typer()  # as `netlens NAME` adds a plugin analyzer's command (cli/app.py)
    cli.command(analyzer.name)(analyzer_commands.analyzer_command(analyzer.name, analyzer))
    cli.command("unused")(lambda: None)  # two commands: the group keeps the name
    return cli


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["--layer", "0"], {"layer": "0"}),
        (["-l", "0"], {"layer": "0"}),
        (["--layers", "1"], {"layers": "1"}),
        (["--layer", "0", "--layers", "1"], {"layer": "0", "layers": "1"}),
        (["--top", "5", "--k", "6"], {"top": 5, "k": 6}),
        (["-k", "5"], {"top": 5}),
        (["--method", "x", "--methods", "y"], {"method": "x", "methods": "y"}),
        (["-m", "x"], {"method": "x"}),
    ],
)
def test_options_that_want_one_flag_get_one_each(
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_file: Path,
    sample_images: list[Path],
    args: list[str],
    want: dict[str, Any],
) -> None:
    got: dict[str, Any] = {}
    monkeypatch.setattr(
        analyzer_commands, "run_analyzer", lambda name, m, i, options, c, **kw: got.update(options)
    )
    res = runner.invoke(_cli(Two()), ["two", str(tiny_model_file), str(sample_images[0]), *args])
    assert res.exit_code == 0, res.output
    assert got == want


def test_an_option_named_help_leaves_help_working_and_is_said() -> None:
    res = runner.invoke(_cli(Helpy()), ["helpy", "--help"])
    assert res.exit_code == 0, res.output
    assert "option named help" in res.output and "a size" not in res.output
    _, notes = analyzer_problems("helpy", Helpy(), "netlens-flags")
    assert any("'help'" in n and "netlens run helpy --opt help=" in n for n in notes), notes
    assert any("'size'" in n and "--size" in n for n in notes), notes


def test_flag_clashes_are_said_at_registration() -> None:
    _, notes = analyzer_problems("two", Two(), "netlens-flags")
    said = " | ".join(notes)
    for name, flag in (("layers", "--layers"), ("k", "--k"), ("methods", "--methods")):
        assert f"option '{name}'" in said and f"spells it {flag}" in said, said
    assert "option 'layer'" in said and "spells it --layer/-l" in said, said
    assert analyzer_problems("plain", _Plain(), "x") == (None, [])  # no clash, no note


class _Plain(Analyzer):
    """one option"""

    name = "plain"
    options = (Option("layer", "auto", "a layer", as_is), Option("alpha", 0.5, "", float))

    def compute(self, run: Any) -> Result:
        return Result(self.name)


def test_shared_flags_cover_every_flag_of_the_shared_options() -> None:
    from netlens.analyzers.specs import BUILTINS
    from netlens.plugins.checks import SHARED_FLAGS

    for spec in BUILTINS:
        cli = typer.Typer()
        cli.command(spec.command)(analyzer_commands.spec_command(spec))
        cli.command("unused")(lambda: None)
        group = typer.main.get_command(cli)
        params = group.commands[spec.command].params  # type: ignore[attr-defined]
        own = {o.name for o in spec.options}
        for p in params:
            if p.name not in own and getattr(p, "opts", None):
                flags = [f for f in (*p.opts, *p.secondary_opts) if f.startswith("-")]
                missing = set(flags) - SHARED_FLAGS
                assert not missing, (spec.command, p.name, missing)


# -- 6: a plugin's analyzer holding a blocked built-in's name makes its own command --------------
def test_plugin_cam_with_the_builtin_blocked_gets_its_own_options(
    install, monkeypatch, tiny_model_file: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    from netlens.cli import app as app_module

    install("netlens-mycam", "nl_mycam_t", MYCAM)
    monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", "cam")
    # what main() does for `netlens cam ...`, on a copy of the app's commands
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))
    app_module._add_plugin_command(["cam", "--help"])
    helped = runner.invoke(app, ["cam", "--help"])
    assert helped.exit_code == 0, helped.output
    assert "--gain" in helped.stdout and "--method" not in helped.stdout, helped.stdout
    assert "my own cam" in helped.stdout
    out = tmp_path / "o"
    args = ["cam", str(tiny_model_file), str(sample_images[0]), "--gain", "5", "-o", str(out)]
    ran = runner.invoke(app, [*args, "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["table"] == [{"gain": 5}]
    ran = runner.invoke(app, args)  # the terminal summary: the generic one
    assert ran.exit_code == 0 and "cam: 1 rows" in ran.stdout, ran.output


def test_builtin_cam_keeps_its_command_when_it_holds_the_name(install, monkeypatch) -> None:
    from netlens.cli import app as app_module

    install("netlens-mycam", "nl_mycam_t2", MYCAM)  # its cam is skipped: the name is taken
    monkeypatch.setenv("NETLENS_DISABLE_PLUGINS", "some-other-plugin")
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))
    app_module._add_plugin_command(["cam", "--help"])
    helped = runner.invoke(app, ["cam", "--help"])
    assert helped.exit_code == 0 and "--method" in helped.stdout and "--gain" not in helped.stdout


def test_help_with_a_blocked_builtin_still_imports_no_torch() -> None:
    code = (
        "import sys; from netlens.cli.app import main; sys.argv=['netlens','--help']\n"
        "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch'"
    )
    env = dict(os.environ, NETLENS_DISABLE_PLUGINS="cam")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
