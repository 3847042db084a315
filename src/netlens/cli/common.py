"""Shared CLI pieces: option aliases, error mapping, model opening, JSON output.

Nothing here imports torch at module level: ``netlens --help`` must stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ..lens import Lens

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=True, highlight=False)

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Model file (.pt/.pth/.safetensors) or zoo:NAME; default: the zoo's default model.",
        show_default=False,
    ),
]
ImagesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image files or folders; default: the model's sample images.", show_default=False
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch", help="Architecture for a bare state_dict: timm name, tv:NAME, or a netlens arch."
    ),
]
NumClassesOpt = Annotated[
    int | None, typer.Option("--num-classes", help="Override the class count read off the head.")
]
TrustOpt = Annotated[
    bool, typer.Option("--trust", help="Allow unpickling a whole model (runs code from the file).")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:1, mps (default: CUDA if present).")
]
DEFAULT_OUT = Path("netlens-out")


def cli_errors(func: F) -> F:
    """Map every error to one line on stderr and exit status 1 (``NETLENS_DEBUG=1``: raise)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's single error boundary
            if os.environ.get("NETLENS_DEBUG") == "1":
                raise
            from rich.markup import escape

            console.print(f"[red]error:[/red] {escape(one_line(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def one_line(exc: BaseException) -> str:
    """The user-facing line for an exception."""
    from ..errors import NetlensError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, NetlensError):
        return text
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{text} (check the path)"
    return f"{type(exc).__name__}: {text[:300]} (set NETLENS_DEBUG=1 for the traceback)"


def open_lens(
    model: str | None,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    device: str | None = None,
) -> Lens:
    """Load the model a command was given (the default zoo model when None)."""
    from ..models.load import load

    return load(model, arch=arch, num_classes=num_classes, trust=trust, device=device)


def split_model_and_images(
    model: str | None, images: list[str] | None
) -> tuple[str | None, list[str]]:
    """Let ``netlens cam img.jpg`` mean "default model, this image".

    When the first positional is an image file or folder of images rather than a model, it is
    taken as an image and the default model is used.
    """
    from ..images import IMAGE_SUFFIXES

    rest = list(images or [])
    if model is not None and not model.startswith("zoo:"):
        p = Path(model)
        if p.suffix.lower() in IMAGE_SUFFIXES or (p.is_dir() and not any(p.glob("*.pt"))):
            return None, [model, *rest]
    return model, rest


def emit_json(payload: Any) -> None:
    """Print a JSON document to stdout (the only thing on stdout with ``--json``)."""
    from ..analyzers.base import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(payload), indent=2) + "\n")
    sys.stdout.flush()


def save_and_report(result: Any, out: Path, as_json: bool) -> list[Path]:
    """Save a Result's files to ``out``; with ``--json`` print its summary (and files) on stdout."""
    files = result.save(out)
    if as_json:
        emit_json({**result.summary(), "files": [str(f) for f in files]})
    return files


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings → a dict, values read as JSON where they parse (``3``, ``true``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            from ..errors import NetlensError

            raise NetlensError(f"option '{pair}' is not key=value (e.g. --opt steps=32)")
        key, value = pair.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out
