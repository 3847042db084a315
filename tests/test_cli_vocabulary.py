"""One CLI vocabulary: an option spelled the same means the same in every command.

Also the contract's placement rules: analyzers compute and never draw progress or write files.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from netlens.cli.app import app

SRC = Path(__file__).resolve().parents[1] / "src" / "netlens"


def _commands() -> dict[str, Any]:
    """Every command (typer vendors its own click: duck-typed, not isinstance)."""
    group = typer.main.get_command(app)
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        if hasattr(cmd, "commands"):
            out |= {f"{name} {n}": c for n, c in cmd.commands.items()}
        else:
            out[name] = cmd
    return out


def _is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def _options(cmd: Any) -> dict[str, Any]:
    return {o: p for p in cmd.params if _is_option(p) for o in p.opts}


def test_every_flag_means_one_thing_across_commands() -> None:
    """Same flag → same kind (flag or value) and the same short/long partners everywhere."""
    seen: dict[str, tuple[str, str, bool, frozenset[str]]] = {}
    clashes = []
    for name, cmd in _commands().items():
        for flag, opt in _options(cmd).items():
            if flag == "--help":
                continue
            key = (opt.help or "", opt.name or "", opt.is_flag, frozenset(opt.opts))
            first = seen.setdefault(flag, key)
            if first[2] != key[2] or first[3] != key[3]:
                clashes.append(f"{flag}: {name} differs ({key[3]} vs {first[3]})")
    assert not clashes, clashes


@pytest.mark.parametrize(
    "flag",
    ["--out", "--json", "--quiet", "--threads", "--skip-bad", "--strict"],
)
def test_run_options_on_every_analyzer_command(flag: str) -> None:
    for name in ("cam", "features", "kernels", "stats", "top", "ablate", "evaluate", "sanity"):
        assert flag in _options(_commands()[name]), (name, flag)


@pytest.mark.parametrize("flag", ["--arch", "--num-classes", "--classes", "--device", "--trust"])
def test_model_options_wherever_a_model_is_loaded(flag: str) -> None:
    for name in (
        "cam",
        "features",
        "kernels",
        "stats",
        "top",
        "ablate",
        "evaluate",
        "sanity",
        "layers",
        "run",
    ):
        assert flag in _options(_commands()[name]), (name, flag)


def test_flags_are_shown_as_flags() -> None:
    """`--json` takes no value: its help line must not show a metavar."""
    cmd = _commands()["cam"]
    ctx = cmd.make_context("cam", [], resilient_parsing=True)
    for param in cmd.params:
        if _is_option(param) and param.is_flag:
            record = param.get_help_record(ctx)
            assert record is not None and "<" not in record[0] and "BOOL" not in record[0]


def test_every_option_has_help() -> None:
    missing = [
        f"{name} {p.opts[0]}"
        for name, cmd in _commands().items()
        for p in cmd.params
        if _is_option(p) and not (p.help or "").strip()
    ]
    assert not missing, missing


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


ANALYZERS = sorted((SRC / "analyzers").rglob("*.py"))


@pytest.mark.parametrize("path", ANALYZERS, ids=lambda p: str(p.relative_to(SRC)))
def test_analyzers_import_no_rich_and_write_no_files(path: Path) -> None:
    assert not any(n == "rich" or n.startswith("rich.") for n in _imports(path))
    text = path.read_text()
    for call in ("write_text(", "write_bytes(", "np.save(", ".savefig(", "open("):
        allowed = path.name == "base.py" and call in ("write_text(", "write_bytes(")
        assert allowed or call not in text, f"{path.name} calls {call}"


def test_help_imports_no_torch() -> None:
    code = (
        "import sys; from netlens.cli.app import main; sys.argv=['netlens','--help']\n"
        "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_layers_table_goes_to_stdout() -> None:
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["layers"])
    assert res.exit_code == 0, res.output
    assert "Conv2d" in res.stdout and "conv" in res.stdout.lower()
