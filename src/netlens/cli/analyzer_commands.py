"""Analyzer commands, made from the analyzers' declared options: one vocabulary by construction.

``netlens cam``, ``netlens stats``, ... and every plugin analyzer (``netlens saliency``) are built
here from the options their analyzer declares (:mod:`netlens.analyzers.specs` for the
built-ins, ``declared_options()`` for plugins): ``Option("max_filters", 64, "...", int)`` becomes
``--max-filters INTEGER``, with the short flags and spellings of :data:`FLAGS`, plus the shared
model and run options, and every command runs through :func:`netlens.cli.runner.run_analyzer`.
A plugin's own command (``netlens_register_commands``) is used as it is.

Plugin analyzers are looked up only when the first word on the command line is no built-in
command, so ``netlens --help`` stays free of torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..plugins.checks import FLAGS, option_flags
from .common import cli_errors
from .options import Common, DataOpt, ImagesArg, ModelArg, ResumeOpt, command
from .runner import run_analyzer

__all__ = ["FLAGS", "analyzer_command", "plugin_command", "spec_command", "spelling"]

_KINDS = {int: int, float: float, bool: bool, str: str}


def spec_command(spec: Any) -> Callable[..., Any]:
    """The command of a built-in analyzer (a :class:`netlens.analyzers.specs.Spec`)."""
    return _make(spec.name, spec.options, spec.takes, spec.help, spec.resumable, spec.distributed)


def analyzer_command(name: str, analyzer: Any, runs: str | None = None) -> Callable[..., Any]:
    """The command of a plugin analyzer, from its ``declared_options()``; ``runs``: the
    analyzer's name when the command's is another (``netlens top`` runs ``top-activations``)."""
    doc = (type(analyzer).__doc__ or "").strip().splitlines()
    help_text = getattr(analyzer, "description", "") or (doc[0] if doc else "")
    takes = getattr(analyzer, "takes", "images")
    declared = getattr(analyzer, "declared_options", lambda: ())()  # a plain object: none
    from ..plugins.checks import CLI_NAMES

    # an option named like a shared one (--mean, --device, ...) would clash with it: left out
    # here (said at registration), it stays settable by `netlens run NAME --opt` and in Python
    declared = [o for o in declared if getattr(o, "name", None) not in CLI_NAMES]
    sharded = bool(getattr(analyzer, "distributed", False))
    help_text = help_text or f"Run the {runs or name} analyzer."
    return _make(name, declared, takes, help_text, False, sharded, runs=runs)


def plugin_command(name: str) -> Callable[..., Any] | None:
    """The command for plugin analyzer or command ``name``; None when no plugin has it.

    A plugin that failed to load is in the host's problems (``netlens plugins``); an error
    while building the command is raised (the caller says it in one line).
    """
    from ..plugins.manager import PluginHost

    host = PluginHost()
    if name in host.commands:
        return host.commands.get(name)
    if name in host.analyzers:
        return analyzer_command(name, host.analyzers.get(name))
    return None


def _make(
    name: str,
    declared: Any,
    takes: str,
    help_text: str,
    resumable: bool,
    sharded: bool,
    runs: str | None = None,
) -> Callable[..., Any]:
    """The command: ``--distributed`` only for an analyzer that combines results across
    processes (``sharded``); the others would start N processes only to refuse.

    Two declared options that want one flag (``layer`` and ``layers``: ``--layer``) get one
    each, an option named like a flag every command has (``help``) is left out
    (:func:`netlens.plugins.checks.option_flags`; ``netlens plugins`` says so).
    """
    flags, _ = option_flags([o for o in declared if getattr(o, "cli", True)])
    shown = [o for o in declared if getattr(o, "cli", True) and o.name in flags]

    def body(**kwargs: Any) -> None:
        common: Common = kwargs.pop("common")
        resume = kwargs.pop("resume", False)
        model, inputs = _inputs(kwargs, takes)
        options = {k: v for k, v in kwargs.items() if v is not None}
        for o in shown:  # before any model is read, in the words the user typed
            if o.name in options and o.kind is not bool:
                o.check(options[o.name], name, spelt=flags[o.name][0].split("/")[0])
        _run(runs or name, model, inputs, options, common, resume if resumable else None)

    params = [_param("model", ModelArg, None)]
    if takes == "images":
        params.append(_param("images", ImagesArg, None))
    elif takes == "data":
        params.append(_param("data", DataOpt, None))
    params += [_option_param(o, flags[o.name]) for o in shown]
    if resumable:
        params.append(_param("resume", ResumeOpt, False))
    params.append(inspect.Parameter("common", inspect.Parameter.KEYWORD_ONLY, annotation=Common))
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: p.annotation for p in params}
    body.__doc__ = help_text
    body.__name__ = name.replace("-", "_")
    return cli_errors(command(distributed=sharded)(body))


def _inputs(kwargs: dict[str, Any], takes: str) -> tuple[str | None, Any]:
    """The model and the images or data; ``netlens cam img.jpg`` means the default model."""
    model = kwargs.pop("model", None)
    inputs = kwargs.pop("images", None) or kwargs.pop("data", None) or None
    if takes == "images":
        from .common import split_model_and_images

        model, images = split_model_and_images(model, inputs)
        inputs = images or None
    return model, inputs


def _run(
    name: str,
    model: str | None,
    inputs: Any,
    options: dict[str, Any],
    common: Common,
    resume: bool | None,
) -> None:
    """Run; a resumable study keeps its rows in ``--out`` and says where when interrupted."""
    if resume is None:
        run_analyzer(name, model, inputs, options, common)
        return
    from ..storage import FolderStorage
    from .runner import err

    storage = FolderStorage(common.out, resume)
    try:
        run_analyzer(name, model, inputs, options, common, storage=storage)
    except KeyboardInterrupt:
        where = ", ".join(str(p) for p in storage.paths) or str(common.out)
        err.print(
            f"[red]interrupted[/red]: finished rows are in {where}; run the same command with "
            "--resume to go on",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


def spelling(name: str) -> str:
    """How option ``name`` is spelt on the command line: ``batch_size`` → ``--batch-size``."""
    return FLAGS[name][0].split("/")[0] if name in FLAGS else "--" + name.replace("_", "-")


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _option_param(opt: Any, flags: tuple[str, ...]) -> inspect.Parameter:
    """One declared option as a typer option (values the analyzer checks itself are text),
    spelt ``flags`` (:func:`netlens.plugins.checks.option_flags`)."""
    kind = _KINDS.get(opt.kind, str)
    choices = (
        f" ({', '.join(opt.choices)})"
        if opt.choices and opt.choices[0] not in (opt.help or "")
        else ""
    )
    if kind is bool:  # on by default: --no-NAME turns it off (in flags)
        info = typer.Option(*flags, help=(opt.help or opt.name) + choices, show_default=False)
        return _param(opt.name, Annotated[bool, info], bool(opt.default))
    # None on the command line means "the analyzer's default", so the analyzer stays the one
    # place a default lives; help shows it.
    shown = opt.default is not None and opt.default is not False
    default = f"  [default: {opt.default}]" if shown else ""
    info = typer.Option(*flags, help=(opt.help or opt.name) + choices + default)
    return _param(opt.name, Annotated[kind | None, info], None)
