"""Probes: capture the outputs (and gradients) of chosen layers with forward hooks.

``netlens.probe(model, ["layer4", "layer3.1.conv2"], grads=True)`` is a context manager; inside it
you run the model, after it ``p["layer4"].output`` and ``p["layer4"].grad`` hold tensors. Hooks are
removed on exit, also on errors and KeyboardInterrupt, and the model's weights, ``.grad``,
``requires_grad`` and train/eval flags are never touched.

Why a dispatch mode: a captured activation can be overwritten later in the same forward by an
in-place op (``nn.ReLU(inplace=True)``, ``x += shortcut``). Copying every capture would cost a copy
per layer; instead, from the first capture until the probe exits, a ``TorchDispatchMode`` watches
the (rare) ops that write into their inputs and copies a captured tensor only just before such
an op overwrites it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import NetlensError
from .layers import resolve_layers

__all__ = ["Capture", "Probe", "probe"]


@dataclass
class Capture:
    """What one probed layer produced: one entry per call of the module in the forward."""

    name: str
    outputs: list[Any] = field(default_factory=list)
    grads: list[torch.Tensor | None] = field(default_factory=list)
    _graph: list[tuple[int, torch.Tensor]] = field(default_factory=list, repr=False)

    def _single(self, values: list[Any], what: str) -> Any:
        if not values:
            raise NetlensError(
                f"layer '{self.name}' did not run (no {what} captured); run the model inside the "
                "probe, or pick a layer that the forward uses"
            )
        if len(values) > 1:
            raise NetlensError(
                f"layer '{self.name}' ran {len(values)} times in this forward; pick one call with "
                f".{what}s[i] (0..{len(values) - 1})"
            )
        return values[0]

    @property
    def output(self) -> Any:
        """The output of the single call of this layer (see ``outputs`` for several calls)."""
        return self._single(self.outputs, "output")

    @property
    def grad(self) -> torch.Tensor | None:
        """Gradient of the target w.r.t. the output of the single call of this layer."""
        return self._single(self.grads, "grad")


class _CopyOnWrite(TorchDispatchMode):
    """Copies a captured tensor just before an in-place op writes into its storage."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe
        self._writes: dict[Any, tuple[int, ...]] = {}

    def _written_args(self, func: Any) -> tuple[int, ...]:
        hit = self._writes.get(func)
        if hit is None:
            args = func._schema.arguments
            hit = tuple(
                i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write
            )
            self._writes[func] = hit
        return hit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        written = self._written_args(func)
        if written and self.probe._watch:
            schema_args = func._schema.arguments
            for i in written:
                value = args[i] if i < len(args) else kwargs.get(schema_args[i].name)
                if isinstance(value, torch.Tensor):
                    self.probe._before_write(value)
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> tuple[Any, int]:
    return (t.device, t.untyped_storage().data_ptr())


class Probe:
    """Forward hooks on named layers of a model, used as a context manager.

    Args:
        model: any ``nn.Module``.
        layers: selectors (dotted names, globs, ``type:Conv2d``, ``auto``) or modules.
        grads: keep captured outputs in the autograd graph so gradients can be taken.
        detach: store detached outputs (ignored with ``grads=True``).
        to: move captured outputs to this device (e.g. ``"cpu"``) so long runs do not grow GPU
            memory.

    Example:
        >>> with netlens.probe(model, ["layer4"], grads=True) as p:
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
    ) -> None:
        self.model = model
        self.names = resolve_layers(model, layers, example=example)
        self.grads = grads
        self.detach = detach and not grads
        self.to = torch.device(to) if to is not None else None
        self.captures: dict[str, Capture] = {n: Capture(n) for n in self.names}
        self._handles: list[Any] = []
        self._mode: _CopyOnWrite | None = None
        self._watch: dict[tuple[Any, int], list[tuple[Capture, int]]] = {}

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Probe:
        modules = dict(self.model.named_modules())
        try:
            for name in self.names:
                hook = self._make_hook(self.captures[name])
                self._handles.append(modules[name].register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this probe added; safe to call twice."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        while self._handles:
            self._handles.pop().remove()
        self._watch.clear()

    # -- capture ---------------------------------------------------------------------------
    def _make_hook(self, cap: Capture):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            return self._store(cap, output)

        return hook

    def _store(self, cap: Capture, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            cap.outputs.append(output)
            cap.grads.append(None)
            return None
        if self.grads and torch.is_grad_enabled() and output.is_floating_point():
            # Keep a leaf (or the graph tensor) to differentiate against and hand the model a
            # copy, so later in-place ops downstream never rebase what we differentiate against.
            kept = output if output.requires_grad else output.detach().requires_grad_(True)
            cap.outputs.append(kept)
            cap.grads.append(None)
            cap._graph.append((len(cap.outputs) - 1, kept))
            return kept.clone()
        # detach() only where there is a graph to cut: under no_grad it would be a wasted op
        kept = output.detach() if self.detach and output.requires_grad else output
        if self.to is not None and kept.device != self.to:
            kept = kept.to(self.to)
        else:
            self._watch.setdefault(_storage_key(kept), []).append((cap, len(cap.outputs)))
            self._start_watching()
        cap.outputs.append(kept)
        cap.grads.append(None)
        return None

    def _start_watching(self) -> None:
        # Entered at the first capture, not in __enter__: ops before it cannot touch a capture,
        # so probing only late layers costs (almost) nothing.
        if self._mode is None and self._handles:
            self._mode = _CopyOnWrite(self)
            self._mode.__enter__()

    def _before_write(self, target: torch.Tensor) -> None:
        entries = self._watch.pop(_storage_key(target), None)
        for cap, i in entries or ():
            cap.outputs[i] = cap.outputs[i].clone()

    # -- access ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Capture:
        try:
            return self.captures[name]
        except KeyError:
            from .errors import LayerNotFoundError, hint

            raise LayerNotFoundError(
                f"layer '{name}' was not probed{hint(name, self.captures)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.captures)

    def __len__(self) -> int:
        return len(self.captures)

    def compute_grads(self, target: torch.Tensor, *, retain_graph: bool = False) -> None:
        """Fill ``.grads`` with d(target)/d(output) via ``torch.autograd.grad``.

        No parameter's ``.grad`` is touched. ``target`` must be a scalar (sum per-image scores to
        get per-image gradients: images do not mix in a model without batch statistics).
        """
        if not self.grads:
            raise NetlensError("this probe was made without grads=True; pass grads=True")
        pairs = [(c, i, t) for c in self.captures.values() for i, t in c._graph]
        if not pairs:
            raise NetlensError(
                "no probed layer ran with gradients enabled; run the model inside "
                "the probe and outside torch.no_grad()"
            )
        found = torch.autograd.grad(
            target, [t for _, _, t in pairs], retain_graph=retain_graph, allow_unused=True
        )
        for (cap, i, _), g in zip(pairs, found, strict=True):
            cap.grads[i] = g

    def clear(self) -> None:
        """Forget captured values (hooks stay), e.g. between batches of a long run."""
        for cap in self.captures.values():
            cap.outputs.clear()
            cap.grads.clear()
            cap._graph.clear()
        self._watch.clear()


def probe(
    model: nn.Module,
    layers: str | Sequence[str | nn.Module] | nn.Module,
    *,
    grads: bool = False,
    detach: bool = True,
    to: str | torch.device | None = None,
    example: torch.Tensor | None = None,
) -> Probe:
    """Capture outputs (and gradients with ``grads=True``) of ``layers``; see :class:`Probe`."""
    return Probe(model, layers, grads=grads, detach=detach, to=to, example=example)
