"""What a registry checks when a plugin adds an analyzer or a command: names netlens keeps.

Kept free of torch and typer: the CLI's names are listed here (a test keeps them in step with
:class:`netlens.cli.options.Common`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLI_NAMES", "COMMANDS", "RUN_KEYWORDS", "analyzer_problems", "command_names"]

#: ``Analyzer.run``'s own keywords: an option so named would never reach the analyzer.
RUN_KEYWORDS = ("progress", "storage", "strict", "group")

#: The parameters every analyzer command has: the shared model and run options
#: (:class:`netlens.cli.options.Common`) and the inputs; an option so named is left out of
#: ``netlens NAME`` (it stays settable by ``netlens run NAME --opt`` and in Python).
CLI_NAMES = frozenset(
    {
        "out", "json", "quiet", "threads", "skip_bad", "strict", "distributed", "max_pixels",
        "arch", "arch_kwargs", "num_classes", "classes", "label_map", "task", "output", "trust",
        "device", "input_size", "crop_pct", "mean", "std", "interpolation", "channel_order",
        "model", "images", "data", "resume", "common",
    }
)  # fmt: skip

#: netlens' own commands besides the analyzers' (``netlens top`` is ``top-activations``').
COMMANDS = ("layers", "plugins", "run", "train", "report", "zoo")


def command_names(*, own: bool = True) -> set[str]:
    """Every built-in command: ``cam``, ``top``, ..., ``layers``, ``run``, ``zoo``.

    ``own=False``: without the commands named as their analyzer (``cam``), which run whichever
    analyzer holds that name (a plugin's, when the built-in plugin is blocked).
    """
    from ..analyzers.specs import BUILTINS

    specs = {spec.command for spec in BUILTINS if own or spec.command != spec.name}
    return specs | set(COMMANDS)


def analyzer_problems(name: str, item: Any, who: str) -> tuple[str | None, list[str]]:
    """Why analyzer ``item`` cannot be registered as ``name`` (None: it can), and notes on
    what of it works otherwise than its author meant; ``who`` names the plugin."""
    if not callable(getattr(item, "run", None)):
        return (
            f"{who}: analyzer '{name}' ({type(item).__name__}) has no "
            "run(lens, inputs=None, **options) method; skipped"
        ), []
    try:
        declared = [getattr(o, "name", str(o)) for o in _declared(item)]
    except Exception as exc:  # noqa: BLE001 - the plugin's own code
        return f"{who}: analyzer '{name}': declared_options() failed: {exc!r:.120}; skipped", []
    from ..analyzers.base import Analyzer

    if isinstance(item, Analyzer):
        kept = [o for o in declared if o in RUN_KEYWORDS]
        if kept:
            return (
                f"{who}: analyzer '{name}' declares option '{kept[0]}', a name Analyzer.run "
                f"keeps for itself ({', '.join(RUN_KEYWORDS)}); rename it; skipped"
            ), []
    notes = [
        f"{who}: analyzer '{name}' option '{o}' is named like the shared option "
        f"--{o.replace('_', '-')}, so `netlens {name}` leaves it out (give it as "
        f"`netlens run {name} --opt {o}=...`, or rename it)"
        for o in declared
        if o in CLI_NAMES
    ]
    if name in command_names(own=False):
        notes.append(
            f"{who}: analyzer '{name}' is named like netlens' own command `netlens {name}`, "
            f"which stays netlens'; run it as `netlens run {name}` (or rename it)"
        )
    return None, notes


def _declared(item: Any) -> tuple[Any, ...]:
    declared = getattr(item, "declared_options", None)
    return tuple(declared()) if callable(declared) else ()
