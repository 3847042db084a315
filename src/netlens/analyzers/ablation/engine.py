"""Run ablations: the fast cached-prefix path (torch.fx) and the naive full re-run.

Naive: a forward hook on the unit *returns* the replacement output (captum's way) and the whole
model runs again. Fast: the model is traced once with ``torch.fx`` (the units as leaf modules);
per batch one full run of the traced graph gives the baseline logits and caches, at each unit's
call, its input, its output and the values later nodes still need (a clone each, so in-place ops
cannot change them). An ablation then runs only the nodes after its unit, from the replacement
output on. The nodes are the same calls on the same values with the same batch, so the logits are
bit-for-bit those of the naive run. Channel ablations stacked on the batch (``copies``) run the
suffix on a larger batch: equal to the naive run within the float rounding of kernels whose
rounding depends on the batch size (oneDNN's, ~1e-6 of the logits' scale), bit-for-bit where
the kernels do not (timm resnet18). For a sequential stack (``nn.Sequential``, a ResNet's
stages) the graph is a chain and the suffix is simply the slice of layers after the unit; for
general graphs, values from before the unit that later nodes read (long skips) are cached too.

Safety nets: the traced graph is used only if it reproduces the model's own logits on the first
batch (:meth:`Engine.check`); a module that does not trace (data-dependent control flow) runs
as it is, a leaf of the graph (:mod:`.tracing`), and the units inside it, like a unit that is
not a single node of the graph (called twice, nested in another unit), fall back to the naive
path, which is always correct; a model whose own ``forward`` does not trace runs naive
throughout. So does a unit the first run of the graph calls more often than it has nodes (a
shared ``nn.ReLU`` also called inside a block that is a unit, hence a leaf of the graph whose
inside the graph does not show): a forward pre-hook counts each unit's real calls on that run.
Stacked channel ablations are checked once per unit and batch size against a copy run alone
(:meth:`Engine.ablated`).

A unit that returns a tuple (or list) whose first element is a tensor (Hugging Face Swin and
Data2VecVision layers: ``(hidden_states, attentions or None)``) is replaced in that element
only: the replacement is told and makes element 0, and the hook returns the same kind of
container with the other elements unchanged (:func:`with_first`). Such a unit always takes the
naive path (the prefix run finds it out and drops it from the fast units).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ...errors import AnalyzerError, NetlensError
from ...fresh_input import fresh
from ...output_reader import OutputReader
from ...write_guard import tensors_in
from .modes import Replacement, takes_call_args
from .scoring import Metric, Outcomes
from .survey import first_tensor, is_tensor_tuple
from .tracing import UnitTracer, trace_units

__all__ = [
    "Ablation",
    "BatchCache",
    "Engine",
    "hooked",
    "logits_of",
    "run_ablations",
    "with_first",
]


def logits_of(out: Any, output: OutputReader | str | int | None = None) -> torch.Tensor:
    """The N×K class logits in a model's output (``output``: the lens's reader, or a key for
    :func:`netlens.targets.model_output`); N×1 for a single-logit binary model (scored as
    ``[0, z]``: negative, positive)."""
    read = output if isinstance(output, OutputReader) else OutputReader(output)
    logits = read(out)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise NetlensError(
            f"an ablation study needs N×classes logits (or one logit); the model returned "
            f"{tuple(logits.shape)} (pick another output with --output KEY, or wrap the model)"
        )
    return logits


def with_first(output: Any, first: torch.Tensor) -> Any:
    """``output`` (a tuple, list or namedtuple) with ``first`` as its element 0, the rest as
    they were, in a container of the same type."""
    items = [first, *output[1:]]
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple
        return type(output)(*items)
    return type(output)(items)


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _rest(node: fx.Node, env: dict[fx.Node, Any]) -> tuple[tuple, dict] | None:
    """A unit node's other arguments, ``(args, kwargs)``, as the run gave them (None when one
    is a tensor: only non-tensor arguments are fixed in a residual block's skip)."""
    read = lambda a: fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
    rest = (tuple(read(tuple(node.args[1:]))), dict(read(dict(node.kwargs))))
    return None if tensors_in(rest) else rest


@dataclass
class BatchCache:
    """What the prefix run of one batch leaves for the ablations of that batch."""

    x: torch.Tensor
    logits: torch.Tensor
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    frontier: dict[str, dict[fx.Node, Any]] = field(default_factory=dict)
    rest: dict[str, tuple[tuple, dict] | None] = field(default_factory=dict)

    def nbytes(self) -> int:
        tensors = [self.x, *self.inputs.values(), *self.outputs.values()]
        tensors += [
            v for f in self.frontier.values() for v in f.values() if isinstance(v, torch.Tensor)
        ]
        return sum(t.numel() * t.element_size() for t in tensors)


_UnitTracer = UnitTracer  # looked up here at each trace


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` up to float rounding: the largest difference within a relative
    tolerance of the logits' scale (their largest magnitude), non-finite entries equal. Kernels
    whose rounding depends on the batch size (oneDNN's pointwise, depthwise and grouped
    convolutions: ~1e-6 on logits of ~1) pass; a suffix that mixes the images of a batch
    differs at that scale."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not a.is_floating_point():
        return False
    finite = torch.isfinite(b)
    if not torch.equal(finite, torch.isfinite(a)) or not torch.equal(a[~finite], b[~finite]):
        return False
    if not bool(finite.any()):
        return True
    rtol = max(1e-4, 4 * torch.finfo(a.dtype).eps)
    scale = float(b[finite].abs().max())
    return float((a[finite] - b[finite]).abs().max()) <= rtol * scale


class Engine:
    """Baseline and ablated logits for a model and a set of units.

    Args:
        model: the module (used as is; never modified; callers put it in eval mode).
        units: dotted names of the units to ablate.
        fast: use the traced cached-prefix path where possible (False: always naive).
        output: how the output reads (the lens's :class:`~netlens.output_reader.OutputReader`),
            or which output holds the logits, when forward returns a dict/tuple/object.
    """

    def __init__(
        self,
        model: nn.Module,
        units: list[str],
        *,
        fast: bool = True,
        output: OutputReader | str | int | None = None,
    ) -> None:
        self.model = model
        self.output = output
        self.units = list(units)
        self.modules = {n: model.get_submodule(n) for n in self.units}
        self.graph: fx.GraphModule | None = None
        self.nodes: list[fx.Node] = []
        self.unit_index: dict[str, int] = {}
        self.trace_error: str | None = None
        self.untraced: dict[str, str] = {}  # modules run as they are: they did not trace
        self.hidden_calls: dict[str, int] = {}  # units run more often than the graph shows
        self._stack_checked: set[tuple[str, int, int]] = set()  # (unit, images, copies)
        self._no_stack: set[str] = set()
        if fast:
            self._trace()

    # -- tracing ---------------------------------------------------------------------------
    def _trace(self) -> None:
        traced = trace_units(self.model, self.units, _UnitTracer)
        if traced.graph is None:
            self.trace_error = traced.error
            return
        gm, self.untraced = traced.graph, traced.untraced
        nodes = list(gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if any(len(n.args) != 1 for n in inputs[1:]):
            self.trace_error = "the model's forward takes more than one input"
            return
        self._start = {n: n.args[0] for n in inputs[1:]}  # optional arguments: their defaults
        calls: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            if n.op == "call_module" and n.target in self.modules:
                calls.setdefault(str(n.target), []).append(i)
        # called once, on a tensor (a module that takes no input, a parameter table: naive path)
        self.unit_index = {
            u: idx[0] for u, idx in calls.items() if len(idx) == 1 and nodes[idx[0]].all_input_nodes
        }
        self.graph, self.nodes = gm, nodes
        self._note_untraced()
        self._interp = fx.Interpreter(gm, garbage_collect_values=False)
        self._frees = self._last_uses(nodes)
        self._frontier = {u: self._frontier_of(i) for u, i in self.unit_index.items()}

    def _note_untraced(self) -> None:
        """Name, in ``trace_error``, the modules that did not trace and the units inside them
        (which take the naive path)."""
        notes = []
        for name, error in self.untraced.items():
            inside = [u for u in self.units if u.startswith(name + ".") and not self.is_fast(u)]
            if inside:
                notes.append(f"{name} does not trace ({error}): naive path for {', '.join(inside)}")
        self.trace_error = "; ".join(notes) or None

    @staticmethod
    def _last_uses(nodes: list[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
        last: dict[fx.Node, fx.Node] = {}
        for n in nodes:
            for arg in n.all_input_nodes:
                last[arg] = n
        frees: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last.items():
            frees.setdefault(user, []).append(value)
        return frees

    def _frontier_of(self, index: int) -> list[fx.Node]:
        """Nodes before ``index`` whose values nodes after ``index`` still read."""
        before = set(self.nodes[:index])
        needed = {a for n in self.nodes[index + 1 :] for a in n.all_input_nodes}
        return [n for n in self.nodes[:index] if n in needed and n in before]

    def is_fast(self, unit: str) -> bool:
        """Whether ablations of ``unit`` run only the suffix."""
        return unit in self.unit_index

    @contextmanager
    def _counting(self) -> Iterator[None]:
        """On every run of the graph: count each fast unit's real calls, and send a unit called
        other than once (its node's, plus calls hidden inside another unit, a leaf of the
        graph, which may depend on the batch) to the naive path, which replaces it at every
        call. A batch's cache is used only for the units that ran once in it."""
        if not self.unit_index:
            yield
            return
        seen = dict.fromkeys(self.unit_index, 0)
        handles = []
        try:
            for u in self.unit_index:

                def count(module: nn.Module, args: tuple, u: str = u) -> None:
                    seen[u] += 1

                handles.append(self.modules[u].register_forward_pre_hook(count))
            yield
        finally:
            for h in handles:
                h.remove()
        hidden = {u: k for u, k in seen.items() if k != 1}
        self.hidden_calls.update(hidden)
        for u in hidden:
            del self.unit_index[u]
            self._frontier.pop(u, None)

    def _drop_tuple_units(self, cache: BatchCache) -> None:
        """Send the units whose cached output is not one tensor (a tuple whose element 0 is
        replaced) to the naive path, whose hook rebuilds the tuple."""
        for unit in [u for u, out in cache.outputs.items() if not isinstance(out, torch.Tensor)]:
            self.unit_index.pop(unit, None)
            self._frontier.pop(unit, None)
            for kept in (cache.inputs, cache.outputs, cache.frontier, cache.rest):
                kept.pop(unit, None)

    # -- graph execution -------------------------------------------------------------------
    def _run_nodes(
        self, env: dict[fx.Node, Any], start: int, cache: BatchCache | None = None
    ) -> torch.Tensor:
        interp = self._interp
        interp.env = env
        for index in range(start, len(self.nodes)):
            node = self.nodes[index]
            if node.op == "output":
                return logits_of(fx.node.map_arg(node.args[0], lambda n: env[n]), self.output)
            unit = str(node.target) if node.op == "call_module" else ""
            snapshot = cache is not None and self.unit_index.get(unit) == index
            if snapshot:
                cache.inputs[unit] = _clone(env[node.all_input_nodes[0]])
                cache.frontier[unit] = {f: _clone(env[f]) for f in self._frontier[unit]}
                cache.rest[unit] = _rest(node, env)
            env[node] = interp.run_node(node)
            if snapshot:
                cache.outputs[unit] = _clone(env[node])
            for dead in self._frees.get(node, ()):
                env.pop(dead, None)
        raise NetlensError("the traced model has no output")

    # -- public API ------------------------------------------------------------------------
    def prefix(self, x: torch.Tensor) -> BatchCache:
        """One full run: the baseline logits, plus each unit's cached input/output."""
        if self.graph is None:
            logits = logits_of(self.model(fresh(x)), self.output)
            return BatchCache(x=x, logits=self._one_row_each(logits, x))
        cache = BatchCache(x=x, logits=torch.empty(0))
        env = {self.nodes[0]: fresh(x), **self._start}
        with self._counting():
            cache.logits = self._one_row_each(self._run_nodes(env, 1 + len(self._start), cache), x)
        for unit in self.hidden_calls:  # sent to the naive path: its snapshots are not needed
            for kept in (cache.inputs, cache.outputs, cache.frontier, cache.rest):
                kept.pop(unit, None)
        self._drop_tuple_units(cache)
        return cache

    def _one_row_each(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``logits``, refused in one line unless one row per image of ``x`` (a fixed-batch
        export folds a batch into one row: its scores would be matched to the wrong images)."""
        if logits.shape[0] == len(x):
            return logits
        from ...model_output import picked_output
        from ...output_rows import rows_refusal

        key = self.output.key if isinstance(self.output, OutputReader) else self.output
        raw = picked_output(self.model(fresh(x)), key)
        raise NetlensError(rows_refusal(raw, len(x)))

    def check(self, x: torch.Tensor) -> bool:
        """Use the traced graph only if it reproduces the model's own logits on ``x``: bit for
        bit on CPU; on accelerators, whose kernels need not be bit-reproducible run to run,
        within float tolerance."""
        if self.graph is None:
            return False
        traced, eager = self.prefix(x).logits, logits_of(self.model(fresh(x)), self.output)
        same = (
            torch.equal(traced, eager)
            if x.device.type == "cpu"
            else torch.allclose(traced, eager, rtol=1e-4, atol=1e-5)
        )
        if not same:
            self.graph, self.unit_index = None, {}
            self.trace_error = "the traced graph does not reproduce the model's logits exactly"
        return same

    def ablated(
        self, cache: BatchCache, unit: str, replace: Replacement, batch: int, copies: int = 1
    ) -> torch.Tensor:
        """Logits with ``unit``'s output replaced (``copies`` ablations stacked on the batch).

        Stacked copies go through the suffix as one batch when the suffix reads nothing from
        before the unit and treats images independently; the first stacked pass of each unit,
        batch size and number of copies is checked against its first copy run alone, equal up
        to float rounding (:func:`_close`: kernels that round differently per batch size), and
        a unit that fails (a suffix that mixes the images of a batch) runs copy by copy.
        """
        if not self.is_fast(unit) or unit not in cache.outputs:
            return self.naive(cache.x, unit, replace, batch, copies)
        before, after = cache.inputs[unit], cache.outputs[unit]
        new = _replaced(replace, before, after, batch, 0, cache.rest.get(unit))
        if copies == 1:
            return self._suffix(cache, unit, new)
        # copies are stacked on the unit's own first axis: images, or windows (Swin's window
        # attention: images × windows) or tokens (sequence-first L×N×C), each copy run alone
        n, m = cache.x.shape[0], after.shape[0]
        if m == n and unit not in self._no_stack and not self._frontier[unit]:
            out = self._suffix(cache, unit, new)
            if (unit, n, copies) in self._stack_checked:
                return out
            self._stack_checked.add((unit, n, copies))
            if _close(out[:n], self._suffix(cache, unit, new[:n].clone())):
                return out
            self._no_stack.add(unit)
        parts = [self._suffix(cache, unit, new[g * m : (g + 1) * m].clone()) for g in range(copies)]
        return torch.cat(parts, 0)

    def _suffix(self, cache: BatchCache, unit: str, new: torch.Tensor) -> torch.Tensor:
        """Run the nodes after ``unit`` with ``new`` as its output."""
        index = self.unit_index[unit]
        env: dict[fx.Node, Any] = {f: _clone(v) for f, v in cache.frontier[unit].items()}
        env[self.nodes[index]] = new
        return self._run_nodes(env, index + 1)

    def naive(
        self, x: torch.Tensor, unit: str, replace: Replacement, batch: int, copies: int = 1
    ) -> torch.Tensor:
        """Ablate with a forward hook and run the whole model (the reference path).

        With ``copies`` > 1 (stacked ablations), each copy gets a run of its own. A unit the
        model calls several times (a shared module) is replaced at every call; the
        replacement is told which call it replaces (``call``: 0, 1, ... within the pass) and,
        when it asks for them (a residual block's skip), that call's other arguments. A unit
        that returns a tuple starting with a tensor has element 0 replaced, the rest kept.
        """
        n = x.shape[0]
        logits = []
        calls: list[int] = []
        kept: list[tuple[torch.Tensor, Any]] = []  # each running call's input, as it came in

        def private(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            """The unit runs on a copy of its input: a unit that rewrites its input in place
            (``ReLU(inplace=True)``, ``x += f(x)``) must not change it, since it is removed.
            A call on fx proxies (a block's skip traced for a new call's arguments, inside this
            pass) is left alone."""
            if args and isinstance(args[0], fx.Proxy):
                return None
            if not args or not isinstance(args[0], torch.Tensor):
                raise AnalyzerError(f"unit '{unit}' takes no tensor as its first argument")
            rest = (args[1:], dict(kwargs))
            kept.append((args[0], None if tensors_in(rest) else rest))
            return (args[0].clone(), *args[1:]), kwargs

        for g in range(copies):
            calls.clear()

            def hook(module: nn.Module, inputs: tuple, output: Any, g: int = g) -> Any:
                if inputs and isinstance(inputs[0], fx.Proxy):
                    return None  # traced, not run (see ``private``)
                calls.append(1)  # the replacement of this call (a shared module runs often)
                inp, rest = kept.pop()
                call = len(calls) - 1
                first = first_tensor(output)  # a tuple's element 0: what is replaced
                new = _replaced(replace, inp.clone(), first, batch, call, rest)
                new = new if copies == 1 else new[g * n : (g + 1) * n].clone()
                return with_first(output, new) if is_tensor_tuple(output) else new

            with hooked(self.modules[unit], hook, private, with_kwargs=True):
                logits.append(logits_of(self.model(fresh(x)), self.output))
            if not calls:
                raise AnalyzerError(f"unit '{unit}' did not run in the model's forward")
        return logits[0] if copies == 1 else torch.cat(logits, 0)


def _replaced(
    replace: Replacement, x: torch.Tensor, out: Any, batch: int, call: int, rest: Any
) -> torch.Tensor:
    """``replace``'s new output for one call, given that call's other arguments (``rest``)
    when it asks for them (a residual block's skip: :func:`.modes.takes_call_args`)."""
    if takes_call_args(replace):
        return replace(x, out, batch, call=call, rest=rest)
    return replace(x, out, batch, call=call)


@contextmanager
def hooked(
    module: nn.Module, hook: Any, pre: Any = None, *, with_kwargs: bool = False
) -> Iterator[None]:
    """A forward hook (and a forward pre-hook, told the call's keyword arguments too when
    ``with_kwargs``) for the duration of the block (removed on errors and Ctrl-C too)."""
    handles = [module.register_forward_hook(hook)]
    try:
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=with_kwargs))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Ablation:
    """One pass of the study: ``len(keys)`` ablations of ``unit`` stacked on the batch dim.

    ``cells``: each key's own row cells (``kind``, ``channel``, ``k``: :mod:`.channels`); none
    for a whole unit switched off. Rows are made from these, never by parsing a key, since a
    module's name may hold any character but ``.`` (onnx2torch's ``Div@17``)."""

    keys: list[str]
    unit: str
    replace: Replacement
    cells: list[dict[str, Any]] = field(default_factory=list)


def run_ablations(
    engine: Engine,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ablations: list[Ablation],
    on_done: Callable[[str, Outcomes], None],
    baseline: Outcomes | None,
    metric: Metric,
    *,
    device: torch.device | None = None,
    advance: Callable[[int], None] | None = None,
    budget: int = 1 << 30,
    group: int = 8,
) -> None:
    """Run every ablation over the data.

    ``baseline`` (when given) is filled with the intact model's outcomes before ``on_done`` is
    first called; ``advance`` is told each ablation-batch's images as they finish.
    Each batch's prefix is computed once and kept while the caches of all batches fit in
    ``budget`` bytes: then ablations run one after the other and ``on_done`` sees each as soon as
    it is complete (so a partial CSV can grow row by row). Otherwise ablations run in groups of
    ``group``, recomputing the prefix once per group and batch.
    """
    advance = advance or (lambda k: None)
    if not ablations and baseline is None:
        return
    start = getattr(loader, "first", 0)  # a share of the data: the number of its first batch
    batches = iter(loader)
    first = next(batches, None)
    if first is None:  # a distributed run's share with no batch: its (empty) outcomes still count
        if not getattr(loader, "shared", False):
            raise AnalyzerError("the data is empty")
        for abl in ablations:
            _run_group(engine, [abl], [], on_done, advance, metric, start)
        return
    x0, y0 = first
    cache0 = engine.prefix(x0.to(device))
    keep = cache0.nbytes() * max(1, len(loader)) <= budget  # type: ignore[arg-type]
    if keep:
        stored = [(cache0, y0)]
        stored += [(engine.prefix(x.to(device)), y) for x, y in batches]
        for cache, y in stored:
            if baseline is not None:
                baseline.add(cache.logits, y, cache.logits)
        for abl in ablations:
            _run_group(engine, [abl], stored, on_done, advance, metric, start)
        return
    groups = [ablations[i : i + group] for i in range(0, len(ablations), group)] or [[]]
    for gi, chunk in enumerate(groups):

        def feed(gi: int = gi) -> Iterator[tuple[BatchCache, torch.Tensor]]:
            for b, (x, y) in enumerate(loader):
                cache = cache0 if (gi == 0 and b == 0) else engine.prefix(x.to(device))
                if gi == 0 and baseline is not None:
                    baseline.add(cache.logits, y, cache.logits)
                yield cache, y

        _run_group(engine, chunk, feed(), on_done, advance, metric, start)


def _run_group(
    engine: Engine,
    chunk: list[Ablation],
    feed: Iterable[tuple[BatchCache, torch.Tensor]],
    on_done: Callable[[str, Outcomes], None],
    advance: Callable[[int], None],
    metric: Metric,
    start: int = 0,
) -> None:
    outs = {k: Outcomes(metric) for abl in chunk for k in abl.keys}
    for b, (cache, y) in enumerate(feed, start):  # b: the batch's number in the whole data
        n = cache.x.shape[0]
        for abl in chunk:
            copies = len(abl.keys)
            logits = engine.ablated(cache, abl.unit, abl.replace, b, copies)
            for g, key in enumerate(abl.keys):
                outs[key].add(logits[g * n : (g + 1) * n], y, cache.logits)
            advance(copies * n)
    for key, out in outs.items():
        on_done(key, out)
