"""Optimizers and learning-rate schedules for the trainer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import NetlensError
from .config import TrainConfig

__all__ = ["make_optimizer"]

PCT_START = 0.25  # the share of the one-cycle schedule spent warming up


def _pct_start(steps: int) -> float:
    """The warm-up share of ``steps``: 0.25, except where OneCycleLR's warm-up would end at
    step 0 (4 steps: it divides by that length), which warms up over 1 step instead."""
    return 2 / steps if PCT_START * steps - 1 == 0 else PCT_START


def make_optimizer(cfg: TrainConfig, model: nn.Module, steps: int) -> tuple[Any, Any]:
    """AdamW or SGD (Nesterov) over the trainable parameters, with a per-step schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise NetlensError("every parameter is frozen; nothing to train (check --freeze)")
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=steps, pct_start=_pct_start(steps)
        )
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched
