"""Batch augmentation on tensors: random horizontal flips and padded random crops.

Done on whole batches on the training device (no per-image Python), so in-memory datasets
train at full speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import NetlensError

__all__ = ["augment_batch"]


def augment_batch(
    x: torch.Tensor,
    *,
    flip: bool = False,
    crop: int = 0,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Flip each image left-right with p=0.5 and shift it by up to ``crop`` pixels each way.

    The crop pads by ``crop`` pixels (zeros: the dataset mean after normalisation) and cuts a
    window of the original size at a random offset per image. ``rows=(start, total)``: ``x`` is
    rows ``start...`` of a batch of ``total`` images (one rank's part): the draws are made for
    the whole batch, so every image gets what it would get in one process.
    """
    n, _, h, w = x.shape
    dev = x.device
    start, total = rows or (0, n)
    mine = slice(start, start + n)
    if flip:
        mask = torch.rand(total, generator=generator)[mine].lt(0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    check_crop(crop, h, w)
    if crop > 0:
        padded = F.pad(x, (crop, crop, crop, crop))
        dy = torch.randint(0, 2 * crop + 1, (total,), generator=generator)[mine].to(dev)
        dx = torch.randint(0, 2 * crop + 1, (total,), generator=generator)[mine].to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n×h×1
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # n×1×w
        batch = torch.arange(n, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    return x.contiguous()


def check_crop(crop: int, h: int, w: int) -> None:
    """One line when ``crop`` shifts h×w images past their whole size (padding that costs
    (2·crop)² per image and shows nothing of the image)."""
    if crop >= min(h, w):
        side = min(h, w)
        raise NetlensError(f"--crop {crop} shifts {h}×{w} images out of sight; use under {side}")
