"""The one line for an output that is not one row per image (:meth:`netlens.Lens.output`).

Three causes read differently from the tensor the model returned (``picked``, before netlens
reshapes it), for a batch of ``n`` rows:

- its first axis is 1 (or it is one number) while the batch is larger: the model takes one
  image at a time (an ONNX export's fixed batch: a Reshape to ``[1, 6, -1]`` folds a batch of
  images into one row), which ``--batch-size 1`` and ``--chunk 1`` run;
- another of its axes is the batch: a sequence-first T×N×C output (a CTC recogniser's, the
  layout of ``nn.CTCLoss``), which a wrapper returning it batch-first reads;
- R rows per image (augmented copies stacked on the batch), said beside the sequence-first
  reading where an axis is also the batch's;
- a flat vector for several images (``.flatten()`` of N×K);
- for one image, a forward that squeezes its batch axis away (``.squeeze()`` of 1×K).
"""

from __future__ import annotations

import torch

__all__ = ["rows_refusal"]


def rows_refusal(picked: torch.Tensor, n: int) -> str:
    """Why ``picked`` (the model's own output tensor) is not ``n`` rows, and what to do."""
    got = f"the model returned {tuple(picked.shape)} for {n} image(s), not one row per image"
    rows = picked.shape[0] if picked.dim() else 1
    if n > 1 and rows == 1:
        return (
            f"{got}: it takes one image at a time (a fixed batch size, as in an ONNX export); "
            "run one image per forward pass: --batch-size 1, and --chunk 1 for cam and "
            "evaluate (batch_size=1, chunk=1 in Python); sanity: one image per run"
        )
    axis = next((k for k in range(1, picked.dim()) if picked.shape[k] == n), None)
    if n > 1 and picked.dim() == 1:
        return (
            f"{got} but one vector of {rows} values (a .flatten() or .view(-1) of N×K?); "
            "return N×K (.flatten(1))"
        )
    stacked = n > 1 and rows % n == 0  # R rows per image: copies stacked on the batch?
    per = rows // n
    copies = (
        f"{per} rows per image (augmented copies stacked on the batch?): return one row per "
        f"image (e.g. the mean of each image's {per} rows)"
    )
    if axis is not None:
        first = f"{got}: its batch axis looks like axis {axis}{_kind(picked, axis)}; "
        return first + _batch_first(picked, axis) + (f"; or, if it holds {copies}" * stacked)
    if stacked:
        return f"{got} but {copies}"
    if n == 1:
        return (
            f"{got} (a forward that squeezes its batch axis away: .squeeze() of one image's "
            "1×K); return 1×K (.squeeze(1), or .flatten(1))"
        )
    return f"{got}; return one row per image (N×K, N×K×H×W)"


def _ctc(picked: torch.Tensor, axis: int) -> bool:
    """A T×N×C output with the batch second: a CTC recogniser's."""
    return picked.dim() == 3 and axis == 1


def _kind(picked: torch.Tensor, axis: int) -> str:
    ctc = _ctc(picked, axis)
    return " (a sequence-first T×N×C output, as CTC recognisers return)" if ctc else ""


def _batch_first(picked: torch.Tensor, axis: int) -> str:
    """The wrapper that returns ``picked`` with ``axis`` first, and the target's indexing."""
    order = ", ".join(map(str, [axis, *(k for k in range(picked.dim()) if k != axis)]))
    ctc = _ctc(picked, axis)
    return (
        f"wrap the model so its forward returns it batch-first (out.permute({order}), or "
        + ("out.transpose(0, 1)" if ctc else f"out.movedim({axis}, 0)")
        + "), and index it batch-first in a target"
        + (" (out[:, t, c])" if ctc else "")
    )
