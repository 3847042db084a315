"""The one line for an output that is not one row per image (:meth:`netlens.Lens.output`).

Three causes read differently from the tensor the model returned (``picked``, before netlens
reshapes it), for a batch of ``n`` rows:

- its first axis is 1 (or it is one number) while the batch is larger: the model takes one
  image at a time (an ONNX export's fixed batch: a Reshape to ``[1, 6, -1]`` folds a batch of
  images into one row), which ``--batch-size 1`` and ``--chunk 1`` run;
- another of its axes is the batch: a sequence-first T×N×C output (a CTC recogniser's, the
  layout of ``nn.CTCLoss``), which a wrapper returning it batch-first reads;
- else a forward that squeezes one image's batch axis away (``.squeeze()`` of 1×K).
"""

from __future__ import annotations

import torch

__all__ = ["rows_refusal"]


def rows_refusal(picked: torch.Tensor, n: int) -> str:
    """Why ``picked`` (the model's own output tensor) is not ``n`` rows, and what to do."""
    got = f"the model returned {tuple(picked.shape)} for {n} image(s), not one row per image"
    if n > 1 and (picked.dim() == 0 or picked.shape[0] == 1):
        return (
            f"{got}: it takes one image at a time (a fixed batch size, as in an ONNX export); "
            "run one image per forward pass: --batch-size 1, and --chunk 1 for cam and "
            "evaluate (batch_size=1, chunk=1 in Python); sanity: one image per run"
        )
    axis = next((k for k in range(1, picked.dim()) if picked.shape[k] == n), None)
    if axis is None:
        return (
            f"{got} (a forward that squeezes its batch axis away: .squeeze() of one image's "
            "1×K); return N×K (.squeeze(1), or .flatten(1))"
        )
    order = ", ".join(map(str, [axis, *(k for k in range(picked.dim()) if k != axis)]))
    ctc = picked.dim() == 3 and axis == 1
    return (
        f"{got}: its batch axis looks like axis {axis}"
        + (" (a sequence-first T×N×C output, as CTC recognisers return)" if ctc else "")
        + f"; wrap the model so its forward returns it batch-first (out.permute({order}), or "
        + ("out.transpose(0, 1)" if ctc else f"out.movedim({axis}, 0)")
        + "), and index it batch-first in a target"
        + (" (out[:, t, c])" if ctc else "")
    )
