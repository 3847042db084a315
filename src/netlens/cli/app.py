"""The root ``netlens`` app: assembles one command per module; nothing heavy at import."""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from ..analyzers.specs import BUILTINS
from . import layers_cmd, plugins_cmd, report_cmd, run_cmd, train_cmd, zoo_cmd
from .analyzer_commands import spec_command


class NetlensGroup(TyperGroup):
    """The root command: a mistyped command line is one line on stderr and exit status 1.

    (Click's usage errors are a framed block and status 2; netlens answers every bad input,
    options included, the same way: one line that says what to do.)
    """

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """The command, once its raw arguments hold no single-valued option twice."""
        name, cmd, rest = super().resolve_command(ctx, args)
        asks_help = "--help" in rest  # help wins, as it does in click
        if cmd is not None and not hasattr(cmd, "commands") and not asks_help:  # not zoo
            from .common import repeated_option

            problem = repeated_option(cmd.params, rest)
            if problem:
                raise click.UsageError(problem, ctx=typer.Context(cmd, info_name=name, parent=ctx))
        return name, cmd, rest

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        except Exception as exc:  # click's usage errors (typer may vendor click: by name)
            kinds = {k.__name__ for k in type(exc).__mro__}
            if "UsageError" not in kinds:
                raise
            if "NoArgsIsHelpError" in kinds:
                exc.show()  # type: ignore[attr-defined]
                code = 0
            else:
                ctx = getattr(exc, "ctx", None)
                where = ctx.command_path if ctx is not None else "netlens"
                message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
                hint = _data_hint(ctx, message) or f"`{where} --help` lists the options"
                typer.echo(f"error: {message} ({hint})", err=True)
                code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _data_hint(ctx: Any, message: str) -> str | None:
    """For ``netlens evaluate MODEL imgs/`` (``cam``'s habit): a command that reads its data
    from ``--data`` is told so."""
    extra = re.match(r"Got unexpected extra argument(?:s|\(s\))? \((.+)\)$", message)
    command = getattr(ctx, "command", None)
    params = getattr(command, "params", ())
    data = next((p for p in params if "--data" in getattr(p, "opts", ())), None)
    if extra is None or data is None:
        return None
    args = [*getattr(ctx, "args", ()), *getattr(ctx, "protected_args", ())]
    given = ctx.params.get(data.name) is not None or any(
        a in data.opts or a.startswith("--data=") for a in args
    )
    if given:  # the extra value is another option's: a list goes comma-separated
        return (
            "an option takes one value, a list comma-separated (a,b); "
            f"`{ctx.command_path} --help` lists them"
        )
    first = extra.group(1).split()[0]
    return f"data goes with --data: `{ctx.command_path} MODEL --data {first}`"


app = typer.Typer(
    cls=NetlensGroup,
    name="netlens",
    help="Open up trained PyTorch image models: where they look, what they learned, what matters.",
    epilog="Plugin analyzers are commands too: `netlens plugins` lists them, "
    "`netlens NAME --help` shows their options.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, [..] in help text kept
    add_completion=True,
)

for spec in BUILTINS:  # the analyzers' commands, made from what they declare
    app.command(spec.command)(spec_command(spec))
app.command("layers")(layers_cmd.layers)
app.command("plugins")(plugins_cmd.plugins)
app.command("run")(run_cmd.run)
app.command("train")(train_cmd.train)
app.command("report")(report_cmd.report)
app.add_typer(zoo_cmd.app, name="zoo")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"netlens {version('netlens')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """netlens: CAMs, kernels, feature maps and layer ablation for PyTorch image models."""


def main() -> None:
    """Console-script entry point (a plugin analyzer named first becomes a command)."""
    # OpenMP threads that sleep instead of spinning when they wait: on a busy machine spinning
    # threads fight the other work (measured: 2 threads 16.7 s → 9.1 s at load 8); set before
    # torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # torch's C++ notices bypass Python
    _add_plugin_command(sys.argv[1:])
    app(prog_name="netlens")  # also under `python -m netlens` (click would say netlens.netlens)


def _add_plugin_command(args: list[str]) -> None:
    if not args or args[0].startswith("-"):
        return
    known = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    if args[0] in known and not _builtin_blocked(args[0]):
        return
    from .analyzer_commands import plugin_command
    from .common import one_line

    try:
        found = _taken_builtin(args[0]) if args[0] in known else plugin_command(args[0])
    except Exception as exc:  # noqa: BLE001 - a plugin's command that cannot be built
        if os.environ.get("NETLENS_DEBUG") == "1":
            raise
        typer.echo(f"error: command '{args[0]}' from a plugin: {one_line(exc)}", err=True)
        sys.exit(1)
    if found is not None:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != args[0]]
        app.command(args[0])(found)
        return
    if args[0] in known:
        return
    broken = _broken_plugins()
    if broken:  # the command asked for may be a broken plugin's: say so, not "No such command"
        typer.echo(
            f"error: no command '{args[0]}'; {len(broken)} plugin(s) failed to load, e.g. "
            f"{broken[0][:200]} (`netlens plugins` lists them)",
            err=True,
        )
        sys.exit(1)


def _builtin_blocked(command: str) -> bool:
    """Whether ``netlens COMMAND`` is a built-in analyzer's whose plugin may be blocked
    (``NETLENS_DISABLE_PLUGINS=cam``), so that another plugin's analyzer may hold its name."""
    if command not in {spec.command for spec in BUILTINS}:
        return False
    from ..plugins import PROJECT
    from ..plugins.manager import BUILTIN_PACKAGE, disabled_from_env

    disabled = disabled_from_env()
    if not disabled:  # the built-ins hold their names (a plugin's same name is skipped)
        return False
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        eps = distribution(BUILTIN_PACKAGE).entry_points
        names = {ep.name for ep in eps if ep.group == PROJECT}
    except PackageNotFoundError:  # not installed as a distribution: ask the host
        return True
    return bool(disabled & (names | {BUILTIN_PACKAGE}))


def _taken_builtin(command: str) -> Any:
    """The command of the plugin analyzer that holds a blocked built-in's name, made from its
    declared options as any plugin analyzer's is; None when the built-in (or none) holds it."""
    from ..plugins.manager import PluginHost
    from .analyzer_commands import analyzer_command

    name = next(spec.name for spec in BUILTINS if spec.command == command)
    entry = PluginHost().analyzers.entries.get(name)
    if entry is None or entry.builtin:
        return None
    return analyzer_command(command, entry.item, runs=name)


def _broken_plugins() -> list[str]:
    from ..plugins.manager import PluginHost

    host = PluginHost()
    host.analyzers, host.commands  # noqa: B018 - a hook that raises is a problem once run
    return [p for p in host.problems if " failed " in p]
