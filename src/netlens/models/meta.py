"""Know what a model costs before building it: shapes on the ``meta`` device, bounded builds.

A checkpoint's metadata decides how big the model netlens builds is, and building allocates and
initialises every parameter (a width of 100000 in ``arch_kwargs`` is gigabytes). So the model is
first built under ``torch.device("meta")`` — parameters and buffers get shapes but no memory —
and its shapes are compared with the tensors actually in the file. Architectures that cannot be
built on meta (torchvision's RegNets compute widths with ``.numpy()``) are built for real
under an :class:`AllocationBudget`, which stops the build once it has allocated more than the
file's weights could need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelLoadError, NetlensError

__all__ = ["AllocationBudget", "ModelShapes", "OverBudget", "build_within", "shapes_on_meta"]


@dataclass(frozen=True)
class ModelShapes:
    """Shapes of a model's state_dict entries, and bytes of all its parameters and buffers."""

    shapes: dict[str, tuple[int, ...]]
    nbytes: int

    def far_larger_than(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether this model needs far more memory than the weights in ``state`` hold (more
        than 4× their bytes + 64 MB): a name or options from a file that do not belong to
        its weights, not to be built."""
        held = sum(t.numel() * t.element_size() for t in state.values())
        return self.nbytes > 4 * held + (64 << 20)

    def mismatch(self, state: Mapping[str, torch.Tensor]) -> str | None:
        """What differs between these shapes and the tensors of ``state`` (None: they fit)."""
        missing = [k for k in self.shapes if k not in state]
        extra = [k for k in state if k not in self.shapes]
        wrong = [k for k in self.shapes if k in state and tuple(state[k].shape) != self.shapes[k]]
        if wrong:
            k = wrong[0]
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            return (
                f"{k} is {list(state[k].shape)} in the file but {list(self.shapes[k])} in the "
                f"model{more}"
            )
        if missing:
            return (
                f"{len(missing)} tensor(s) the model needs are not in the file (e.g. {missing[0]})"
            )
        if extra:
            return f"{len(extra)} tensor(s) in the file are not in the model (e.g. {extra[0]})"
        return None


class OverBudget(Exception):
    """A build allocated more than its :class:`AllocationBudget` allows."""

    def __init__(self, used: int, limit: int) -> None:
        super().__init__(f"allocated {used} bytes, over the budget of {limit}")
        self.used = used
        self.limit = limit


class AllocationBudget(TorchFunctionMode):
    """Count the bytes of new tensors torch functions return; raise :class:`OverBudget` past
    ``limit``.

    A tensor counts when its storage is not one of the call's inputs (views and in-place ops are
    free). Meta tensors are free. Memory freed again still counts, so the count only errs high.
    Large fresh allocations are untouched pages until written, so stopping right after the
    allocation that crosses the limit keeps resident memory near the limit.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.used = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        fresh = [t for t in _tensors(out) if t.device.type != "meta"]
        if fresh:
            inputs = {_storage_ptr(t) for t in _tensors((args, kwargs))}
            for t in fresh:
                if _storage_ptr(t) not in inputs:
                    self.used += t.untyped_storage().nbytes()
            if self.used > self.limit:
                raise OverBudget(self.used, self.limit)
        return out


def shapes_on_meta(build: Callable[[], nn.Module]) -> ModelShapes | None:
    """Build on the meta device (no memory); None when the architecture cannot be built there.

    Errors that are ours (:class:`NetlensError`, e.g. an unknown architecture) propagate. Any
    non-meta tensor the build makes is counted and capped at 256 MiB.
    """
    try:
        with AllocationBudget(256 << 20), torch.device("meta"):
            model = build()
    except NetlensError:
        raise
    except Exception:  # noqa: BLE001 - cannot be built on meta: the caller falls back
        return None
    state = model.state_dict()
    tensors = list(model.parameters()) + list(model.buffers())
    return ModelShapes(
        shapes={k: tuple(v.shape) for k, v in state.items()},
        nbytes=sum(t.numel() * t.element_size() for t in tensors),
    )


def build_within(build: Callable[[], nn.Module], limit: int, what: str) -> nn.Module:
    """Build for real, stopped with one line once more than ``limit`` bytes were allocated.

    Args:
        build: makes the model.
        limit: the most bytes the build may allocate in all.
        what: the model and file, for the message (``"resnet18 from m.pt"``).
    """
    try:
        with AllocationBudget(limit):
            return build()
    except OverBudget:
        raise ModelLoadError(
            f"building {what} needs more than {_mb(limit)} of memory, far more than the "
            "weights in the file; its architecture settings do not match its weights "
            "(re-save it with netlens.save)"
        ) from None
    except NetlensError:
        raise
    except Exception as exc:  # noqa: BLE001 - the architecture's own complaint, as one line
        first = " ".join(str(exc).split())[:200] or "it failed"
        raise ModelLoadError(
            f"cannot build {what}: {first}; check its arch and arch_kwargs"
        ) from None


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors in ``obj`` and (recursively) its lists, tuples and dict values."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _storage_ptr(t: torch.Tensor) -> int:
    """Which storage ``t`` views, so tensors sharing one count once; a tensor without a plain
    storage (sparse, nested) counts on its own."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a storage (sparse, nested)
        return id(t)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MB" if nbytes >= 2**20 else f"{nbytes / 1024:,.0f} KB"
