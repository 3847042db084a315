"""Residual blocks recognised by what they compute: a block whose output adds its input back.

A candidate block's own ``forward`` is traced with ``torch.fx``, every submodule a leaf, so only
the block's wiring is read, never its children's insides or its class name. An addition in it is
a *residual add* when both operands are tensors of the sum's shape that depend on the block's
input, and one of them, the *shortcut*, reaches the input through fewer operations of its own than
the other, the *branch*, which must hold learned weights: the input itself (ViT and Swin blocks,
ConvNeXt blocks, the inverted residuals of EfficientNet / MobileNetV2-V3), or a projection of it
(a ResNet's ``downsample``). Ties are broken by weight count; a tie there too is no residual add.
The traced wiring must reproduce the block's own output on a real input (bit for bit on the
CPU), else the block is not treated as residual.

Switching such a block off (mode ``identity``, Veit et al. 2016) removes every residual branch and
keeps every shortcut: each residual add is replaced by a copy of its shortcut operand, and what the
block does after the sum stays (a ResNet's final ReLU, a Swin block's reshape). The result is a
small ``GraphModule`` that shares the block's submodules, made per study (no registry).

A block's other, non-tensor arguments are fixed in its trace. A block the model calls several
times with other such arguments (``blk(x, 1.0)`` then ``blk(x, 3.0)``) gets one skip graph per
distinct set of arguments (:class:`BlockSkip`), each found and checked on that call's own input
and output as the first was; a call whose wiring is not residual is refused in one line.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ...errors import AnalyzerError
from ...fx_trace import Tracer

__all__ = [
    "BlockSkip",
    "Residual",
    "find_residual",
    "residual_adds",
    "trace_block",
    "without_branches",
]

_ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
_ADD_METHODS = frozenset({"add", "add_"})
_OPERATOR_IN_PLACE = frozenset(
    {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior"}
)


@dataclass(frozen=True)
class Residual:
    """A residual block: ``skip(x)`` is its output with every residual branch removed.

    Attributes:
        skip: the block without its branches (shares the block's submodules), for each call's
            own non-tensor arguments (:class:`BlockSkip`).
        branches: how many residual adds were removed.
        projection: the shortcut carries weights or changes the shape (a ResNet ``downsample``).
    """

    skip: BlockSkip
    branches: int
    projection: bool


def _same_args(a: tuple[tuple, dict], b: tuple[tuple, dict]) -> bool:
    """Whether two calls' non-tensor arguments are the same (by ``==``, else by identity)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an argument without a plain == (an array): by identity
        return (
            len(a[0]) == len(b[0])
            and all(x is y for x, y in zip(a[0], b[0], strict=True))
            and (a[1].keys() == b[1].keys() and all(a[1][k] is b[1][k] for k in a[1]))
        )


class BlockSkip:
    """A residual block without its branches, for each call's own non-tensor arguments.

    ``skip(x)`` runs the graph made for the surveyed call (its arguments fixed in it);
    ``skip(x, out, rest)`` runs the one for the arguments ``rest`` (``(args, kwargs)``) of the
    call that mapped ``x`` to ``out``, made on first sight of them and checked on that call.
    """

    def __init__(
        self, name: str, block: nn.Module, graph: fx.GraphModule, args: tuple, kwargs: dict
    ) -> None:
        self.name, self.block = name, block
        self.graphs: list[tuple[tuple[tuple, dict], fx.GraphModule | None]] = [
            ((tuple(args), dict(kwargs)), graph)
        ]

    def __call__(
        self,
        x: torch.Tensor,
        out: Any = None,
        rest: tuple[tuple, dict] | None = None,
        name: str | None = None,
    ) -> Any:
        return self.graph_for(x, out, rest, name)(x)

    def graph_for(
        self,
        x: torch.Tensor,
        out: Any = None,
        rest: tuple[tuple, dict] | None = None,
        name: str | None = None,
    ) -> fx.GraphModule:
        """The skip graph for a call with non-tensor arguments ``rest`` that mapped ``x`` to
        ``out`` (``name``: the unit's, for the refusal)."""
        if rest is None:
            return self.graphs[0][1]  # type: ignore[return-value]
        key = (tuple(rest[0]), dict(rest[1]))
        for seen, graph in self.graphs:
            if _same_args(seen, key):
                if graph is None:
                    break
                return graph
        else:
            found = None if out is None else find_residual(self.block, x.clone(), out, *key)
            graph = found.skip.graphs[0][1] if found is not None else None
            self.graphs.append((key, graph))
            if graph is not None:
                return graph
        raise AnalyzerError(
            f"identity cannot skip '{name or self.name}' at its call with arguments {_shown(key)}: "
            "there its output does not add its input back (its other calls' do); use --mode "
            "zero or --mode mean for it"
        )


def _shown(key: tuple[tuple, dict]) -> str:
    parts = [repr(a) for a in key[0]] + [f"{k}={v!r}" for k, v in key[1].items()]
    text = ", ".join(parts)
    return f"({text[:80]}{'...' if len(text) > 80 else ''})"


class _Bound(nn.Module):
    """A block called on its input alone: its other arguments as in the surveyed call."""

    def __init__(self, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.inner = block
        self.args, self.kwargs = args, kwargs

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x, *self.args, **self.kwargs)


class _BlockTracer(Tracer):
    """Traces one block's own forward (``inner``): every submodule call inside it is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name != "inner"


def trace_block(
    module: nn.Module, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> fx.GraphModule | None:
    """The wiring of ``module``'s forward as a GraphModule of its input ``x`` alone, or None
    when it does not trace.

    ``args`` and ``kwargs`` are its other (non-tensor) arguments, fixed in the trace as the
    values they had (a PVT block's ``feat_size``); arguments left out keep their defaults, so
    control flow on them is resolved (DLA's ``if shortcut is None: shortcut = x``).
    """
    bound = _Bound(module, tuple(args), dict(kwargs or {}))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _BlockTracer().trace(bound)
        return fx.GraphModule(bound, graph)
    except Exception:  # noqa: BLE001 - any tracing failure means "not recognised"
        return None


def _autocast_like(module: nn.Module, x: torch.Tensor) -> Any:
    """The autocast a block ran under, told by a half-precision input to float32 weights
    (``torch.autocast`` inside the model's forward): re-run under it, the block runs as then."""
    weight = next(module.parameters(), None)
    low = x.dtype in (torch.float16, torch.bfloat16)
    if low and weight is not None and weight.dtype == torch.float32:
        return torch.autocast(x.device.type, dtype=x.dtype)
    return contextlib.nullcontext()


def _run(gm: fx.GraphModule, x: torch.Tensor) -> tuple[dict[fx.Node, Any], Any]:
    """Every node's value (as computed, before later in-place ops) and the output."""
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    out = interp.run(x.clone())
    return interp.env, out


def _operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two operands of an addition node, when both are graph values."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )
    if not is_add or len(node.args) < 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    a, b = node.args[:2]
    return (a, b) if isinstance(a, fx.Node) and isinstance(b, fx.Node) else None


def _dependents(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on the block's (first) input."""
    nodes = list(gm.graph.nodes)
    dep = {nodes[0]}
    for n in nodes[1:]:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def _ancestors(node: fx.Node, within: set[fx.Node]) -> set[fx.Node]:
    """``node`` and every node in ``within`` it is computed from."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in within and n not in seen:
            seen.add(n)
            todo += n.all_input_nodes
    return seen


def _weights(gm: fx.GraphModule, nodes: set[fx.Node]) -> int:
    """Parameters read by ``nodes`` (module calls and attribute reads)."""
    total = 0
    for n in nodes:
        if n.op == "call_module":
            total += sum(p.numel() for p in gm.get_submodule(str(n.target)).parameters())
        elif n.op == "get_attr":
            value = _attr(gm, str(n.target))
            total += value.numel() if isinstance(value, nn.Parameter) else 0
    return total


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _same_shape(env: dict[fx.Node, Any], *nodes: fx.Node) -> bool:
    values = [env.get(n) for n in nodes]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return False
    return len({tuple(v.shape) for v in values}) == 1


def _shortcut(gm: fx.GraphModule, a: fx.Node, b: fx.Node, dep: set[fx.Node]) -> fx.Node | None:
    """The shortcut operand of ``a + b``, or None if neither is one.

    A side's own nodes are those the other side does not also read; they are compared by how
    many depend on the input, then by their weights (the weights they read themselves, such as
    a layer-scale ``gamma``, included).
    """
    everything = set(gm.graph.nodes)
    all_a, all_b = _ancestors(a, everything), _ancestors(b, everything)
    own_a, own_b = (all_a - all_b) & dep, (all_b - all_a) & dep
    key_a = (len(own_a), _weights(gm, all_a - all_b))
    key_b = (len(own_b), _weights(gm, all_b - all_a))
    if key_a == key_b:
        return None
    short, branch = (a, all_b - all_a) if key_a < key_b else (b, all_a - all_b)
    return short if _weights(gm, branch) > 0 else None


def residual_adds(gm: fx.GraphModule, env: dict[fx.Node, Any]) -> list[tuple[fx.Node, fx.Node]]:
    """``(add, shortcut operand)`` for every residual add that feeds the output, in order."""
    dep = _dependents(gm)
    nodes = list(gm.graph.nodes)
    live = _ancestors(nodes[-1], set(nodes))
    found = []
    for node in nodes:
        ops = _operands(node)
        if ops is None or node not in live or not all(o in dep for o in ops):
            continue
        if not _same_shape(env, node, *ops):
            continue
        short = _shortcut(gm, *ops, dep)
        if short is not None:
            found.append((node, short))
    return found


def without_branches(gm: fx.GraphModule, adds: list[tuple[fx.Node, fx.Node]]) -> fx.GraphModule:
    """``gm`` changed in place: each residual add becomes a copy of its shortcut operand.

    The adds are replaced last first, so an add that is the shortcut of a later one (the
    residual stream of a transformer block) is still in the graph when the later one is; then
    everything the output no longer needs is erased (see :func:`_prune`).
    """
    graph = gm.graph
    for add, short in reversed(adds):
        with graph.inserting_after(add):
            copy = graph.call_method("clone", (short,))
        add.replace_all_uses_with(copy)
    _prune(gm)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _prune(gm: fx.GraphModule) -> None:
    """Erase the nodes the output does not need, keeping in-place ops on values it does."""
    nodes = list(gm.graph.nodes)
    live = _ancestors(nodes[-1], set(nodes))
    grew = True
    while grew:
        grew = False
        for n in nodes:
            if n not in live and _in_place(gm, n) and n.args and n.args[0] in live:
                live |= _ancestors(n, set(nodes))
                grew = True
    for n in reversed(nodes):
        if n not in live and n.op != "placeholder":
            gm.graph.erase_node(n)


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write into its first argument."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "inplace", False) is True
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return (name.endswith("_") and not name.startswith("__")) or name in _OPERATOR_IN_PLACE


def _reproduces(out: Any, expected: torch.Tensor) -> bool:
    if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
        return False
    if out.device.type == "cpu":
        return torch.equal(out, expected)
    return torch.allclose(out, expected, rtol=1e-4, atol=1e-5)


def _projection(skip: fx.GraphModule, x: torch.Tensor, out: torch.Tensor) -> bool:
    nodes = set(skip.graph.nodes)
    return x.shape != out.shape or _weights(skip, nodes) > 0


def find_residual(
    module: nn.Module,
    x: torch.Tensor,
    output: Any,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    name: str = "",
) -> Residual | None:
    """``module`` as a :class:`Residual`, if its output adds its input back (see module doc).

    Args:
        module: the candidate block.
        x: an input it was called with (its only tensor argument).
        output: what it returned for ``x``.
        args, kwargs: its other arguments in that call (none of them a tensor).
        name: what messages call it (default: its class name).
    """
    if not isinstance(output, torch.Tensor):
        return None
    gm = trace_block(module, args, kwargs)
    if gm is None or not any(_operands(n) for n in gm.graph.nodes):
        return None  # no addition of two values: nothing to run
    with torch.no_grad(), _autocast_like(module, x):
        try:
            env, out = _run(gm, x)
        except Exception:  # noqa: BLE001 - the traced wiring does not run: not recognised
            return None
        if not _reproduces(out, output):
            return None
        adds = residual_adds(gm, env)
        if not adds:
            return None
        skip = without_branches(gm, adds)
        block = BlockSkip(name or type(module).__name__, module, skip, args, dict(kwargs or {}))
        return Residual(block, len(adds), _projection(skip, x, output))
