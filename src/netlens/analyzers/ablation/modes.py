"""Ablation modes: what a switched-off unit (or channel) outputs instead of its real output.

- ``identity``: the unit is skipped. A residual block keeps its shortcut and loses its branch
  (see :mod:`.residual`); a same-shape layer passes its input through.
- ``zero``: the output is replaced by zeros.
- ``mean``: the output is replaced by its per-element mean over the dataset (first pass).
- ``noise``: mean + std-matched Gaussian noise, seeded per ablation and batch, so a study is
  repeatable and the fast and naive paths draw the very same noise.

A replacement is a function ``(unit_input, unit_output, batch_index, call=0) -> tensor`` that
never returns (a view of) its arguments, so in-place ops downstream cannot touch cached values.
A residual block's identity replacement also takes ``rest=(args, kwargs)``, the call's other,
non-tensor arguments (:func:`takes_call_args`), since its skip depends on them.
``call`` numbers the unit's calls within one forward pass: a module the model runs several times
(one ``nn.ReLU`` shared by many layers) has statistics per call (:data:`Stats`: one
:class:`UnitStats` each), and each call is replaced with its own mean (and std).
A unit that returns a tuple whose first element is a tensor (Hugging Face Swin and
Data2VecVision layers) is replaced in that element only: a replacement is given that element
as the unit's output, its statistics are that element's, and the engine passes the rest of
the tuple on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import AnalyzerError
from ...image_axis import ImageAxis
from .residual import BlockSkip
from .survey import first_tensor
from .units import Unit

__all__ = [
    "MODES",
    "Replacement",
    "Stats",
    "UnitStats",
    "channel_replacement",
    "collect_call",
    "unit_replacement",
]

MODES = ("identity", "zero", "mean", "noise")

#: ``(unit_input, unit_output, batch, call=0) -> replacement output``
Replacement = Callable[..., torch.Tensor]


@dataclass
class UnitStats:
    """Running per-element mean and std of a unit's output over the dataset (float64 sums),
    over the images only: ``where`` says which axis holds them (:mod:`netlens.image_axis`)."""

    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count: int = 0
    name: str = "the unit"  # for messages: "'layer'" or "'act' (call 2)"
    where: ImageAxis = field(default_factory=ImageAxis)

    def add(self, out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor):
            raise AnalyzerError(
                f"{self.name} does not return a tensor (nor a tuple that starts with one), so it "
                "has no mean; pick layers "
                "inside it that return a tensor (see `netlens layers MODEL`)"
            )
        own = self.where.element_shape(tuple(out.shape))
        if own is None or (self.total is not None and self.total.shape != own):
            had = "other shapes" if self.total is None else _dims(self.total.shape)
            now = _dims(out.shape) if own is None else _dims(own)
            raise AnalyzerError(
                f"{self.name} returns {had} for some images and {now} for others, so it has no "
                "one per-element mean; use --mode zero for it"
            )
        flat = (out.dequantize() if out.is_quantized else out.detach()).to(torch.float64)
        s, q = self.where.total(flat), self.where.total(flat * flat)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += self.where.images(tuple(out.shape))

    def to(self, device: torch.device | str) -> UnitStats:
        """The same sums on ``device`` (CPU copies travel between processes)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return UnitStats(move(self.total), move(self.squares), self.count, self.name, self.where)

    def merge(self, later: UnitStats) -> None:
        """Add another share's sums (float64: equal to one pass up to reassociation)."""
        if later.total is None:
            return
        if self.total is not None and self.total.shape != later.total.shape:
            raise AnalyzerError(
                f"{self.name} returns {_dims(self.total.shape)} for some images and "
                f"{_dims(later.total.shape)} for others, so it has no one per-element "
                "mean; use --mode zero for it"
            )
        self.total = later.total if self.total is None else self.total + later.total
        self.squares = later.squares if self.squares is None else self.squares + later.squares
        self.count += later.count

    @property
    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise AnalyzerError("no statistics collected: the unit did not run on the data")
        return self.total / self.count

    @property
    def std(self) -> torch.Tensor:
        var = self.squares / self.count - self.mean**2  # type: ignore[operator]
        return var.clamp_min(0).sqrt()

    def spread(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Per-element ``values`` (the mean or std) for every image of ``out``, in its dtype,
        on its device."""
        own = self.where.element_shape(tuple(out.shape))
        if own is None or tuple(values.shape) != own:
            now = _dims(out.shape) if own is None else _dims(own)
            raise AnalyzerError(
                f"{self.name} returns {now} here but "
                f"{_dims(values.shape)} when its mean was measured, so the mean cannot "
                "replace it; use --mode zero for it"
            )
        return self.where.spread(values.to(out.device, out.dtype), tuple(out.shape))


#: A unit's statistics: one :class:`UnitStats` for all its calls, or a list with one per call of
#: the unit within a forward pass (a shared module runs several times, at other places and
#: maybe other shapes).
Stats = UnitStats | Sequence[UnitStats]


def _dims(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) or "a scalar"


def collect_call(
    stats: list[UnitStats], call: int, out: Any, name: str, axes: Sequence[ImageAxis] = ()
) -> None:
    """Add ``out``, the output of the unit's ``call``-th call in a forward pass, to its sums
    (its first element when it is a tuple that starts with a tensor: what is replaced);
    ``axes``: where each call's output holds the images (default: first axis)."""
    out = first_tensor(out)
    while len(stats) <= call:
        k = len(stats)
        where = axes[k] if k < len(axes) else ImageAxis()
        stats.append(UnitStats(name=f"'{name}'" + (f" (call {k + 1})" if k else ""), where=where))
    stats[call].add(out)


def merge_calls(into: list[UnitStats], later: Sequence[UnitStats]) -> None:
    """Add another share's per-call sums (a share may have seen more calls)."""
    for call, s in enumerate(later):
        if call < len(into):
            into[call].merge(s)
        else:
            into.append(s)


def call_stats(stats: Stats | None, call: int) -> UnitStats | None:
    """The statistics of a unit's ``call``-th call within a forward pass."""
    if stats is None or isinstance(stats, UnitStats):
        return stats
    if not stats:
        raise AnalyzerError("no statistics collected: the unit did not run on the data")
    if call >= len(stats):
        times = lambda n: "once" if n == 1 else f"{n} times"  # noqa: E731
        raise AnalyzerError(
            f"{stats[0].name} ran {times(call + 1)} in one forward pass but {times(len(stats))} "
            "while its mean was measured (data-dependent control flow?); use --mode zero for it"
        )
    return stats[call]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise AnalyzerError(f"unknown ablation mode '{mode}'; use one of {', '.join(MODES)}")
    return mode


def _noise_seed(seed: int, key: int, batch: int, call: int = 0) -> int:
    return (seed * 1_000_003 + key * 10_007 + batch + call * 998_244_353) % (2**63)


def _fill(
    mode: str,
    out: torch.Tensor,
    stats: Stats | None,
    seed: int,
    key: int,
    batch: int,
    call: int = 0,
) -> torch.Tensor:
    """The values that replace ``out``, the output of the unit's ``call``-th call in the
    forward pass (same shape, fresh memory)."""
    if mode == "zero":
        return torch.zeros_like(out)
    own = call_stats(stats, call)
    if own is None:
        raise AnalyzerError(f"mode '{mode}' needs dataset statistics (a first pass)")
    mean = own.spread(own.mean, out)
    if mode == "mean":
        return mean
    gen = torch.Generator().manual_seed(_noise_seed(seed, key, batch, call))
    eps = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    return mean + own.spread(own.std, out) * eps


def _in_floats(replace: Replacement) -> Replacement:
    """``replace`` on a statically quantized layer's output: made from its float values and
    quantized back with the output's own scale and zero point (the next quantized op reads
    them so)."""

    def in_floats(x: torch.Tensor, out: torch.Tensor, batch: int, call: int = 0) -> torch.Tensor:
        if not out.is_quantized:
            return replace(x, out, batch, call=call)
        new = replace(x, out.dequantize(), batch, call=call)
        if out.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            return torch.quantize_per_channel(
                new,
                out.q_per_channel_scales(),
                out.q_per_channel_zero_points(),
                out.q_per_channel_axis(),
                out.dtype,
            )
        return torch.quantize_per_tensor(new, out.q_scale(), out.q_zero_point(), out.dtype)

    return in_floats


def unit_replacement(
    unit: Unit, mode: str, stats: Stats | None = None, *, seed: int = 0, key: int = 0
) -> Replacement:
    """The replacement for switching off a whole unit (``stats``: one per call, or one for
    all its calls)."""
    check_mode(mode)
    if mode != "identity":
        return _in_floats(
            lambda x, out, batch, call=0: _fill(mode, out, stats, seed, key, batch, call)
        )
    if unit.residual and isinstance(unit.skip, BlockSkip):
        return _block_skip(unit.name, unit.skip)
    if unit.residual and unit.skip is not None:
        skip = unit.skip
        return lambda x, out, batch, call=0: first_tensor(skip(x.clone()))

    def passthrough(x: torch.Tensor, out: torch.Tensor, batch: int, call: int = 0) -> torch.Tensor:
        if x.shape != out.shape:
            raise AnalyzerError(shape_message(unit.name, x.shape, out.shape))
        return x.clone()

    return passthrough


def _block_skip(name: str, skip: BlockSkip) -> Replacement:
    """A traced residual block without its branches, at each call with that call's own
    non-tensor arguments (``rest``: ``(args, kwargs)``, which the engine passes to a
    replacement that :func:`takes_call_args`)."""

    def skipped(
        x: torch.Tensor, out: torch.Tensor, batch: int, call: int = 0, rest: tuple | None = None
    ) -> torch.Tensor:
        return skip(x.clone(), out, rest, name)

    skipped.takes_call_args = True  # type: ignore[attr-defined]
    return skipped


def takes_call_args(replace: Replacement) -> bool:
    """Whether ``replace`` wants each call's non-tensor arguments (keyword ``rest``)."""
    return getattr(replace, "takes_call_args", False) is True


def shape_message(name: str, shape_in: tuple | None, shape_out: tuple | None) -> str:
    a, b = (
        "×".join(map(str, s[1:])) if s is not None else "a non-tensor value"
        for s in (shape_in, shape_out)
    )
    return (
        f"identity cannot skip '{name}': it maps {a} to {b}; use --mode zero or --mode mean "
        "for it, or pick same-shape layers with --layers"
    )


def channel_mask(out: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
    """A (C,) or (G, C) bool mask shaped to broadcast over ``out``'s batch and spatial dims:
    channels on axis 1, or ``last`` (N×H×W×C maps, N×tokens×C token layers)."""
    extra = [1] * (out.dim() - 2)
    if last:
        return mask.view(*mask.shape[:-1], *extra, mask.shape[-1]).to(out.device)
    return mask.view(*mask.shape, *extra).to(out.device)


def channel_replacement(
    mode: str,
    stats: Stats | None,
    mask: torch.Tensor,
    *,
    seed: int = 0,
    key: int = 0,
    last: bool = False,
) -> Replacement:
    """Replace the channels where ``mask`` (C,) is True; the others keep their values
    (``last``: the channels are the output's last axis)."""
    fill_mode = "zero" if mode == "identity" else check_mode(mode)

    def replace(x: torch.Tensor, out: torch.Tensor, batch: int, call: int = 0) -> torch.Tensor:
        fill = _fill(fill_mode, out, stats, seed, key, batch, call)
        return torch.where(channel_mask(out, mask, last), fill, out)

    return _in_floats(replace)


def channel_group_replacement(
    mode: str,
    stats: Stats | None,
    masks: torch.Tensor,
    keys: list[int],
    *,
    seed: int = 0,
    last: bool = False,
) -> Replacement:
    """G channel ablations at once: returns the G copies of the output stacked on the batch dim.

    Each copy is computed exactly as :func:`channel_replacement` would compute it alone.
    """
    fill_mode = "zero" if mode == "identity" else check_mode(mode)

    def replace(x: torch.Tensor, out: torch.Tensor, batch: int, call: int = 0) -> torch.Tensor:
        g, n = len(keys), out.shape[0]
        if fill_mode == "noise":  # a fresh draw per copy, as each ablation alone would draw
            fill = torch.cat([_fill(fill_mode, out, stats, seed, k, batch, call) for k in keys], 0)
            fill = fill.view(g, *out.shape)
        elif fill_mode == "mean":
            fill = _fill("mean", out, stats, seed, 0, batch, call)  # broadcast over the copies
        else:
            fill = torch.zeros((), dtype=out.dtype, device=out.device)
        # one allocation for all G copies: the same elementwise where as channel_replacement
        stacked = torch.where(channel_mask(out, masks, last)[:, None], fill, out[None])
        return stacked.view(g * n, *out.shape[1:])

    return _in_floats(replace)
