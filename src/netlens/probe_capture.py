"""What a probe keeps for one selection: :class:`Capture` (split out of :mod:`netlens.probes`).

A capture is read under the name the probe was given. A module registered under several names
(``self.enc2 = self.enc1``) counts its calls per module object, whatever name ran them
(:mod:`netlens.layer_names`): ``enc2@1`` is the second call of that module, and messages that
list its calls say so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .call_output import CallOutput
from .consumed import settle
from .errors import AnalyzerError, NetlensError, NetlensWarning
from .layer_call import LayerCall

__all__ = ["FX_INLINED", "NOT_A_TENSOR", "OTHER_THREAD", "UNREACHED", "Capture", "fx_inlined"]

NOT_A_TENSOR = (
    "layer '{name}' returns a tuple, dict or other object, not one tensor, so no gradient is "
    "taken to it; probe the module inside it that makes the tensor (see `netlens layers MODEL`)"
)

OTHER_THREAD = (
    "layer '{name}' ran only in another thread's forward, which a probe skips (it captures "
    "the forwards of the thread that opened it); run the model in the thread that opened the "
    "probe (not through an executor or asyncio.to_thread), or open the probe in that thread"
)

# (also analyzers.cam_base._check_reached's, for a target that needs no gradient at all)
UNREACHED = (
    "no gradient flows from the target back to layer '{name}' (a branch the target does not "
    "use, or something not differentiable in between: a quantized layer, .detach(), "
    "torch.no_grad(), argmax, or gradient checkpointing with use_reentrant=True); pick a layer "
    "the target depends on (for a CAM, or a gradient-free method: --method scorecam or "
    "ablationcam; method= in Python)"
)

#: Why a container did not run, and which of its blocks to pick (``{child}``: its last).
ONE_BY_ONE = (
    "the forward does not use it (a module that runs only in training, as auxiliary heads do), "
    "or runs its blocks one by one (gradient checkpointing, as timm's set_grad_checkpointing "
    "does: pick one of them, such as '{child}')"
)


def last_child(model: nn.Module, name: str) -> str | None:
    """Module ``name``'s last child (``layer3.1``: the block to name in :data:`ONE_BY_ONE`),
    None for a leaf or a name that is no module."""
    try:
        kids = [k for k, _ in model.get_submodule(name).named_children()]
    except AttributeError:
        return None
    return f"{name}.{kids[-1]}" if kids else None


FX_INLINED = (
    "layer '{name}' did not run: torch.fx inlined it into the GraphModule's graph, where only "
    "leaf modules (convolutions, norms, activations) still run; pick one of them (`netlens "
    "layers MODEL` lists the calls), or explain the model before it was traced"
)


def fx_inlined(model: torch.nn.Module, module: str) -> bool:
    """Whether ``module`` (a name in ``model``) is a container that torch.fx traced through:
    in a GraphModule (``create_feature_extractor``, ``symbolic_trace``) only leaf modules are
    still called, so a hook on a container never fires (:data:`FX_INLINED` says so)."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    try:
        return any(True for _ in model.get_submodule(module).children())
    except AttributeError:
        return False


@dataclass
class Capture:
    """What one probed selection produced: one entry per (selected) call, in order.

    Attributes:
        name: the selection (a :class:`~netlens.layers.LayerCall`, e.g. ``"act@1"``), as given.
        module: the first name of its module (another name of it may be ``name``'s own).
        names: every name of its module, when it is registered under several (else empty).
    """

    name: LayerCall
    module: str = ""  # the module's first name (hooks and call counts); "" : name's own
    names: tuple[str, ...] = field(default=(), repr=False)  # all its names, when several
    _entries: list[CallOutput] = field(default_factory=list, repr=False)
    _ran: int = field(default=0, repr=False)
    _shapes: list[Any] = field(default_factory=list, repr=False)
    _last_child: str | None = field(default=None, repr=False)
    _inlined: bool = field(default=False, repr=False)  # a container in a torch.fx GraphModule
    first: bool = field(default=False, repr=False)  # kept its tuple output's first element
    _other_thread: bool = field(default=False, repr=False)  # ran in a forward of another thread

    def wants(self, call: int) -> bool:
        """Whether call ``call`` of the module (within its forward) is kept."""
        k = self.name.call
        return k is None or k < 0 or k == call

    def _add(self, slot: tuple[str, int], forward: int) -> CallOutput:
        entry = CallOutput(slot, forward)
        self._entries.append(entry)
        return entry

    def _selected(self) -> list[CallOutput]:
        k = self.name.call
        if k is None or k >= 0:
            return self._entries
        by_forward: dict[int, list[CallOutput]] = {}
        for e in self._entries:
            by_forward.setdefault(e.forward, []).append(e)
        return [calls[k] for calls in by_forward.values() if len(calls) >= -k]

    def _checked(self) -> list[CallOutput]:
        entries = self._selected()
        for e in entries:
            if e.overwritten:
                raise NetlensError(
                    f"layer '{self.name}' (call {e.slot[1]}): its output was overwritten by an "
                    "in-place op that the probe's first forward did not run (it depends on the "
                    "input) and the forward could not be re-run safely; run this forward again "
                    "(the probe now copies before every write)"
                )
            settle(e)
        return entries

    @property
    def outputs(self) -> list[Any]:
        """Every kept output (several calls and forwards), in the order they ran (none, with a
        warning, when only another thread's forward ran the layer)."""
        if self._elsewhere():
            warnings.warn(OTHER_THREAD.format(name=self.name), NetlensWarning, stacklevel=2)
        return [e.value for e in self._checked()]

    def _elsewhere(self) -> bool:
        """Whether the layer ran only in forwards of other threads (which the probe skips)."""
        return self._other_thread and not self._entries

    @property
    def grads(self) -> list[torch.Tensor | None]:
        """Gradients matching :attr:`outputs` (after :meth:`Probe.compute_grads`; None before
        it, and for a call that the target does not depend on while another call does). When
        the target reaches none of them, reading them raises an error that says why."""
        entries = self._checked()
        if any(not isinstance(e.value, torch.Tensor) for e in entries):
            raise NetlensError(NOT_A_TENSOR.format(name=self.name.name))
        for e in entries:
            if e.refused and e.refused is not UNREACHED:
                raise NetlensError(e.refused.format(name=self.name))
        if entries and all(e.refused is UNREACHED for e in entries):  # (cam_base: this class)
            raise AnalyzerError(UNREACHED.format(name=self.name))
        return [e.grad for e in entries]

    @property
    def output(self) -> Any:
        """The output of the single kept call (see :attr:`outputs` for several)."""
        return self._single([e.value for e in self._checked()], "output")

    @property
    def grad(self) -> torch.Tensor | None:
        """Gradient of the target w.r.t. the output of the single kept call (None before
        :meth:`Probe.compute_grads`, or without ``grads=True``; an error when no gradient
        flows from the target back to it)."""
        return self._single(self.grads, "grad")

    def _single(self, values: list[Any], what: str) -> Any:
        if len(values) == 1:
            return values[0]
        if not values:
            if self._elsewhere():
                raise NetlensError(OTHER_THREAD.format(name=self.name))
            if self._ran and self.name.call is not None:
                raise NetlensError(
                    f"layer '{self.name.name}' ran {self._ran} time(s) per forward, so "
                    f"'{self.name}' does not exist; pick {self._call_list()}{self._shared()}"
                )
            if self._inlined:
                raise NetlensError(FX_INLINED.format(name=self.name))
            if self._last_child is not None:
                raise NetlensError(
                    f"layer '{self.name}' did not run (no {what} captured): "
                    + ONE_BY_ONE.format(child=self._last_child)
                )
            raise NetlensError(
                f"layer '{self.name}' did not run (no {what} captured); run the model inside the "
                "probe, or pick a layer that the forward uses"
            )
        forwards = len({e.forward for e in self._selected()})
        if forwards > 1:
            raise NetlensError(
                f"layer '{self.name}' ran {len(values)} times (in {forwards} forwards); read "
                f".{what}s[i], or clear() the probe between forwards"
            )
        raise NetlensError(
            f"layer '{self.name}' ran {len(values)} times in this forward; select one call: "
            f"{self._call_list()} (in Python, .{what}s holds every call){self._shared()}"
        )

    def _shared(self) -> str:
        """A note for a module registered under several names: whose calls are counted."""
        if len(self.names) < 2:
            return ""
        others = [n for n in self.names if n != self.name.name]
        return (
            f"; '{self.name.name}' is also named {', '.join(repr(n) for n in others[:3])}: calls "
            "are counted per module, whatever name ran them"
        )

    def _call_list(self) -> str:
        shown = [
            f"{self.name.name}@{k}" + (f" ({'×'.join(map(str, s))})" if s else "")
            for k, s in enumerate(self._shapes[:4])
        ]
        more = ", …" if self._ran > 4 else ""
        return f"{', '.join(shown)}{more}; @-1 is the last"
