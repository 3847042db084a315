"""What one call of a probed module left behind (for probes, the write guard, ``consumed``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CallOutput"]


@dataclass(eq=False)
class CallOutput:
    """One stored output of one module call.

    Attributes:
        slot: (module name, call index within its forward).
        forward: which forward of the probed model it came from (0, 1, ...).
        value: the stored output (the tensor itself, a detached alias or a copy).
        node: the tensor gradients are taken against (``grads=True``), else None.
        grad: the gradient, once computed.
        pending: for ``:consumed`` selections, the live tensor not yet read by later code.
        overwritten: an in-place op destroyed ``value`` before it could be copied.
        version: ``node``'s version counter when stored, for a node that is the model's own
            tensor (an output aliasing the module's input), checked before taking gradients.
        refused: why no gradient is given for this output (formatted with ``name``).
    """

    slot: tuple[str, int]
    forward: int
    value: Any = None
    node: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    pending: torch.Tensor | None = None
    overwritten: bool = False
    version: int | None = None  # node's version counter when stored (an output aliasing an input)
    refused: str | None = None  # why no gradient is given for it (a format string with {name})
