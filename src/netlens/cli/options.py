"""The CLI's one vocabulary: every shared option is defined here, once.

Commands declare only their own options and take a ``common: Common`` parameter; the
:func:`command` decorator adds the shared ones to the command's signature (so ``--help`` shows
them and typer parses them) and hands them over bundled:

- model loading (commands that open a model): ``--arch``, ``--arch-kwargs``, ``--num-classes``,
  ``--classes``, ``--label-map``, ``--task``, ``--output``, ``--trust``, ``--device``, and the
  preprocessing overrides ``--input-size/--size``, ``--crop-pct``, ``--mean``, ``--std``,
  ``--interpolation``, ``--channel-order``;
- running: ``--out/-o`` (a folder), ``--json`` (the summary on stdout), ``--quiet/-q``,
  ``--threads``, ``--skip-bad`` / ``--strict`` (the bad-item policy), ``--distributed N``
  (the command re-launched in N processes through torchrun's API; :mod:`netlens.distributed`).

Options that several commands share with one meaning (``--layer/-l``, ``--target/-t``,
``--method/-m``, ``--data/-d``, ``--limit/-n``, ``--top/-k``, ``--batch-size``, ``--seed``)
are the ``Annotated`` aliases below. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OUT = Path("netlens-out")

# -- positional arguments --------------------------------------------------------------------
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

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")
]

# -- shared analyzer options (one meaning, one spelling everywhere) --------------------------
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="A folder with class subfolders, a .csv list (path,label) or a dataset name "
        "(shapes, fashion-mnist, mnist5k); default: the dataset on the model card.",
        show_default=False,
    ),
]
LayerOpt = Annotated[
    str,
    typer.Option(
        "--layer",
        "--layers",
        "-l",
        help="auto, a layer name, a call of it (relu@-1), a glob, type:NAME, or several "
        "comma-separated (see `netlens layers`).",
    ),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layer",
        "--layers",
        "-l",
        help="Layers: names, calls (relu@1), globs, type:NAME, comma-separated.",
        show_default=False,
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="What to explain: a class index or name (default: the prediction), one per image "
        "given, comma-separated, pos/neg (one-logit model), output:K (regression), "
        "region:NAME (segmentation).",
        show_default=False,
    ),
]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        "-m",
        help="CAM method: cam, gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam, "
        "eigencam, ablationcam, or a plugin's (see `netlens plugins`).",
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option("--method", "-m", help="CAM method(s), comma-separated (see `cam --help`)."),
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", "-n", help="Use the first N items of the data (default: all).", min=1),
]
TopOpt = Annotated[int, typer.Option("--top", "-k", help="How many to show.", min=1)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.", min=1)]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (recorded in the outputs).", min=0)
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume", help="Keep finished rows from an earlier interrupted run into the same --out."
    ),
]


# -- shared model and run options, bundled ---------------------------------------------------
@dataclass
class Common:
    """The shared options of one command invocation (see the module doc)."""

    out: Path = DEFAULT_OUT
    json: bool = False
    quiet: bool = False
    threads: int | None = None
    skip_bad: bool = False
    strict: bool = False
    distributed: int | None = None
    max_pixels: str | None = None
    arch: str | None = None
    arch_kwargs: str | None = None
    num_classes: int | None = None
    classes: str | None = None
    label_map: str | None = None
    task: str | None = None
    output: str | None = None
    trust: bool = False
    device: str | None = None
    input_size: str | None = None
    crop_pct: float | None = None
    mean: str | None = None
    std: str | None = None
    interpolation: str | None = None
    channel_order: str | None = None

    def load_kwargs(self) -> dict[str, Any]:
        """``netlens.load`` keyword arguments for the model options that were given."""
        keys = ("arch", "num_classes", "trust", "device", "task", "output")
        kwargs = {k: getattr(self, k) for k in keys}
        if self.arch_kwargs:
            kwargs["arch_kwargs"] = parse_json_option("--arch-kwargs", self.arch_kwargs, dict)
        for key in ("classes", "label_map", "crop_pct", "interpolation", "channel_order"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.input_size:
            kwargs["input_size"] = parse_numbers("--input-size", self.input_size, int, (1, 2, 3))
        for key in ("mean", "std"):
            if getattr(self, key):
                kwargs[key] = parse_numbers(f"--{key}", getattr(self, key), float, (1, 3))
        return kwargs


def _path(text: str) -> Any:
    """A path; empty text stays text, which :func:`check_values` refuses (``Path("")`` is
    ``.``: an unset shell variable would have written into the current folder)."""
    return Path(text) if str(text).strip() else text


RUN_OPTIONS: dict[str, Any] = {
    "out": (Path, typer.Option("--out", "-o", help="Output folder.", parser=_path), DEFAULT_OUT),
    "json": (
        bool,
        typer.Option("--json", help="Print a machine-readable summary on stdout."),
        False,
    ),
    "quiet": (bool, typer.Option("--quiet", "-q", help="No progress output."), False),
    "threads": (
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads for torch (default: NETLENS_THREADS, else torch's own choice).",
            min=1,
            show_default=False,
        ),
        None,
    ),
    "skip_bad": (
        bool,
        typer.Option(
            "--skip-bad",
            help="Unreadable images are expected: skip them and exit 0 (default: skip, exit 3).",
        ),
        False,
    ),
    "strict": (
        bool,
        typer.Option("--strict", help="Stop at the first unreadable image (exit 1)."),
        False,
    ),
    "distributed": (
        int | None,
        typer.Option(
            "--distributed",
            help="Run in N processes on this machine, sharding the data (torchrun; one GPU "
            "each when there are GPUs; see docs/scaling-out.md).",
            min=1,
            show_default=False,
        ),
        None,
    ),
    "max_pixels": (
        str | None,
        typer.Option(
            "--max-pixels",
            help="Largest image to decode, in pixels (default 100M; 250M and 2.5e8 work).",
            show_default=False,
        ),
        None,
    ),
}

MODEL_OPTIONS: dict[str, Any] = {
    "arch": (
        str | None,
        typer.Option(
            "--arch",
            help="Architecture of a bare state_dict: a timm name, tv:NAME (torchvision; "
            "tv:NAME@IMAGENET1K_V1 for that weights entry's preprocessing), a netlens arch, or "
            "your own as path/file.py:Class or package.module:factory.",
            show_default=False,
        ),
        None,
    ),
    "arch_kwargs": (
        str | None,
        typer.Option(
            "--arch-kwargs",
            help="Keyword arguments for the architecture, as JSON: '{\"width\": 64}'.",
            show_default=False,
        ),
        None,
    ),
    "num_classes": (
        int | None,
        typer.Option(
            "--num-classes",
            help="Class count (default: read off the state_dict's head).",
            min=1,
            show_default=False,
        ),
        None,
    ),
    "classes": (
        str | None,
        typer.Option(
            "--classes",
            help="Class names: a file (one per line, or JSON) or a comma-separated list.",
            show_default=False,
        ),
        None,
    ),
    "label_map": (
        str | None,
        typer.Option(
            "--label-map",
            help="Where data labels the model names otherwise go: a file of 'data,model' lines "
            "or a JSON object (folder or CSV name → model class name or index).",
            show_default=False,
        ),
        None,
    ),
    "input_size": (
        str | None,
        typer.Option(
            "--input-size",
            "--size",
            help="The input size the model takes: 28, 28,28 or 1,28,28 (default: what the model "
            "says, else the first image's size).",
            show_default=False,
        ),
        None,
    ),
    "crop_pct": (
        float | None,
        typer.Option(
            "--crop-pct",
            help=(
                "Centre crop share: resize to size/crop-pct, crop size; above 1 the image is "
                "padded (default: the model's)."
            ),
            min=0.01,
            max=1.25,
            show_default=False,
        ),
        None,
    ),
    "mean": (
        str | None,
        typer.Option(
            "--mean",
            help="Normalisation mean per channel, e.g. 0.5,0.5,0.5 (default: the model's).",
            show_default=False,
        ),
        None,
    ),
    "std": (
        str | None,
        typer.Option(
            "--std",
            help="Normalisation std per channel, e.g. 0.5,0.5,0.5 (default: the model's).",
            show_default=False,
        ),
        None,
    ),
    "interpolation": (
        str | None,
        typer.Option(
            "--interpolation",
            help="Resize filter: bilinear, bicubic, nearest, lanczos, box or hamming (default: "
            "the model's).",
            show_default=False,
        ),
        None,
    ),
    "channel_order": (
        str | None,
        typer.Option(
            "--channel-order",
            help="rgb, or bgr for a model trained on images as OpenCV reads them (cv2.imread) "
            "or converted from Caffe; --mean/--std then in B,G,R order (default: the model's).",
            show_default=False,
        ),
        None,
    ),
    "task": (
        str | None,
        typer.Option(
            "--task",
            help="multiclass, multilabel, binary, regression or dense (default: from the output).",
            show_default=False,
        ),
        None,
    ),
    "output": (
        str | None,
        typer.Option(
            "--output",
            help="Which output to explain when forward returns a dict/tuple/object (key, "
            "index or attribute; default: logits, out, or the first tensor).",
            show_default=False,
        ),
        None,
    ),
    "trust": (
        bool,
        typer.Option("--trust", help="Allow unpickling a whole model (runs code from the file)."),
        False,
    ),
    "device": (
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda, cuda:1 or mps (default: CUDA when present, else CPU).",
            show_default=False,
        ),
        None,
    ),
}


def command(*, model: bool = True, run: bool = True, distributed: bool = True) -> Callable[[F], F]:
    """Add the shared options to a command whose last parameter is ``common: Common``
    (``distributed=False``: without ``--distributed``, for a command that runs in one process).

    Example:
        >>> @command()
        ... def kernels(model: ModelArg = None, *, common: Common) -> None: ...
    """
    groups = {**(RUN_OPTIONS if run else {}), **(MODEL_OPTIONS if model else {})}
    if not distributed:
        groups.pop("distributed", None)

    def decorate(func: F) -> F:
        hints = get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "common"
        ]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, info],
            )
            for name, (kind, info, default) in groups.items()
        ]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        flags = {p.name: _flag(p.name, p.annotation) for p in [*own, *shared]}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            check_values(kwargs, flags)
            if kwargs.get("skip_bad") and kwargs.get("strict"):
                from ..errors import NetlensError

                raise NetlensError(
                    "--skip-bad skips unreadable images and --strict stops at the first one; "
                    "give one of them"
                )
            names = {f.name for f in fields(Common)}
            common = Common(
                **{k: kwargs.pop(k) for k in list(kwargs) if k in groups and k in names}
            )
            if (common.distributed or 1) > 1:  # the same command, in N processes
                from ..distributed.launch import relaunch
                from ..parallel import check_workers

                check_workers("--distributed", common.distributed)  # type: ignore[arg-type]

                raise typer.Exit(relaunch(common.distributed))  # type: ignore[arg-type]
            return func(**kwargs, common=common)

        params = own + shared
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read our signature, not the function's
        return wrapper  # type: ignore[return-value]

    return decorate


def _flag(name: str, annotation: Any) -> str:
    """How the user spelt parameter ``name``: its first flag, or its name for an argument."""
    for info in getattr(annotation, "__metadata__", ()):
        decls = [info.default, *(getattr(info, "param_decls", None) or ())]  # typer: "--x" first
        spelt = [d for d in decls if isinstance(d, str) and d.startswith("-")]
        if spelt:
            return next((d for d in spelt if d.startswith("--")), spelt[0])
    return name.upper()


def check_values(values: dict[str, Any], flags: dict[str, str]) -> None:
    """One line for a value no option takes: empty text (an unset shell variable, say, which
    would otherwise mean "the default" or even "this folder"), a number beyond 64 bits (torch
    and the C libraries overflow), or an infinite or NaN number."""
    from ..errors import NetlensError

    for name, value in values.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            flag = flags.get(name, name)
            if isinstance(item, str) and not item.strip():
                raise NetlensError(f"{flag} is empty; give a value or leave it out")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > 2**63 - 1:
                raise NetlensError(f"{flag} {item} is too large (at most {2**63 - 1})")
            if isinstance(item, float) and not math.isfinite(item):
                raise NetlensError(f"{flag} must be a finite number, not {item}")


def parse_numbers(flag: str, text: str, kind: type, counts: tuple[int, ...]) -> tuple[Any, ...]:
    """``"1,28,28"`` → ``(1, 28, 28)``; one line when the text is not that many numbers."""
    from ..errors import NetlensError

    parts = [p for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip()]
    try:
        values = tuple(kind(p.strip()) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise NetlensError(f"{flag} takes {want} comma-separated {kind.__name__}s, not {text!r}")
    return values


def parse_json_option(flag: str, text: str, kind: type) -> Any:
    """A JSON option value of the given kind, or one line saying what is wrong."""
    import json

    from ..errors import NetlensError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetlensError(f"{flag} is not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, kind):
        raise NetlensError(f"{flag} must be a JSON {kind.__name__}, got {text!r}")
    return value
