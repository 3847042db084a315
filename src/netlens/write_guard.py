"""Keep captured outputs safe from later in-place writes, paying only where writes happen.

A captured activation can be overwritten later in the same forward (``nn.ReLU(inplace=True)``
after a captured BatchNorm, ``x += shortcut``, ``F.relu_(x)``). Copying every capture costs a
copy per layer; watching every op costs Python on every op. So a probe works in two modes:

- **guarded** (the first forward, and whenever the graph changed): from the first capture on, a
  ``TorchDispatchMode`` sees the ops that write into their inputs and copies a capture just
  before such an op overwrites it. Which capture slots (module, call) needed a copy is the
  *plan*, learnt together with the sequence of captured calls (names, shapes, dtypes) and the
  forward's key (input shapes, grad mode, train/eval flags).
- **fast** (later forwards with the same key and the same sequence of calls): no dispatch mode;
  the hook copies exactly the planned slots and keeps the others as aliases, remembering their
  version counters. A planned copy goes into the buffer of the previous forward's copy when
  nothing references that one any more (after ``probe.clear()``): on CPU, writing fresh memory
  (page faults) costs more than the copy itself. A call that does not match the plan switches
  the rest of that forward to guarded (earlier aliases still intact are guarded from then on),
  and the next forward relearns.

Version counters on the first forward are not enough on their own: a model can overwrite a
capture only for some inputs (``if x.amax() > 6: x.clamp_(max=6)``), which the learning forward
never saw. Every alias kept in fast mode is therefore checked at the end of the forward: a
changed version counter means a write the plan missed. The guard then distrusts its plan for
good (every later forward is guarded) and reports the entries, which the probe re-runs or marks
as overwritten (see :class:`netlens.probes.Probe`). Outputs that alias the model's own output are
copied at the end of the forward, so the caller may modify the returned tensor.

torch keeps its dispatch-mode stack per thread, so the guard sees only the ops of the thread that
started it (the probe's; its hooks do nothing in other threads' forwards): another thread's
forward of the same model runs unguarded and untouched. The guard must be stopped in that thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from threading import get_ident
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from .call_output import CallOutput
from .errors import NetlensError

__all__ = ["WriteGuard", "tensors_in"]

Slot = tuple[str, int]
Step = tuple[Slot, torch.Size, torch.dtype]


@dataclass(frozen=True)
class _Plan:
    key: tuple
    steps: tuple[Step, ...]
    copy: frozenset[Slot]


def _storage_key(t: torch.Tensor) -> tuple[Any, int]:
    return (t.device, t.untyped_storage().data_ptr())


def _own_storage_key(t: torch.Tensor) -> tuple[Any, int] | None:
    """:func:`_storage_key`, or None for a tensor without a plain storage of its own (sparse,
    nested, quantized: no view of theirs can alias a capture)."""
    try:
        return _storage_key(t)
    except (RuntimeError, NotImplementedError):
        return None


def _storage_keys(tensors: list[torch.Tensor]) -> set[tuple[Any, int]]:
    """The storages of ``tensors`` that have one of their own."""
    return {k for k in map(_own_storage_key, tensors) if k is not None}


class _CopyOnWrite(TorchDispatchMode):
    """Calls ``guard.before_write`` with every tensor an op is about to write into."""

    def __init__(self, guard: WriteGuard) -> None:
        super().__init__()
        self.guard = guard
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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        written = self._written_args(func)
        if written and self.guard.watching:
            schema_args = func._schema.arguments
            for i in written:
                value = args[i] if i < len(args) else kwargs.get(schema_args[i].name)
                if isinstance(value, torch.Tensor):
                    self.guard.before_write(value)
        return func(*args, **kwargs)


class WriteGuard:
    """Stores module outputs for a probe so that later in-place ops cannot change them.

    ``begin(key)`` / ``end(output)`` bracket a forward of the probed model; ``keep`` stores one
    call's output. Outside such brackets (a sub-module run on its own) every capture is guarded.
    """

    def __init__(self) -> None:
        self._mode: _CopyOnWrite | None = None
        self._watch: dict[tuple[Any, int], list[CallOutput]] = {}
        self._memo: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._plan: _Plan | None = None
        self._key: tuple | None = None
        self._fast = False
        self._broken = False
        self._step = 0
        self._steps: list[Step] = []
        self._copied: set[Slot] = set()
        self._unguarded: list[tuple[CallOutput, torch.Tensor, int]] = []
        self._pool: dict[Slot, torch.Tensor] = {}
        self.distrust = False
        self.forwards = {"guarded": 0, "fast": 0}
        self._held: set[tuple[Any, int]] = set()  # the model's weights (see hold)
        self._thread = 0  # the thread whose dispatch-mode stack holds the mode

    @property
    def watching(self) -> bool:
        return bool(self._watch)

    def hold(self, weights: list[torch.Tensor]) -> None:
        """The model's parameters and buffers: a capture that aliases one (a learned embedding
        returned as a view) is copied at the end of each forward, before an optimizer step
        rewrites it."""
        self._held = _storage_keys(weights)

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is a view of one of the model's weights."""
        return bool(_storage_keys([t]) & self._held)

    # -- one forward -----------------------------------------------------------------------
    def begin(self, key: tuple, *, learn: bool = True) -> None:
        """A forward of the probed model starts; ``key`` names its inputs and modes.

        ``learn=False`` (inference tensors, which have no version counters) guards it fully.
        """
        self._stop()
        self._reset()
        self._key = key if learn else None
        plan = self._plan
        self._fast = learn and plan is not None and plan.key == key and not self.distrust

    def keep(
        self, slot: Slot, output: torch.Tensor, entries: list[CallOutput], *, detach: bool
    ) -> None:
        """Store ``output`` (one call's output) in ``entries``, safe from later writes."""
        step = (slot, output.shape, output.dtype)
        if self._fast and (output.is_inference() or not self._follows_plan(step)):
            self._leave_fast()  # (an inference tensor has no version counter to check)
        if self._fast:
            assert self._plan is not None
            if slot in self._plan.copy:
                stored = self._memoised(output, lambda: self._copy(slot, output))
            else:
                stored = self._memoised(output, lambda: _alias(output, detach))
                self._unguarded += [(e, stored, stored._version) for e in entries]
        else:
            stored = self._memoised(output, lambda: _alias(output, detach))
            self._watch.setdefault(_storage_key(stored), []).extend(entries)
            self._steps.append(step)
            self._start()
        for e in entries:
            e.value = stored

    def end(self, boundary: Any) -> list[CallOutput]:
        """The forward returned: stop guarding, learn, check; returns the entries a write hit.

        Captures that alias a tensor in ``boundary`` (the model's inputs and output, which the
        caller may modify next) or one of the weights (:meth:`hold`) are copied.
        """
        missed = [e for e, t, v in self._unguarded if t._version != v and e.value is t]
        self.forwards["fast" if self._fast else "guarded"] += 1  # fast only if it stayed so
        self._protect(boundary)
        self._stop()
        plan = self._plan
        if self._fast and plan is not None and self._step != len(plan.steps):
            self._plan = None  # fewer calls than planned: the graph changed, relearn
        elif not self._fast and self._key is not None:
            self._plan = _Plan(self._key, tuple(self._steps), frozenset(self._copied))
        if self._broken or missed:
            self._plan = None
        self.distrust = self.distrust or bool(missed)
        self._reset()
        return missed

    def abort(self) -> None:
        """The forward raised: leave its guarding (its dispatch mode, wherever it is on the
        stack) and forget its steps; the plan learned before stays."""
        self._watch.clear()
        mode, self._mode = self._mode, None
        if mode is not None:
            _pop_mode(mode)
        self._reset()

    def stop(self) -> None:
        """Stop guarding (the probe ends) and free the copy buffers."""
        self._stop()
        self._reset()
        self._pool.clear()

    def forget(self) -> None:
        """The probe dropped its captures: nothing left to guard."""
        self._watch.clear()
        self._unguarded.clear()
        self._memo.clear()

    # -- the dispatch mode's callback --------------------------------------------------------
    def before_write(self, target: torch.Tensor) -> None:
        """An op is about to write into ``target``'s storage: copy the captures it holds."""
        entries = self._watch.pop(_storage_key(target), None)
        copies: dict[int, torch.Tensor] = {}
        for e in entries or ():
            src = e.value
            if id(src) not in copies:
                copies[id(src)] = src.clone()
            e.value = copies[id(src)]
            self._copied.add(e.slot)

    # -- helpers ---------------------------------------------------------------------------
    def _reset(self) -> None:
        self._key, self._fast, self._broken, self._step = None, False, False, 0
        self._steps, self._copied, self._unguarded = [], set(), []
        self._memo.clear()

    def _memoised(self, output: torch.Tensor, make: Any) -> torch.Tensor:
        """One stored tensor per output object and version (a ReLU's input and output)."""
        version = -1 if output.is_inference() else output._version
        hit = self._memo.get(id(output))
        if hit is not None and hit[0] is output and hit[1] == version:
            return hit[2]
        stored = make()
        self._memo[id(output)] = (output, version, stored)
        return stored

    def _copy(self, slot: Slot, output: torch.Tensor) -> torch.Tensor:
        """A copy of ``output``, in last forward's buffer for this slot when that is free."""
        buf = self._pool.get(slot)
        if buf is None or not _free_like(buf, output):
            buf = self._pool[slot] = torch.empty_like(output)
        with torch.no_grad():
            buf.copy_(output)
        return buf.detach()  # handed out as an alias, so the pool sees when it is dropped

    def _follows_plan(self, step: Step) -> bool:
        plan = self._plan
        if plan is None or self._step >= len(plan.steps) or plan.steps[self._step] != step:
            return False
        self._step += 1
        return True

    def _leave_fast(self) -> None:
        """The calls differ from the plan: guard from here on what is still intact."""
        self._fast, self._broken = False, True
        intact = [item for item in self._unguarded if item[1]._version == item[2]]
        self._unguarded = [item for item in self._unguarded if item[1]._version != item[2]]
        for e, t, _ in intact:
            self._watch.setdefault(_storage_key(t), []).append(e)
        if intact:
            self._start()

    def _protect(self, output: Any) -> None:
        keys = _storage_keys(tensors_in(output)) | self._held
        if not keys:
            return
        for key in keys & set(self._watch):
            self._copy_all(self._watch.pop(key))
        self._copy_all([e for e, t, _ in self._unguarded if _storage_key(t) in keys])

    @staticmethod
    def _copy_all(entries: list[CallOutput]) -> None:
        copies: dict[int, torch.Tensor] = {}
        for e in entries:
            if id(e.value) not in copies:
                copies[id(e.value)] = e.value.clone()
            e.value = copies[id(e.value)]

    def _start(self) -> None:
        if self._mode is None:
            self._mode = _CopyOnWrite(self)
            self._mode.__enter__()
            self._thread = get_ident()

    def _stop(self) -> None:
        self._watch.clear()
        if self._mode is None:
            return
        if get_ident() != self._thread:  # torch's mode stacks are per thread
            raise NetlensError(
                "a probe was closed in another thread than the one that ran the model in it; "
                "close it (leave its with block) in that thread"
            )
        mode, self._mode = self._mode, None
        if _get_current_dispatch_mode() is not mode:
            raise NetlensError(
                "a torch dispatch mode entered inside the probe is still active; exit it "
                "before the forward or the probe ends"
            )
        mode.__exit__(None, None, None)


def _pop_mode(mode: TorchDispatchMode) -> None:
    """Take ``mode`` off torch's dispatch-mode stack wherever it is, the modes above it kept."""
    from torch.utils import _python_dispatch as dispatch

    if _get_current_dispatch_mode() is mode:
        mode.__exit__(None, None, None)
        return
    stack = dispatch._get_current_dispatch_mode_stack()
    if not any(m is mode for m in stack):
        return
    above = []
    while _get_current_dispatch_mode() is not mode:
        above.append(dispatch._pop_mode())
    mode.__exit__(None, None, None)
    for m in reversed(above):
        dispatch._push_mode(m)


def _free_like(buf: torch.Tensor, like: torch.Tensor) -> bool:
    """``buf`` has ``like``'s layout and nothing but the pool references its memory."""
    if (buf.shape, buf.dtype, buf.device, buf.stride()) != (
        like.shape,
        like.dtype,
        like.device,
        like.stride(),
    ):
        return False
    count = getattr(torch._C, "_storage_Use_Count", None)
    # 2 = the pool's tensor + the temporary storage object made for the call
    return count is not None and count(buf.untyped_storage()._cdata) <= 2


def _alias(output: torch.Tensor, detach: bool) -> torch.Tensor:
    return output.detach() if detach and output.requires_grad else output


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in nested lists, tuples, dicts and dataclasses (a model's output object)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensors_in(getattr(obj, f.name, None))]
    return []
