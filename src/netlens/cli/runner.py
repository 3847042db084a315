"""What every analyzer command does around the analysis: load, run, save, report, exit.

``run_analyzer`` is the CLI's only path to an analyzer: it sets the thread count, holds the
output folder's lock for the whole command (a second command writing into the same folder stops
at once), loads the model, runs the analyzer with a progress sink fit for the terminal (a rich
bar on a TTY, plain lines when piped, nothing with ``--quiet``/``--json``), writes the result's
files, and reports: warnings and skipped inputs on stderr, the summary table or ``--json`` on
stdout. Exit status 0; 3 when inputs were skipped (unless ``--skip-bad``); 1 on an error.

Under torchrun (or ``--distributed N``) every process runs the command on its share
(:mod:`netlens.distributed`); rank 0 alone holds the lock, draws progress, writes and reports,
and a failure is said once, by the rank where it happened: ``error: rank 1: ...``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from .options import Common

if TYPE_CHECKING:
    from ..analyzers.base import Result
    from ..distributed import Group
    from ..lens import Lens

__all__ = [
    "EXIT_SKIPPED",
    "err",
    "open_lens",
    "out",
    "report_skipped",
    "run_analyzer",
    "set_threads",
]

EXIT_SKIPPED = 3
err = Console(stderr=True, highlight=False)
# piped (``netlens layers | grep Conv2d``, ``> table.txt``), a table keeps its cells whole:
# rich would squeeze it into 80 columns and cut shapes and counts to "1×40×5…"
_PIPED = not sys.stdout.isatty() and "COLUMNS" not in os.environ
out = Console(highlight=False, soft_wrap=True, width=1000 if _PIPED else None)


def set_threads(requested: int | None, default: int | None = None) -> int | None:
    """Set torch's CPU threads: ``--threads``, else ``NETLENS_THREADS``, else ``default``.

    ``default`` None keeps torch's own choice. Returns the number set (None: untouched).
    """
    from ..errors import NetlensError
    from ..parallel import check_workers

    env = os.environ.get("NETLENS_THREADS", "").strip()
    flag = "--threads"
    if requested is None and env:
        if not env.isdecimal() or int(env) < 1:
            raise NetlensError(f"NETLENS_THREADS must be a whole number ≥ 1, not {env!r}")
        requested, flag = int(env), "NETLENS_THREADS="
    n = requested or default
    if n is not None:
        import torch

        torch.set_num_threads(check_workers(flag, n))
    return n


def set_max_pixels(value: str | None) -> None:
    """``--max-pixels``: checked, then handed to every image reader (and worker) by env."""
    if value is None:
        return
    from ..image_decode import MAX_PIXELS_ENV, parse_pixels, pixel_limit

    os.environ[MAX_PIXELS_ENV] = str(pixel_limit(parse_pixels(value, "--max-pixels")))


def open_lens(model: str | None, common: Common) -> Lens:
    """Load the model a command was given (the default zoo model when None)."""
    from ..models.load import load

    return load(model, **common.load_kwargs())


def run_analyzer(
    name: str,
    model: str | None,
    inputs: Any,
    options: dict[str, Any],
    common: Common,
    *,
    report: Callable[[Result], None] | None = None,
    storage: Any = None,
    threads: int | None = None,
) -> Result:
    """Run analyzer ``name`` for a command and report it (see the module doc)."""
    from ..distributed.setup import join_from_env
    from ..output import folder_lock

    set_threads(common.threads, threads)
    set_max_pixels(common.max_pixels)
    group, device = join_from_env(common.device)
    sharded = {"group": group} if group.world > 1 else {}
    common = dataclasses.replace(common, device=device)
    lock = folder_lock(common.out) if group.main else nullcontext()
    with said_once(group), lock, netlens_warnings() as said:
        lens = open_lens(model, common)
        progress = group.main and not (common.quiet or common.json)
        keywords = run_keywords(
            name,
            lens.host.analyzers.get(name),
            progress=progress,
            strict=common.strict,
            storage=storage,
            **sharded,
        )
        result = lens.host.checked_result(name, lens.run(name, inputs, **keywords, **options))
        files = result.save(common.out) if group.main else []
    if not group.main:  # rank 0 reports and gives the exit status (a launcher stops the
        return result  # other ranks when one exits non-zero: rank 0 might not have written)
    for line in said:
        err.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    finish(result, len(files), common, report)
    return result


def run_keywords(name: str, analyzer: Any, **keywords: Any) -> dict[str, Any]:
    """The run keywords (``progress``, ``strict``, ``storage``, ``group``) ``analyzer`` takes.

    An :class:`~netlens.analyzers.base.Analyzer` takes them all; any other object (the plugin
    contract is only ``run(lens, inputs=None, **options)``) gets those its ``run`` names as
    parameters, so one that refuses unknown options still runs from the CLI.
    """
    import inspect

    from ..analyzers.base import Analyzer

    if isinstance(analyzer, Analyzer):
        return keywords
    try:
        params = inspect.signature(analyzer.run).parameters
    except (TypeError, ValueError):  # no signature to read: the contract's minimum
        params = {}
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if "group" in keywords and "group" not in named:
        from ..errors import AnalyzerError

        raise AnalyzerError(
            f"{name} does not combine results across processes; run it in one process "
            "(without --distributed or torchrun)"
        )
    return {k: v for k, v in keywords.items() if k in named}


@contextmanager
def said_once(group: Group) -> Iterator[None]:
    """In a distributed run, the first failure is said once, by its rank: ``rank R: cause``;
    ranks that stop because of it leave silently with status 1, and a rank that lost contact
    with no line to say (another died without a word) with status ``EXIT_LOST``, so that the
    launcher names the rank that died."""
    if group.world == 1:
        yield
        return
    from ..distributed import EXIT_LOST, DistributedError, LostContact

    try:
        yield
    except Exception as exc:
        if isinstance(exc, typer.Exit):
            raise
        if group.fail(exc):
            raise DistributedError(group.say(exc)) from exc
        raise typer.Exit(EXIT_LOST if isinstance(exc, LostContact) else 1) from None


@contextmanager
def netlens_warnings() -> Iterator[list[str]]:
    """Collect warnings: netlens' own, and the notes made of libraries' that matter (fonts
    lacking characters, timm renames), one line each, printed by the caller; the rest are
    dropped (shown with NETLENS_DEBUG=1), so they never break the one-line promise."""
    from ..diagnostics import captured_warnings

    lines: list[str] = []
    with captured_warnings() as diag:
        yield lines
    lines.extend(diag.notes)


def finish(
    result: Result, n_files: int, common: Common, report: Callable[[Result], None] | None
) -> None:
    """Warnings and skipped items on stderr, the summary on stdout; exit 3 if items skipped."""
    if result.meta.get("layer_auto") and not common.json:
        layers = ", ".join(result.meta.get("layers") or [])
        err.print(f"layer: [bold]{escape(layers)}[/bold] (chosen by auto; set --layer to change)")
    data = (result.meta.get("run") or {}).get("data") or {}
    source = str(data.get("source") or "")
    if source.endswith("(from the model card)") and not common.json:  # no --data given
        err.print(f"data: {escape(source)}; set --data to change", soft_wrap=True)
    for line in result.meta.get("warnings") or []:
        err.print(f"[yellow]warning:[/yellow] {escape(str(line))}", soft_wrap=True)
    if common.json:
        from .common import emit_json

        emit_json({**result.summary(), "out": str(common.out)})
    elif report is not None:
        report(result)
    else:
        from .tables import summary_table

        table = summary_table(result)
        out.print(table if table is not None else escape(result.headline()))
    if not common.json:
        err.print(f"{result.name}: wrote {n_files} files to {common.out}/", soft_wrap=True)
    report_skipped(result.skipped, common)


def _under_outside_torchrun() -> bool:
    """A worker torchrun started (not ``--distributed``, whose launcher passes status 3 on)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not run_id.startswith("netlens-")


def report_skipped(lines: list[Any], common: Common) -> None:
    """Unreadable inputs on stderr, one line each; exit status 3 unless ``--skip-bad``."""
    for line in lines:
        err.print(f"[yellow]skipped:[/yellow] {escape(str(line))}", soft_wrap=True)
    if lines and not common.skip_bad and _under_outside_torchrun():
        err.print(
            f"{len(lines)} input(s) could not be read and were skipped (exit status 0 under "
            "torchrun, which counts any other as a failed worker and restarts or fails the job; "
            "they are listed above and in the JSON)",
            soft_wrap=True,
        )
        return
    if lines and not common.skip_bad:
        err.print(
            f"{len(lines)} input(s) could not be read and were skipped (exit status 3; "
            "--skip-bad to accept)",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_SKIPPED)
