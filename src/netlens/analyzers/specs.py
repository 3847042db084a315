"""What every built-in analyzer takes, declared once and free of torch.

The analyzers use these declarations (``options = specs.CAM.options``) and the CLI builds its
commands from them (:mod:`netlens.cli.analyzer_commands`), so ``netlens cam --help`` shows
exactly what ``lens.cam(...)`` accepts, in the same words, without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .options import MAX_SEED, Option, as_is

__all__ = ["ABLATE", "BUILTINS", "CAM", "EVALUATE", "FEATURES", "KERNELS", "SANITY", "STATS", "TOP"]

CAM_METHODS = (
    "cam, gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam, eigencam, ablationcam, "
    "or a plugin's (see `netlens plugins`)"
)
ABLATION_MODES = ("identity", "zero", "mean", "noise")
ABLATION_METRICS = ("accuracy", "top5", "loss", "f1", "prob", "kl", "agreement")
SANITY_THRESHOLD = 0.5


@dataclass(frozen=True)
class Spec:
    """A built-in analyzer as the CLI and the docs see it.

    Attributes:
        name: the registry name (``lens.run(name)``).
        command: the CLI command (``netlens COMMAND``).
        takes: ``images``, ``data`` or ``model``.
        help: the command's help: what it answers and writes.
        options: the declared options.
        resumable: finished rows are kept in ``--out`` and ``--resume`` goes on from them.
        description: one line for listings (``netlens plugins``).
        distributed: the analyzer combines partial results, so it may run sharded (torchrun).
    """

    name: str
    command: str
    takes: str
    help: str
    options: tuple[Option, ...]
    resumable: bool = False
    description: str = ""
    distributed: bool = False


def channel_list(value: Any) -> bool | tuple[int, ...]:
    """False: blocks; True or ``"all"``: every channel; ``"0,5,9"`` or a list: those channels."""
    if value in (False, "false", "none", ""):
        return False
    if value in (True, "all", "true"):
        return True
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        chosen = tuple(sorted({int(str(c).strip()) for c in items}))
    except ValueError:
        raise ValueError("not all, or a list of channel numbers such as 0,5,9") from None
    if not chosen or chosen[0] < 0:
        raise ValueError("not all, or a list of channel numbers 0 and up")
    return chosen


def channel_numbers(value: Any) -> tuple[int, ...]:
    """``"0,5,9"``, ``[0, 5, 9]`` or ``5`` → ``(0, 5, 9)`` (features, top: named channels)."""
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, (list, tuple)) else [items]
    try:
        chosen = tuple(_whole(c) for c in items if str(c).strip())
    except (TypeError, ValueError):
        chosen = ()
    if not chosen or min(chosen) < 0:
        raise ValueError("not a list of channel numbers 0 and up, such as 0,5,9")
    return chosen


def _whole(item: Any) -> int:
    """A whole number from ``"5"``, ``5`` or ``5.0``; ``ValueError`` for ``True``, ``5.5``."""
    if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
        raise ValueError(item)
    return int(str(item).strip()) if isinstance(item, str) else int(item)


def layer_selector(value: Any) -> Any:
    """A layer selector: text (``auto``, names, calls, globs, ``type:NAME``, comma-separated),
    a module of the model, or a non-empty list of those; anything else is refused here, in one
    line, rather than deep inside the analysis."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(i, str) or _is_module(i) for i in items):
        raise ValueError(
            "not a layer selector: give a name, a glob, type:NAME, a module, or a list of them"
        )
    return value


def _is_module(value: Any) -> bool:
    """An ``nn.Module`` (told without importing torch: modules have ``named_modules``)."""
    return not isinstance(value, type) and callable(getattr(value, "named_modules", None))


def folder(value: Any) -> Any:
    """A folder path: text or ``os.PathLike`` (``pathlib.Path``)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError("not a folder path")
    return value


def mapping(value: Any) -> dict[str, Any]:
    """A dict of further options (Python only)."""
    if not isinstance(value, dict):
        raise ValueError("not a dict of {option: value}")
    return value


def fractions(value: Any) -> tuple[float, ...]:
    """ROAD's removal fractions: ``"0.2,0.5"`` or numbers in (0, 1], sorted, each once."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        got = sorted({float(v) for v in items})
    except (TypeError, ValueError):
        raise ValueError("not fractions: give numbers such as 0.2,0.5 or (0.2, 0.5)") from None
    if not got or not all(0 < v <= 1 for v in got):  # NaN is not in (0, 1] either
        raise ValueError("not fractions in (0, 1]: give numbers such as 0.2,0.5")
    return tuple(got)


def callables(value: Any) -> dict[Any, Any]:
    """A dict whose values are functions (Python only)."""
    if not isinstance(value, dict) or not all(callable(f) for f in value.values()):
        raise ValueError("not a dict of {unit name or block class: fn(module, x)}")
    return value


def _layer(default: Any, help: str) -> Option:
    return Option("layer", default, help, layer_selector)


def _batch(default: int, help: str = "Images per forward pass.") -> Option:
    return Option("batch_size", default, help, int, low=1)


def _limit(default: int | None, help: str = "Use the first N items of the data.") -> Option:
    return Option("limit", default, help, int, low=1)


_TARGET = Option(
    "target",
    None,
    "What to explain: a class index or name (default: the prediction), one per image "
    "comma-separated, pos/neg (one-logit model), output:K (regression), region:NAME "
    "(segmentation).",
    as_is,
)
_SEED = Option("seed", 0, "Random seed (recorded in the outputs).", int, low=0, high=MAX_SEED)

CAM = Spec(
    "cam",
    "cam",
    "images",
    "Class activation maps: overlay PNGs, side-by-side figures, .npy maps and cam.json.",
    (
        Option("method", "gradcam", f"CAM method: {CAM_METHODS}.", as_is),
        _layer(
            "auto",
            "auto, a layer name, a call of it (relu@-1), a glob, type:NAME, or "
            "several comma-separated, fused (see `netlens layers`).",
        ),
        _TARGET,
        Option(
            "top",
            None,
            "One map per class for the K most probable (instead of --target).",
            int,
            low=1,
        ),
        _batch(32, "Masked forward passes at once (Score-CAM, Ablation-CAM)."),
        Option("fuse", "max", "How maps of several layers combine.", str, choices=("max", "mean")),
        Option("chunk", 16, "Images per forward/backward pass.", int, low=1),
        Option("alpha", 0.5, "Heatmap opacity in the overlays, 0 to 1.", float, low=0, high=1),
    ),
    description="Class activation maps (CAM, Grad-CAM, Grad-CAM++, Score-CAM, ...).",
    distributed=True,
)

FEATURES = Spec(
    "features",
    "features",
    "images",
    "Feature-map grids of a layer per image (top channels by mean activation).",
    (
        _layer(
            "auto",
            "auto (the last feature maps), a layer or call, or several "
            "comma-separated (one figure each).",
        ),
        Option("top", 16, "How many channels to show, largest mean activation first.", int, low=1),
        Option("channels", None, "Explicit channels instead, e.g. 0,5,9.", channel_numbers),
        Option(
            "normalize",
            "channel",
            "Scale each map on its own (channel) or all together (joint).",
            str,
            choices=("channel", "joint"),
        ),
        Option("overlay", False, "Draw the maps over the input image.", bool),
    ),
    description="Feature maps of a layer for an image (top channels by mean activation).",
)

KERNELS = Spec(
    "kernels",
    "kernels",
    "model",
    "Kernel grid of a layer (RGB for first layers, matrices for 1×1) + kernels.json/csv.",
    (
        _layer(None, "Conv or linear layer (name, glob, type:NAME); default: the first conv."),
        Option("reduce", "mean", "Deeper convs: mean, l2 or channel:K over the inputs.", str),
        Option(
            "normalize",
            "filter",
            "Scale each tile on its own (filter) or all together (joint).",
            str,
            choices=("filter", "joint"),
        ),
        Option("sort", False, "Order filters by norm, largest first.", bool),
        Option("max_filters", 64, "Show at most this many filters.", int, low=1),
        Option(
            "dead_tol",
            1e-3,
            "A filter whose norm is below this share of the largest is near zero (dead).",
            float,
            low=0,
        ),
    ),
    description="Weights of a conv/linear layer as a tile grid (+ per-filter statistics).",
)

STATS = Spec(
    "stats",
    "stats",
    "data",
    "Per-layer mean, std, near-zero and dead-unit fractions, histograms (PNG, JSON, CSV).",
    (
        Option(
            "layers",
            None,
            "Layers (names, calls, globs, type:NAME); default: the activation modules.",
            layer_selector,
        ),
        Option("eps", 0.0, "Values ≤ eps count as near zero; ≤ eps on every input: dead.", float),
        Option("bins", 50, "Histogram bins.", int, low=1, high=10_000),
        Option(
            "hist_range",
            None,
            "Fixed histogram range LOW,HIGH (default: the first batch's, widened by 10%).",
            as_is,
        ),
        _limit(None),
        _batch(32),
    ),
    description="Activation statistics over a dataset (mean, std, dead units, histograms).",
    distributed=True,
)

TOP = Spec(
    "top-activations",
    "top",
    "data",
    "Top-activating inputs per channel, with the patch that drives each peak (PNG, JSON, CSV).",
    (
        _layer("auto", "One layer or call (default: the last spatial one)."),
        Option(
            "channels",
            None,
            "Channels to show, e.g. 0,5,9 (default: the most active).",
            channel_numbers,
        ),
        Option("k", 8, "Top inputs per channel.", int, low=1),
        Option("max_channels", 16, "Channels shown without --channels.", int, low=1),
        _limit(None),
        _batch(32),
    ),
    description="Top-activating inputs (and patches) per channel of a layer over a dataset.",
    distributed=True,
)

SANITY = Spec(
    "sanity",
    "sanity",
    "images",
    "Randomise the model's layers from the top down and watch the heatmaps: a verdict per "
    "method (picture strip, similarity curve, sanity.csv/.json). The model itself is never "
    "changed: a copy is randomised.",
    (
        Option("method", "gradcam", "CAM method(s), comma-separated.", as_is),
        _layer("auto", "The CAM layer (see `netlens cam --help`)."),
        _TARGET,
        Option(
            "threshold",
            SANITY_THRESHOLD,
            "Pass when the fully randomised maps' Spearman is below this.",
            float,
            low=-1,
            high=1,
        ),
        _SEED,
    ),
    description="Adebayo et al. sanity check: randomise layers from the top, compare maps.",
    distributed=True,
)

EVALUATE = Spec(
    "evaluate",
    "evaluate",
    "data",
    "Score CAM heatmaps: a table per method (mean ± 95 % CI) with chance / random baselines. "
    "Prints the number of forward passes before it starts; writes evaluate.csv/.json and "
    "evaluate-scores.png / evaluate-curves.png.",
    (
        Option("methods", "gradcam", "CAM method(s), comma-separated.", as_is),
        Option(
            "metrics",
            None,
            "Metrics, comma-separated (default: all the data allows): "
            "pointing, energy, deletion, insertion, road-morf, road-lerf, randomization.",
            as_is,
        ),
        _layer("auto", "The CAM layer (see `netlens cam --help`)."),
        Option(
            "target",
            "label",
            "Explain the true class (label) or the predicted one (pred).",
            str,
            choices=("label", "pred"),
        ),
        _limit(64, "Images to evaluate (each costs many forward passes)."),
        Option("chunk", 16, "Images per CAM call and metric call.", int, low=1),
        Option(
            "masks",
            None,
            "Mask PNGs for a --data folder: DIR/<class>/<name>.png (default: "
            "<data>_masks when it exists).",
            folder,
        ),
        Option("steps", 32, "Deletion/insertion steps.", int, low=1, high=10_000),
        _batch(64, "Perturbed images per forward pass."),
        Option("tolerance", 0, "Pointing-game tolerance in pixels.", int, low=0),
        Option(
            "fractions",
            None,
            "ROAD removal fractions, in (0, 1] (default 0.1 to 0.9).",
            fractions,
            cli=False,
        ),
        Option("random_baseline", True, "Also score a random pixel order.", bool),
        Option(
            "fill",
            "zero",
            "What deleted pixels become: zero (a zero model input: the mean colour of normalised "
            "inputs, black for --mean 0 --std 1 or 0..255 models) or blur.",
            str,
            choices=("zero", "blur"),
        ),
        Option(
            "noise",
            0.01,
            "ROAD imputation noise: its std in normalised input units, 0 to 100.",
            float,
            low=0,
            high=100,
        ),
        _SEED,
        Option(
            "metric_options", None, "More options for plugin metrics (a dict).", mapping, cli=False
        ),
    ),
    description="Score heatmaps: pointing game, energy in mask, deletion/insertion, ROAD.",
    distributed=True,
)

ABLATE = Spec(
    "ablate",
    "ablate",
    "data",
    "Switch blocks (or channels) off one at a time and measure what each is worth.",
    (
        Option(
            "layers",
            None,
            "Units to ablate (names, globs, type:X); default: every residual "
            "block, else each feature-stack child.",
            layer_selector,
        ),
        Option(
            "mode",
            None,
            "identity (default; skip the unit), zero, mean or noise (zero for --channels).",
            str,
            choices=ABLATION_MODES,
        ),
        Option(
            "metric",
            "accuracy",
            "accuracy, top5, loss, f1; or, needing no labels, prob, kl, agreement.",
            str,
            choices=ABLATION_METRICS,
        ),
        Option(
            "channels",
            False,
            "Ablate channels of the one --layer layer instead of blocks: "
            "all, or a list such as 0,5,9 (with cumulative curves).",
            channel_list,
        ),
        _batch(64),
        _limit(None),
        _SEED,
        Option(
            "resamples",
            2000,
            "Bootstrap resamples for the confidence intervals (10 to 100000).",
            int,
            low=10,
            high=100_000,
        ),
        Option("points", 17, "Points on the cumulative curves.", int, low=2),
        Option(
            "fast",
            True,
            "Reuse the cached prefix of the network (--naive: re-run the whole "
            "model per ablation, the slow reference path).",
            bool,
        ),
        Option("cache_mb", 1024, "Memory for cached activations (MB).", int, low=0),
        Option("identity_fns", None, "{unit or block class: fn(module, x)}.", callables, cli=False),
    ),
    resumable=True,
    description="Layer ablation: switch blocks (or channels) off, measure what each is worth.",
    distributed=True,
)

BUILTINS = (CAM, FEATURES, KERNELS, STATS, TOP, SANITY, EVALUATE, ABLATE)
