"""Shared CLI pieces: the error boundary, image-or-model arguments, JSON output, key=value.

Nothing here imports torch at module level: ``netlens --help`` must stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=True, highlight=False)


def cli_errors(func: F) -> F:
    """Map every error to one line on stderr and exit status 1 (``NETLENS_DEBUG=1``: raise).

    Warnings and library log records are captured meanwhile
    (:func:`netlens.diagnostics.captured_warnings`): when the command ends (also with
    ``typer.Exit``) the ones that matter are printed as ``warning:`` lines; after an error
    only the error line is printed. SIGTERM (``timeout``, SLURM, ``docker stop``) stops the
    command as Ctrl-C does (the output folder as it was), with exit status 143 = 128 + 15.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rich.markup import escape

        from ..diagnostics import captured_warnings

        try:
            with sigterm_interrupts() as term, captured_warnings() as diag:
                result = func(*args, **kwargs)
        except typer.Exit:
            if term:  # said as an interrupt (ablate names its rows): SIGTERM's own status
                raise typer.Exit(EXIT_TERM) from None
            _print_notes(diag.notes)
            raise
        except (typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]" + (" (SIGTERM)" if term else ""))
            raise typer.Exit(EXIT_TERM if term else 130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's single error boundary
            if os.environ.get("NETLENS_DEBUG") == "1":
                raise
            console.print(f"[red]error:[/red] {escape(one_line(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        _print_notes(diag.notes)
        return result

    return wrapper  # type: ignore[return-value]


EXIT_TERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM: it unwinds as at Ctrl-C."""


@contextmanager
def sigterm_interrupts() -> Iterator[list[int]]:
    """Inside: SIGTERM raises :class:`Terminated` (once; the list it yields then holds the
    signal). Only where SIGTERM still has its default action, in the main thread: a torchrun
    worker's own handler (:func:`netlens.distributed.setup.exit_on_sigterm`) stays."""
    got: list[int] = []

    def stop(signum: int, frame: object) -> None:
        from ..signals import in_finalizer, resend_later

        if not got and in_finalizer(frame):  # raised here, it would be printed and dropped
            resend_later(signum)
            return
        if not got:
            got.append(signum)
            raise Terminated

    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield got
        return
    signal.signal(signal.SIGTERM, stop)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _print_notes(notes: list[str]) -> None:
    from rich.markup import escape

    for note in notes:
        console.print(f"[yellow]warning:[/yellow] {escape(note)}", soft_wrap=True)


def one_line(exc: BaseException) -> str:
    """The user-facing line for an exception."""
    from ..errors import NetlensError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, NetlensError):  # a value quoted back is shown in part when it is long
        return _QUOTED.sub(_shorten_quoted, text)
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{text} (check the path)"
    if isinstance(exc, OSError) and exc.strerror:  # the OS refused: a name too long, a full disk
        from ..naming import display_path

        name = display_path(exc.filename) if exc.filename else ""
        where = f": {name[:120]}…" if len(name) > 120 else f": {name}" if name else ""
        return f"{exc.strerror}{where} (check the path and the disk)"
    return f"{type(exc).__name__}: {text[:300]} (set NETLENS_DEBUG=1 for the traceback)"


# a quoted value: quotes paired left to right, the opening one not inside a word (an
# apostrophe, "can't") and the closing one not followed by a word character, so the text
# between two unrelated values ("'cam') (known: ..., e.g. plugin '") is never taken for one
_QUOTED = re.compile(r"(?<!\w)'([^']*)'(?!\w)")


def _shorten_quoted(m: re.Match[str]) -> str:
    value = m.group(1)
    return f"'{value[:100]}…'" if len(value) >= 120 else m.group(0)


def split_model_and_images(
    model: str | None, images: list[str] | None
) -> tuple[str | None, list[str]]:
    """Let ``netlens cam img.jpg`` mean "default model, this image".

    When the first positional is an image file or folder of images rather than a model, it is
    taken as an image and the default model is used.
    """
    from ..images import IMAGE_SUFFIXES
    from ..models.foreign_files import is_dcp_folder
    from ..models.hf import is_hf_folder
    from ..models.load import is_model_folder

    rest = list(images or [])
    if model is not None and not model.startswith("zoo:"):
        p = Path(model)
        folder = p.is_dir() and not any(p.glob("*.pt"))
        shards = any(p.glob("*.index.json")) or is_dcp_folder(p)  # sharded weights
        if folder and (is_model_folder(p) or is_hf_folder(p) or shards):
            folder = False  # a netlens model folder, a Hugging Face one, or shards
        if p.suffix.lower() in IMAGE_SUFFIXES or folder:
            return None, [model, *rest]
    return model, rest


def emit_json(payload: Any) -> None:
    """Print a JSON document to stdout (the only thing on stdout with ``--json``)."""
    from ..analyzers.base import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(payload), indent=2) + "\n")
    sys.stdout.flush()


def parse_options(pairs: list[str] | None, example: str = "--opt steps=32") -> dict[str, Any]:
    """``key=value`` strings → a dict, values read as JSON where they parse (``3``, ``true``);
    ``example``: how the flag is given, for the message when one is not key=value."""
    from ..errors import NetlensError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NetlensError(f"option '{pair}' is not key=value (e.g. {example})")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in out:  # the last would win without a word
            raise NetlensError(f"option '{key}' is given twice; give it once")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def repeated_option(params: list[Any], args: list[str]) -> str | None:
    """The line for a single-valued option given twice in ``args`` (a command's raw
    arguments; ``params``: its click parameters), else None. The parser would keep the last
    value without a word (``--layers a --layers b`` analyses only ``b``); options meant to
    repeat (``--opt k=v``) and on/off flags are left alone."""
    options = [p for p in params if getattr(p, "param_type_name", "") == "option"]
    by_flag = {f: p for p in options for f in (*p.opts, *p.secondary_opts)}
    seen: dict[str, tuple[str, str]] = {}  # name -> (flag as spelt, value)
    i = 0
    while i < len(args):
        token, i = args[i], i + 1
        if token == "--":
            break
        flag, value = token, None
        if token.startswith("--") and "=" in token:
            flag, value = token.split("=", 1)
        elif token[:1] == "-" and token[1:2] != "-" and len(token) > 2 and token[:2] in by_flag:
            # -t1, or clustered flags -qn4: the first option that takes a value ends the cluster
            for k in range(1, len(token)):
                opt = by_flag.get("-" + token[k])
                if opt is None or not (opt.is_flag or opt.count):
                    flag, value = "-" + token[k], token[k + 1 :] or None
                    break
        param = by_flag.get(flag)
        if param is None or param.is_flag or param.count:
            continue
        if value is None:  # the value(s) follow
            value = " ".join(args[i : i + param.nargs])
            i += param.nargs
        if param.multiple:
            continue
        if param.name in seen:
            first, before = seen[param.name]
            long = (
                first
                if first.startswith("--")
                else next((f for f in param.opts if f.startswith("--")), first)
            )
            first = first if first == long else f"{long} ({first})"
            shown = [v if len(v) <= 60 else v[:60] + "…" for v in (before, value)]
            if "comma-separated" in (param.help or "") or "--layers" in param.opts:
                return (
                    f"{first} given twice; give several as one comma-separated value: "
                    f"{long} {shown[0]},{shown[1]}"
                )
            return f"{first} given twice ({shown[0]!r}, then {shown[1]!r}); give it once"
        seen[param.name] = (flag, value)
    return None
