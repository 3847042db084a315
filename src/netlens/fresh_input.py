"""Inputs a model may write into: every forward netlens runs gets its own copy.

Some models normalise their input in place (``nn.Sequential(T.Normalize(mean, std,
inplace=True), net)``, ``x -= self.mean`` in a ``forward``). netlens runs several forwards on
one batch (learning the output, finding the layer, capturing, masked passes) and hands the
user's own tensors to the model: without a copy the second forward would see the input
normalised twice, and the caller's tensor would come back changed. A copy costs far less than
the forward it feeds, and keeps autograd (the gradient reaches the original).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fresh", "write_count"]


def fresh(x: Any) -> Any:
    """``x`` with every tensor in it (in tuples, lists and dicts too) cloned, its memory
    layout kept; anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if type(x) in (tuple, list):
        return type(x)(fresh(v) for v in x)
    if type(x) is dict:
        return {k: fresh(v) for k, v in x.items()}
    return x


def write_count(t: torch.Tensor | None) -> int | None:
    """How often ``t`` was written in place (its version counter); None for no tensor or an
    inference tensor (``torch.inference_mode()`` keeps no counter)."""
    if t is None or t.is_inference():
        return None
    return t._version
