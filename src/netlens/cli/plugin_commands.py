"""Plugin analyzers as first-class commands: ``netlens integrated-gradients MODEL IMAGES``.

When the first word on the command line is no built-in command, the plugin host is asked
(only then, so ``netlens --help`` stays free of torch): a command a plugin registered through
``netlens_register_commands`` is used as is; an analyzer without one gets a command made from
its declared options (``Option("steps", 32, "...", int)`` → ``--steps INTEGER``), plus the
shared model and run options, and runs through the same path as every built-in command.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .common import cli_errors
from .options import Common, DataOpt, ImagesArg, ModelArg, command
from .runner import run_analyzer

__all__ = ["analyzer_command", "plugin_command"]

_KINDS = {int: int, float: float, bool: bool, str: str}


def plugin_command(name: str) -> Callable[..., Any] | None:
    """The command for plugin analyzer or command ``name``; None when no plugin has it."""
    from ..plugins.manager import PluginHost

    try:
        host = PluginHost()
        if name in host.commands:
            return host.commands.get(name)
        if name in host.analyzers:
            return analyzer_command(name, host.analyzers.get(name))
    except Exception:  # noqa: BLE001 - a broken plugin must not break the CLI: typer answers
        return None
    return None


def analyzer_command(name: str, analyzer: Any) -> Callable[..., Any]:
    """A typer command running ``analyzer`` with its declared options as ``--flags``."""
    declared = list(analyzer.declared_options())
    takes = getattr(analyzer, "takes", "images")

    def body(**kwargs: Any) -> None:
        common: Common = kwargs.pop("common")
        model = kwargs.pop("model", None)
        inputs = kwargs.pop("images", None) or kwargs.pop("data", None) or None
        if takes == "images" and inputs:
            from .common import split_model_and_images

            model, inputs = split_model_and_images(model, inputs)
            inputs = inputs or None
        options = {k: v for k, v in kwargs.items() if v is not None}
        run_analyzer(name, model, inputs, options, common)

    params = [_param("model", ModelArg, None)]
    if takes == "images":
        params.append(_param("images", ImagesArg, None))
    elif takes == "data":
        params.append(_param("data", DataOpt, None))
    params += [_option_param(o) for o in declared]
    params.append(inspect.Parameter("common", inspect.Parameter.KEYWORD_ONLY, annotation=Common))
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: p.annotation for p in params}
    body.__doc__ = getattr(analyzer, "description", "") or f"Run the {name} analyzer."
    body.__name__ = name.replace("-", "_")
    return cli_errors(command()(body))


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _option_param(opt: Any) -> inspect.Parameter:
    """One declared option as a typer option (values the analyzer checks itself are text)."""
    kind = _KINDS.get(opt.kind, str)
    flag = "--" + opt.name.replace("_", "-")
    extra = f" ({', '.join(opt.choices)})" if opt.choices else ""
    info = typer.Option(
        flag, help=(opt.help or opt.name) + extra, show_default=opt.default is not None
    )
    annotation = Annotated[kind | None, info]
    return _param(
        opt.name,
        annotation,
        opt.default if kind is not str or opt.default is None else str(opt.default),
    )
