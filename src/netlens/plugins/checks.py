"""What a registry checks when a plugin adds an analyzer or a command: names netlens keeps.

Kept free of torch and typer: the CLI's names are listed here (a test keeps them in step with
:class:`netlens.cli.options.Common`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CLI_NAMES",
    "COMMANDS",
    "FLAGS",
    "RUN_KEYWORDS",
    "SHARED_FLAGS",
    "analyzer_problems",
    "command_names",
    "option_flags",
]

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

#: Flags every analyzer command has already: click's ``--help`` and the shared options' (a
#: test keeps them in step with :class:`netlens.cli.options.Common`).
SHARED_FLAGS = frozenset(
    {"--help", "--size", "-o", "-q", "-d", *("--" + n.replace("_", "-") for n in CLI_NAMES)}
)

#: How an option named so is spelt on the command line (one meaning, one spelling).
FLAGS: dict[str, tuple[str, ...]] = {
    "layer": ("--layer", "--layers", "-l"),
    "layers": ("--layer", "--layers", "-l"),
    "method": ("--method", "-m"),
    "methods": ("--method", "-m"),
    "metrics": ("--metric",),
    "target": ("--target", "-t"),
    "top": ("--top", "-k"),
    "k": ("--top", "-k"),
    "limit": ("--limit", "-n"),
    "fast": ("--fast/--naive",),
    "random_baseline": ("--random-baseline/--no-random-baseline",),
}

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
    shown = [
        o
        for o in _declared(item)
        if getattr(o, "cli", True) and isinstance(getattr(o, "name", None), str)
    ]
    _, clashes = option_flags([o for o in shown if o.name not in CLI_NAMES])
    notes += [
        f"{who}: analyzer '{name}' option '{o}' {why.replace('{name}', name)}"
        for o, why in clashes.items()
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


def _own(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parts(decls: tuple[str, ...]) -> list[str]:
    return [p for d in decls for p in d.split("/")]  # "--fast/--naive": two flags


def _plain(opt: Any) -> tuple[str, ...]:
    """The option's own spelling; a boolean on by default is turned off by ``--no-NAME``."""
    own = _own(opt.name)
    on = getattr(opt, "kind", None) is bool and getattr(opt, "default", None) is True
    return (f"{own}/--no-{own[2:]}",) if on else (own,)


def option_flags(options: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Each declared option's flags on ``netlens NAME``, and what became of those that clash.

    :data:`FLAGS` gives the built-ins' spellings (``--layer``, ``--layers`` and ``-l`` for both
    ``layer`` and ``layers``). A flag two declared options want goes to the one it names
    (``layer`` keeps ``--layer`` and ``-l``, ``layers`` gets ``--layers``; ``top`` keeps
    ``-k``, ``k`` gets ``--k``); an option left with no flag of its own (one named ``help``
    or ``size``, flags every command has) is off the command line: absent from the first
    mapping, and said in the second (option name → why, ``{name}`` for the analyzer's).
    """
    wanted = {o.name: FLAGS.get(o.name) or _plain(o) for o in options}
    claims: dict[str, list[str]] = {}
    for n, decls in wanted.items():
        for p in _parts(decls):
            claims.setdefault(p, []).append(n)

    def holder(flag: str) -> str | None:
        who = claims.get(flag, [])
        if flag in SHARED_FLAGS or not who:
            return None
        named = [n for n in who if _own(n) == flag] or [  # a short flag: its long one's
            n for n in who if _parts(wanted[n])[0] == _own(n)
        ]
        return who[0] if len(who) == 1 else (named[0] if named else None)

    flags: dict[str, tuple[str, ...]] = {}
    clashes: dict[str, str] = {}
    for o in options:
        n, decls = o.name, wanted[o.name]
        kept = tuple(d for d in decls if all(holder(p) == n for p in d.split("/")))
        if not kept and all(
            p not in SHARED_FLAGS and claims.get(p, [n]) == [n] for p in _parts(_plain(o))
        ):
            kept = _plain(o)
        if kept == decls:
            flags[n] = kept
            continue
        lost = [p for p in _parts(decls) if p not in _parts(kept)]
        if any(p in SHARED_FLAGS for p in lost):
            why = f"would be spelt {'/'.join(lost)}, which every analyzer command has"
        else:
            to = sorted({holder(p) or "" for p in lost} - {""})
            why = f"also wants {'/'.join(lost)}, " + (
                f"given to option {', '.join(repr(h) for h in to)}" if to else "as others do"
            )
        if kept:
            flags[n] = kept
            clashes[n] = f"{why}: `netlens {{name}}` spells it {'/'.join(_parts(kept))}"
        else:
            clashes[n] = (
                f"{why}: `netlens {{name}}` leaves it out (give it as "
                f"`netlens run {{name}} --opt {n}=...`, or rename it)"
            )
    return flags, clashes
