"""Many no-grad forward passes of one model, each batch run the fastest exact way measured.

Score-CAM runs hundreds of masked copies of an image through the model. Which way of running
them is fastest depends on the model, the input size and how busy the machine is. Measured on
2 cores, per batch of 32 (timm resnet18): at 224² oneDNN's layout with batches side by side
was fastest (0.44 s; conv+BN folded 0.46 s, the model 0.65 s); at 96² oneDNN's layout in one
call (0.080 s; batches side by side 0.087 s, folded 0.093-0.12 s), and oneDNN's copy costs
about 0.15 s to make; on the zoo's small CNN the folded copy in one call, where oneDNN's would
not repay its making. So the first batches race the candidates (each is real work, timed) and
the rest run on the fastest. The candidates on CPU are:

- engines: a copy with conv+BN folded (``torch.fx.experimental.optimization.fuse``) from
  :data:`MIN_PASSES` passes on (fewer run on the model itself); a copy in oneDNN's layout
  (``optimize_for_inference``) when the work left, timed on the folded copy, is
  :data:`REPAY` times what making it is expected to cost. Inputs are channels-last
  (oneDNN's faster convolutions; the values do not change).
- thread modes: one call on all of torch's threads (``whole``), or the batch cut into parts
  run side by side, one thread each (``split``, :mod:`netlens.parallel`: a busy machine slows
  those in proportion rather than stalling every operator). They are raced on the folded
  copy; oneDNN's copy runs in the mode that won.

A copy is kept only when its outputs equal the model's on the first masked inputs to 1e-4 of
their scale (the copies compute the same function; only float rounding differs); the user's
model is never touched. The winner is kept for later calls (more images, more layers). Other
devices run the folded copy (or the model) in one call per batch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..parallel import map_batches, one_thread_per_op

__all__ = ["MIN_PASSES", "REPAY", "InferencePasses", "fast_layout"]

MIN_PASSES = 128  # fewer passes: the model as is (preparing a copy costs about a few passes)
REPAY = 4  # try oneDNN's layout when the work left is this many times its preparation
_ONEDNN_COST = 3  # oneDNN's preparation in units of the folding's, measured: 2.5-4.7×

Make = Callable[[int, int], torch.Tensor]  # the inputs of passes start..stop
Way = tuple[str, str]  # (engine, thread mode)


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last images: oneDNN's faster convolutions on CPU; the values do not change."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class InferencePasses:
    """Runs many no-grad passes of ``model`` and picks the output with ``select``.

    ``map(make, n, batch_size)`` returns the outputs of the inputs ``make(start, stop)`` for
    consecutive batches of ``batch_size`` covering ``n`` passes, in order. Safe to use from one
    thread at a time; its batches may run on several.
    """

    def __init__(
        self,
        model: nn.Module,
        select: Callable[[Any], torch.Tensor],
        min_passes: int | None = None,
        repay: float | None = None,
    ) -> None:
        self.model, self.select = model, select
        self.min_passes = MIN_PASSES if min_passes is None else min_passes
        self.repay = REPAY if repay is None else repay
        self.engines: dict[str, nn.Module] = {"model": model}
        self.times: dict[Way, float] = {}  # seconds per pass, one timed batch each
        self.best: Way | None = None
        self._fold_cost: float | None = None  # None: not tried yet
        self._onednn_tried = False
        self._example = torch.empty(0)
        self._reference: torch.Tensor | None = None  # the model's outputs on the example

    def map(self, make: Make, n: int, batch_size: int) -> torch.Tensor:
        workers = torch.get_num_threads()
        if n >= self.min_passes:
            self._fold(make(0, min(n, 2)))
        outs = []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            way = self._next(n - start, workers)
            begin = time.perf_counter()
            with torch.inference_mode():
                x = make(start, stop)
            outs.append(self._run(way, x))
            if self.best is None and self._fold_cost is not None:  # racing
                self.times.setdefault(way, (time.perf_counter() - begin) / (stop - start))
        return torch.cat(outs) if outs else torch.empty(0)

    # -- which way ---------------------------------------------------------------------------
    def _next(self, left: int, workers: int) -> Way:
        """The way to run the next batch: each candidate once, then the fastest.

        The thread modes are raced on the folded copy (or the model); oneDNN's copy, when
        worth making, runs in the mode that won (the modes ranked alike on every model timed).
        """
        if self.best is not None:
            return self.best
        engine = "folded" if "folded" in self.engines else "model"
        if self._fold_cost is None or not self._on_cpu():  # few passes, or not a CPU
            return (engine, "split" if self._on_cpu() else "whole")
        ways = [(engine, m) for m in (("split", "whole") if workers > 1 else ("whole",))]
        untimed = [w for w in ways if w not in self.times]
        if untimed:
            return untimed[0]
        mode = min(ways, key=self.times.__getitem__)[1]
        if not self._onednn_tried and self._worth_onednn(left):
            self._onednn()
        if "onednn" in self.engines and ("onednn", mode) not in self.times:
            return ("onednn", mode)
        self.best = min(self.times, key=self.times.__getitem__)
        return self.best

    def _worth_onednn(self, left: int) -> bool:
        self._onednn_tried = True
        if "folded" not in self.engines or self._fold_cost is None:
            return False  # fx could not trace the model, so its oneDNN copy cannot be made
        per_pass = min(self.times.values())
        return per_pass * left > self.repay * _ONEDNN_COST * self._fold_cost

    def _on_cpu(self) -> bool:
        p = next(self.model.parameters(), None)
        return p is None or p.device.type == "cpu"

    # -- running -----------------------------------------------------------------------------
    def _run(self, way: Way, x: torch.Tensor) -> torch.Tensor:
        engine, mode = way
        call = self._caller(engine)
        if mode == "split" and len(x) > 1 and torch.get_num_threads() > 1:
            with one_thread_per_op() as workers:
                return torch.cat(map_batches(call, x.tensor_split(min(workers, len(x))), workers))
        return call(x)

    def _caller(self, engine: str) -> Callable[[torch.Tensor], torch.Tensor]:
        module = self.engines[engine]
        layout = (lambda x: x.contiguous()) if engine == "onednn" else fast_layout

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():  # per thread: grad mode is thread-local
                return self.select(module(layout(x))).float()

        return call

    # -- copies ------------------------------------------------------------------------------
    def _fold(self, example: torch.Tensor) -> None:
        if self._fold_cost is not None:
            return
        from torch.fx.experimental.optimization import fuse

        self._example = example  # the first masked inputs: every copy is checked on them
        self._fold_cost = self._keep("folded", lambda: fuse(self.model))

    def _onednn(self) -> None:
        from torch.fx.experimental.optimization import optimize_for_inference

        self._keep("onednn", lambda: optimize_for_inference(self.model))

    def _keep(self, name: str, make: Callable[[], nn.Module]) -> float:
        """Add engine ``name`` when its copy can be made and equals the model on the example.

        Returns the seconds making the copy took (whether it was kept or not).
        """
        begin = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # fx's notes on untraceable code
                self.engines[name] = make()  # a traced deep copy; the model is left alone
                cost = time.perf_counter() - begin
                if self._reference is None:
                    self._reference = self._caller("model")(self._example)
                ref, got = self._reference, self._caller(name)(self._example)
        except Exception:  # noqa: BLE001 - cannot be traced or converted: run without it
            self.engines.pop(name, None)
            return time.perf_counter() - begin
        tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
        if got.shape != ref.shape or not bool((got - ref).abs().max() <= tol):
            self.engines.pop(name, None)
        return cost
