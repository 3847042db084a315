"""Probes: capture the outputs (and gradients) of chosen layers — or of single calls of them.

``netlens.probe(model, ["layer4", "act@1"], grads=True)`` is a context manager; inside it you run
the model, after it ``p["layer4"].output`` and ``p["layer4"].grad`` hold tensors (reading the
``.grad`` of a layer no gradient reaches from the target, through a quantized layer or a
``.detach()``, raises an error that says so). Hooks are removed on exit, also on errors and
KeyboardInterrupt, and the model's weights, ``.grad``, ``requires_grad`` and train/eval flags
are never touched.

Selectors are those of :func:`netlens.layers.resolve_layers`. A module that runs several times
per forward keeps every call under its bare name (``.outputs``; ``.output`` then asks for one
call); ``name@k`` keeps only call ``k`` (negative: from the end of each forward);
``name:consumed`` keeps the output as later code reads it (see :mod:`netlens.consumed`). Calls
are counted per forward of the probed model (when you run only a sub-module, from the probe's
start or the last :meth:`Probe.clear`). A module registered under several names
(``self.enc2 = self.enc1``) counts the calls of the module object, whatever name ran them; its
capture is read under the name given (``p["enc2@1"]``) or any other name of the same call.
Probes nest, also on the same layers: each captures what plain forward hooks would.

Captures belong to the thread that opened the probe: its hooks act only on forwards run by that
thread, so a web service may go on serving ``model(x)`` in other threads (their forwards and
outputs untouched, none of them captured), and two threads may each hold a probe of the same
model, each capturing its own forwards (calls counted per thread). Open and close a probe in the
same thread. What cannot be per thread: switches of the modules' train/eval flags (netlens'
dry forwards and analyses run the model in eval mode for their duration) are seen by every
thread's forwards meanwhile.

Captures are safe from later in-place ops (``ReLU(inplace=True)``, ``x += shortcut``) at the
cost of copying only what such ops overwrite: see :mod:`netlens.write_guard`. When a write
that the first forward did not show (one that depends on the input) destroys a capture, the probe
runs the forward again under full guard and checks that it gives the same output — only when
that is harmless (no grad, every module in eval mode, no other hooks, inputs untouched);
otherwise reading that capture raises an error that says so.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from threading import get_ident
from typing import Any

import torch
from torch import nn

from . import probe_guards as pg
from .call_output import CallOutput
from .consumed import consume
from .errors import LayerNotFoundError, NetlensError, hint
from .layer_call import LayerCall
from .layer_names import base_names, given_names, named_layers, other_names, selector_items
from .layers import resolve_layers, tuple_head
from .probe_capture import NOT_A_TENSOR, UNREACHED, Capture, last_child
from .write_guard import WriteGuard, tensors_in

__all__ = ["Capture", "Probe", "probe"]

REENTRANT = (
    "the model runs torch.utils.checkpoint with use_reentrant=True, through which no gradient "
    "to a layer can be taken; build it with use_reentrant=False or without checkpointing (timm: "
    "model.set_grad_checkpointing(False)), or use a gradient-free method: --method scorecam or "
    "ablationcam (method= in Python)"
)


def _in_backward() -> bool:
    """Whether autograd is running a backward now (non-reentrant ``torch.utils.checkpoint``
    re-runs its modules' forwards, hooks included, inside it)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


class Probe:
    """Forward hooks on selected layers (or calls) of a model, used as a context manager.

    Args:
        model: any ``nn.Module``.
        layers: selectors (dotted names, globs, ``type:Conv2d``, ``name@k``, ``name:consumed``,
            ``auto``) or modules; see :func:`netlens.layers.resolve_layers`.
        grads: keep captured outputs in the autograd graph so gradients can be taken.
        detach: store detached outputs (ignored with ``grads=True``).
        to: move captured outputs to this device (e.g. ``"cpu"``) so long runs do not grow GPU
            memory.
        example: the input for the dry forward that ``auto`` needs.
        first_of_tuple: a module returning a tuple whose first element is a float map or
            tokens of the input's batch (a Hugging Face block's ``(hidden_states, …)``) is
            captured as that element (its output and gradient: what the analyzers explain);
            False (the default) keeps a tuple output whole, as the module returned it.

    Example:
        >>> with netlens.probe(model, ["layer4", "layer4.1.relu@-1"], grads=True) as p:
        ...     logits = model(x)
        ...     p.compute_grads(logits[:, 3].sum())
        >>> p["layer4"].output.shape, p["layer4"].grad.shape
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str | nn.Module] | nn.Module,
        *,
        grads: bool = False,
        detach: bool = True,
        to: str | torch.device | None = None,
        example: torch.Tensor | None = None,
        first_of_tuple: bool = False,
    ) -> None:
        if type(model).__name__ == "OptimizedModule":  # torch.compile's wrapper
            raise NetlensError(
                "a torch.compile'd model runs the graph it compiled, without hooks: probe the "
                "module it wraps (model._orig_mod) and run that"
            )
        self.model = model
        pairs = _resolve(model, layers, example)
        self.names = [given for given, _ in pairs]  # as given: enc2@1 for self.enc2 = self.enc1
        self.grads = grads
        self.first_of_tuple = first_of_tuple
        self.detach = detach and not grads
        self.to = torch.device(to) if to is not None else None
        shared = other_names(model)  # modules registered under several names
        self.captures: dict[str, Capture] = {
            given: Capture(given, sel.name, tuple(shared.get(sel.name, ()))) for given, sel in pairs
        }
        for cap in self.captures.values():
            cap._last_child = last_child(model, cap.module)
            cap._inlined = cap._last_child is not None and isinstance(model, torch.fx.GraphModule)
        self._by_module: dict[str, list[Capture]] = {}
        for cap in self.captures.values():
            self._by_module.setdefault(cap.module, []).append(cap)  # calls: per module object
        self._handles: list[Any] = []
        self._guard = WriteGuard()
        consumed = any(n.consumed for n in self.names)
        self._watch = pg.EagerConsumeWatch() if consumed else None
        self._calls: dict[str, int] = {}
        self._forward = 0
        self._root: tuple[bool, list[int]] | None = None
        self._batch: int | None = None  # the probed model's batch (a tuple's first element)
        self._rng: torch.Tensor | None = None  # the CPU RNG as the forward began (for a rerun)
        self._open = False  # a forward has begun and not ended (it raised: see _closed)
        self._depth = 0  # calls of the model inside its own forward (part of that forward)
        self._rerunning = False
        self._modules: list[nn.Module] = []

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Probe:
        owner = get_ident()  # the hooks act only on this thread's forwards (see module docstring)
        modules = dict(self.model.named_modules())
        self._modules = list(modules.values())
        self._guard.hold([*self.model.parameters(), *self.model.buffers()])
        try:
            for name in self._by_module:
                caps = self._by_module[name]  # noted when another thread's forward runs it
                hook = pg.eager(self._hook_for(name), owner, functools.partial(_elsewhere, caps))
                self._handles.append(modules[name].register_forward_hook(hook))
            begin = pg.eager(self._begin, owner)
            self._handles.append(self.model.register_forward_pre_hook(begin, with_kwargs=True))
            # prepended: probes nested on one model end in the reverse order they began (_end,
            # then _closed, which runs even when the forward raises, to unwind what _begin did)
            closed = self.model.register_forward_hook(
                pg.eager(self._closed, owner), with_kwargs=True, prepend=True, always_call=True
            )
            self._handles.append(closed)
            end = self.model.register_forward_hook(
                pg.eager(self._end, owner), with_kwargs=True, prepend=True
            )
            self._handles.append(end)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this probe added; safe to call twice."""
        try:
            if self._watch is not None:
                self._watch.finish()
        finally:
            try:
                self._guard.stop()
            finally:
                while self._handles:
                    self._handles.pop().remove()

    # -- one forward of the probed model ---------------------------------------------------
    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._open:  # the model calls itself (multi-scale): part of the forward under way
            self._depth += 1
            return
        if self._watch is not None:
            self._watch.finish()
        self._forward += 1
        self._calls.clear()
        inputs = tensors_in((args, kwargs))
        self._batch = len(inputs[0]) if inputs and inputs[0].dim() else None
        inference = torch.is_inference_mode_enabled() or any(t.is_inference() for t in inputs)
        key = (
            tuple((t.shape, t.dtype, t.device) for t in inputs),
            torch.is_grad_enabled(),
            tuple(m.training for m in self._modules),
            pg.hooks_key(self._modules),  # a nested probe's hooks hand the model copies
        )
        self._guard.begin(key, learn=not inference)
        versions = [] if inference else [t._version for t in inputs]
        self._root = (torch.is_grad_enabled(), versions)
        self._rng = None if self._rerunning else torch.get_rng_state()
        self._open = True

    def _closed(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """After every forward, also one that raised: then _end never ran, and the guard's
        dispatch mode (and the consumption watch) it left on torch's stack are unwound here,
        so that no netlens mode outlives the failed forward."""
        if self._depth:  # an inner call of the model ended
            self._depth -= 1
            return
        if not self._open:
            return
        self._open, self._root = False, None
        try:
            if self._watch is not None:
                self._watch.finish()
        finally:
            self._guard.abort()

    def _end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self._depth:  # an inner call of the model (its _closed counts it down)
            return None
        self._open = False
        for cap in self.captures.values():  # this forward's calls (an earlier one had more)
            cap._ran = self._calls.get(cap.module, -1) + 1
            del cap._shapes[cap._ran :]
        if self._watch is not None:
            self._watch.finish()
        missed = self._guard.end((args, kwargs, output))
        root, self._root = self._root, None
        if not missed or self._rerunning:
            return None
        if root is not None and self._can_rerun(root, args, kwargs):
            self._rerun(args, kwargs, output)
        else:
            for e in missed:
                e.overwritten = True
        return None

    def _can_rerun(self, root: tuple[bool, list[int]], args: tuple, kwargs: dict) -> bool:
        grad_on, versions = root
        if grad_on or any(m.training for m in self.model.modules()):
            return False
        if [t._version for t in tensors_in((args, kwargs))] != versions:
            return False  # the model wrote into its own input
        ours = {h.id for h in self._handles}
        from torch.nn.modules import module as torch_module

        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        return all(
            set(m._forward_hooks) <= ours and set(m._forward_pre_hooks) <= ours
            for m in self.model.modules()
        )

    def _rerun(self, args: tuple, kwargs: dict, output: Any) -> None:
        for cap in self.captures.values():
            cap._entries = [e for e in cap._entries if e.forward != self._forward]
        self._rerunning = True
        if self._rng is not None:  # the same random draws (test-time noise) as the first time
            torch.set_rng_state(self._rng)
        try:
            again = self.model(*args, **kwargs)
        finally:
            self._rerunning = False
        if not pg.same(again, output):
            raise NetlensError(
                f"{type(self.model).__name__} overwrote a probed output in place in a way the "
                "first forward did not show, and running it again gave another output; probe "
                "this model in a fresh probe per forward"
            )

    # -- capture ---------------------------------------------------------------------------
    def _hook_for(self, name: str):  # noqa: ANN202
        caps = self._by_module[name]

        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if _in_backward():  # a checkpointed segment recomputed by the backward: no call
                return None
            k = self._calls[name] = self._calls.get(name, -1) + 1
            head = self._head(output)
            shape = getattr(output if head is None else head, "shape", None)
            for cap in caps:
                cap._ran = k + 1
                if k < len(cap._shapes):
                    cap._shapes[k] = shape
                else:
                    cap._shapes.append(shape)
            wanted = [c for c in caps if c.wants(k)]
            if not wanted:
                return None
            if self._watch is not None and self._watch.active:
                with self._watch.paused():
                    return self._on_call((name, k), wanted, inputs, output)
            return self._on_call((name, k), wanted, inputs, output)

        return hook

    def _on_call(self, slot: tuple[str, int], caps: list[Capture], inputs: Any, output: Any) -> Any:
        plain = [c._add(slot, self._forward) for c in caps if not c.name.consumed]
        later = [c._add(slot, self._forward) for c in caps if c.name.consumed]
        replaced = self._store(slot, inputs, output, plain) if plain else None
        live = output if replaced is None else replaced
        if later and self._watch is not None and isinstance(live, torch.Tensor):
            for e in later:
                e.pending = live
            self._watch.watch(live, self._consumer(later))
        for e in later if not isinstance(live, torch.Tensor) else ():
            e.value = live
        return replaced

    def _consumer(self, entries: list[CallOutput]):  # noqa: ANN202
        """What a ``:consumed`` selection does at the first read of its output."""

        def on_read(t: torch.Tensor) -> torch.Tensor | None:
            if entries[0].pending is not t:
                return None  # already settled (read through .output before the forward ended)
            value, node = consume(t, self.grads, self.to)
            for e in entries:
                e.value, e.node, e.pending = value, node, None
            return node.clone() if node is not None else None

        return on_read

    def _head(self, output: Any) -> torch.Tensor | None:
        """The tuple output's first element this probe keeps in its place (None: kept as is)."""
        if not self.first_of_tuple or isinstance(output, torch.Tensor):
            return None
        return tuple_head(output, self._batch)

    def _store(
        self, slot: tuple[str, int], inputs: Any, output: Any, entries: list[CallOutput]
    ) -> Any:
        head = self._head(output)
        if head is not None:  # (hidden_states, …) of a Hugging Face block: kept as a tensor
            for cap in self._by_module[slot[0]]:
                cap.first = True
            node = self._store(slot, inputs, head, entries)
            if node is None:
                return None
            items = [node, *output[1:]]
            return items if isinstance(output, list) else _tuple_like(output, items)
        if not isinstance(output, torch.Tensor):  # a list, tuple, dict, dataclass (or anything):
            kept = pg.copy_container(output, self.detach, self.to)  # the parent may edit it
            for e in entries:
                e.value = kept
            return None
        graph = self.grads and output.is_floating_point()
        graph = graph or (not self.detach and self.to is None and output.requires_grad)
        if graph and torch.is_grad_enabled():
            if output.requires_grad and pg.aliases(output, tensors_in(inputs)):
                pg.keep_alias(output, entries, grads=self.grads)
                return None
            # Differentiate against a leaf (or the graph tensor) and hand the model a copy, so
            # later in-place ops downstream never rebase what we differentiate against.
            node = output if output.requires_grad else output.detach().requires_grad_(True)
            # a view of a weight (a learned embedding) would change with an optimizer step:
            # its value is a copy, still in the graph
            value = node.clone() if self._guard.holds(node) else node
            for e in entries:  # (detach=False: value in the graph, no gradient asked for)
                e.value, e.node = value, (node if self.grads else None)
            return node.clone()
        if self.grads and not torch.is_grad_enabled() and self._root and self._root[0]:
            for e in entries:  # the forward began with grad on: a reentrant checkpoint, no_grad
                e.refused = pg.NO_GRAD_INSIDE
        if output.is_quantized or (self.to is not None and output.device != self.to):
            # a statically quantized layer's output: its values, as floats
            moved = output.detach().dequantize() if output.is_quantized else output.detach()
            moved = moved.to(self.to) if self.to is not None else moved
            for e in entries:
                e.value = moved
            return None
        self._guard.keep(slot, output, entries, detach=self.detach)
        return None

    # -- access ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Capture:
        cap = self.captures.get(name) or self._same_call(name)
        if cap is None:
            raise LayerNotFoundError(f"layer '{name}' was not probed{hint(name, self.captures)}")
        return cap

    def _same_call(self, name: str) -> Capture | None:
        """The capture of the same call under another name of its module (``enc1@1`` for a
        probed ``enc2@1`` when ``self.enc2 = self.enc1``: calls are counted per module)."""
        try:
            sel = LayerCall.parse(str(name))
            if any(c in sel.name for c in "*?[:"):
                return None
            first = base_names(self.model, named_layers(self.model), sel.name)
        except NetlensError:
            return None
        return next(
            (
                c
                for c in self.captures.values()
                if [c.module] == first
                and (c.name.call, c.name.consumed) == (sel.call, sel.consumed)
            ),
            None,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.captures)

    def __len__(self) -> int:
        return len(self.captures)

    @property
    def forwards(self) -> int:
        """How many forwards of the model this probe has seen begin (its own thread's)."""
        return self._forward

    def compute_grads(self, target: torch.Tensor, *, retain_graph: bool = False) -> None:
        """Fill ``.grads`` with d(target)/d(output) via ``torch.autograd.grad``.

        No parameter's ``.grad`` is touched. ``target`` must be a scalar (sum per-image scores to
        get per-image gradients: images do not mix in a model without batch statistics). A
        layer no gradient reaches from ``target`` (a quantized layer or ``.detach()`` between
        them) is refused when its ``.grad`` is read.
        """
        if not self.grads:
            raise NetlensError("this probe was made without grads=True; pass grads=True")
        entries = [e for c in self.captures.values() for e in c._entries if e.node is not None]
        for e in entries:
            if e.version is not None and e.node._version != e.version:
                e.refused = pg.ALIAS_WRITTEN  # the tensor now holds what an in-place op wrote
        kept = [e for e in entries if e.refused in (None, UNREACHED)]
        nodes = list({id(e.node): e.node for e in kept}.values())
        if not nodes and kept != entries:
            return  # reading .grad of a refused capture says why
        entries = kept
        if not nodes:
            silent = [c for c in self.captures.values() if not c._entries]
            if len(silent) == len(self.captures):
                silent[0]._single([], "output")  # raises: why that layer did not run
            for c in self.captures.values():
                if any(not isinstance(e.value, torch.Tensor) for e in c._entries):
                    raise NetlensError(NOT_A_TENSOR.format(name=c.name.name))
                c.grads  # noqa: B018 (raises why, for one that ran without grad inside the forward)
            raise NetlensError(
                "no probed layer ran with gradients enabled; run the model inside "
                "the probe and outside torch.no_grad()"
            )
        try:
            found = torch.autograd.grad(target, nodes, retain_graph=retain_graph, allow_unused=True)
        except RuntimeError as exc:
            if "use_reentrant" not in str(exc):
                raise
            raise NetlensError(REENTRANT) from None
        by_node = {id(n): g for n, g in zip(nodes, found, strict=True)}
        for e in entries:  # one the target does not reach: reading its .grad says why
            e.grad = by_node[id(e.node)]
            e.refused = UNREACHED if e.grad is None else None

    def clear(self) -> None:
        """Forget captured values (hooks stay), e.g. between batches of a long run."""
        for cap in self.captures.values():
            cap._entries.clear()
            cap._ran = 0
            cap._shapes.clear()
            cap._other_thread = False
        self._calls.clear()
        self._guard.forget()


def _elsewhere(caps: list[Capture]) -> None:
    """Note that another thread's forward ran these captures' module (and was skipped)."""
    for cap in caps:
        cap._other_thread = True


def _resolve(
    model: nn.Module, layers: Any, example: torch.Tensor | None
) -> list[tuple[LayerCall, LayerCall]]:
    """(name as given, selection) pairs: see :func:`netlens.layer_names.given_names`."""
    items = selector_items(layers)
    if not items:
        resolve_layers(model, layers)  # raises: nothing selected
    found = [resolve_layers(model, [item], example=example) for item in items]  # type: ignore[list-item]
    return given_names(layers, found)


def _tuple_like(output: tuple, items: list[Any]) -> tuple:
    """``items`` as a tuple of ``output``'s type (a named tuple keeps its fields)."""
    make = getattr(type(output), "_make", None)
    return make(items) if make is not None else type(output)(items)


def probe(
    model: nn.Module,
    layers: str | Sequence[str | nn.Module] | nn.Module,
    *,
    grads: bool = False,
    detach: bool = True,
    to: str | torch.device | None = None,
    example: torch.Tensor | None = None,
    first_of_tuple: bool = False,
) -> Probe:
    """Capture outputs (and gradients with ``grads=True``) of ``layers``; see :class:`Probe`."""
    return Probe(
        model,
        layers,
        grads=grads,
        detach=detach,
        to=to,
        example=example,
        first_of_tuple=first_of_tuple,
    )
