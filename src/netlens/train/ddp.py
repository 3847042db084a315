"""Training over several processes (torchrun): DistributedDataParallel on the same global batches.

Under ``torchrun`` (or ``netlens train --distributed N``) every process trains one replica,
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (one GPU each when there are
GPUs). The global batch is the one a single process would draw — ``--batch-size`` images from the
same seeded shuffle, with the same augmentation draws — and each rank takes its contiguous part
of it (:class:`RankBatches`). Each rank's loss is weighted by its share of the batch, so the
gradient DDP averages is the global batch's mean. A run on N processes therefore follows the
single-process run up to floating-point reassociation of that sum — exactly so for models without
BatchNorm or with ``--sync-bn`` (batch statistics over the global batch, GPUs only); plain
BatchNorm normalises each part with its own statistics, as DDP always does, and dropout draws
differ per rank. A last batch smaller than the number of ranks cannot be split and is left out
(every rank skips it); with BatchNorm trained per rank, a part must hold 2 images (the global
batch must give every rank 2; a last batch that does not is left out).

Validation and test scores are exact: every rank scores its contiguous share of the batches and
the labels, predictions and loss terms are gathered in batch order (:func:`shared_loader`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

from ..distributed import Group
from ..errors import NetlensError

__all__ = ["RankBatches", "global_size", "rank_loader", "replicate", "shared_loader"]


class RankBatches(Sampler[list[int]]):
    """This rank's contiguous part of each global batch of ``batches`` (see the module doc)."""

    def __init__(self, batches: BatchSampler, group: Group, least: int = 1) -> None:
        self.batches, self.group, self.least = batches, group, least

    def __iter__(self) -> Any:
        for batch in self.batches:
            # a last batch that leaves a rank fewer than `least` images cannot be split
            if len(batch) >= self.least * self.group.world:
                yield list(self.group.share(batch))

    def __len__(self) -> int:
        n, size = len(self.batches.sampler), self.batches.batch_size  # type: ignore[arg-type]
        tail = n % size
        if self.batches.drop_last:  # the tail is not drawn at all
            return len(self.batches)
        return len(self.batches) - (0 < tail < self.least * self.group.world)


def global_size(step: int, n: int, batch_size: int) -> int:
    """The size of global batch ``step`` of an epoch over ``n`` images."""
    return min(batch_size, n - step * batch_size)


def rank_loader(loader: DataLoader, group: Group, batchnorm: bool = False) -> DataLoader:
    """The shuffling training ``loader``, each global batch cut to this rank's part.

    ``batchnorm``: the model trains BatchNorm on each rank's part, which needs 2 images or more
    (as one process leaves out a last batch of one image): a ``--batch-size`` that gives a rank
    one image is refused, and a last batch that would is left out.
    """
    if group.world == 1:
        return loader
    size = loader.batch_size or 0
    if size < group.world:
        raise NetlensError(
            f"--batch-size {size} cannot be split over {group.world} processes; "
            "give at least one image per process (--batch-size is the global batch)"
        )
    if batchnorm and size < 2 * group.world:
        raise NetlensError(
            f"--batch-size {size} over {group.world} processes gives a process batches of one "
            f"image, on which BatchNorm cannot train; give --batch-size {2 * group.world} or "
            "more (--batch-size is the global batch)"
        )
    return DataLoader(
        loader.dataset,
        batch_sampler=RankBatches(  # type: ignore[arg-type]
            loader.batch_sampler,  # type: ignore[arg-type]
            group,
            least=2 if batchnorm else 1,
        ),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        generator=loader.generator,  # the workers' base seed (the order is EpochShuffle's)
        collate_fn=loader.collate_fn,
    )


def shared_loader(loader: DataLoader, group: Group, max_batches: int | None) -> DataLoader:
    """This rank's contiguous share of the first ``max_batches`` batches of ``loader``."""
    if group.world == 1:
        return loader
    batches = [list(b) for b in loader.batch_sampler]  # type: ignore[union-attr]
    return DataLoader(
        loader.dataset,
        batch_sampler=group.share(batches[:max_batches]),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


def replicate(model: nn.Module, group: Group, device: torch.device, sync_bn: bool) -> nn.Module:
    """``model`` as a DDP replica (the model itself in one process); SyncBatchNorm if asked."""
    if sync_bn and device.type != "cuda":
        raise NetlensError("--sync-bn needs GPUs (SyncBatchNorm runs on CUDA); drop it on CPU")
    if group.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else group.local_rank]
    return DistributedDataParallel(model, device_ids=ids if device.type == "cuda" else None)
