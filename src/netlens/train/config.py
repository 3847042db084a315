"""What a training run is: every setting, JSON-able, stored in the checkpoint's record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..analyzers.options import MAX_SEED
from ..errors import NetlensError, hint
from ..parallel import check_workers
from ..preprocess.spec import MAX_SIDE

__all__ = ["TrainConfig"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MAX_LR = 10.0  # far above any useful peak rate; 1e300 overflows the optimizer's float math


@dataclass
class TrainConfig:
    """Settings of one ``netlens train`` run (see ``netlens train --help``)."""

    arch: str
    data: str
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    flip: bool = False
    crop: int = 0
    seed: int = 0
    device: str | None = None
    out: str = "model.pt"
    workers: int = 2
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    freeze: str | None = None
    resume: bool = False
    max_batches: int | None = None
    threads: int | None = None
    img_size: int | None = None
    sync_bn: bool = False
    strict: bool = False  # stop at the first unreadable image (default: skip and record it)
    trust: bool = False  # --init may unpickle a whole pickled model (runs code from the file)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise NetlensError(problem)
        check_workers("--workers", self.workers)

    def _problem(self) -> str | None:
        if not isinstance(self.arch, str):
            return _not_a_name("arch", self.arch)
        if self.optimizer not in OPTIMIZERS:
            return f"--optimizer must be one of {', '.join(OPTIMIZERS)}"
        if self.schedule not in SCHEDULES:
            return f"--schedule must be one of {', '.join(SCHEDULES)}"
        if self.epochs < 1:
            return f"--epochs must be >= 1, not {self.epochs}"
        if self.batch_size < 1:
            return f"--batch-size must be >= 1, not {self.batch_size}"
        if not 0 < self.lr <= MAX_LR:  # also refuses NaN; a larger rate overflows the optimizer
            return f"--lr must be a number > 0 and at most {MAX_LR:g}, not {self.lr:g}"
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            return f"--weight-decay must be a finite number >= 0, not {self.weight_decay}"
        if not 0 <= self.label_smoothing < 1:
            return "--label-smoothing must be in [0, 1)"
        if not 0 <= self.seed <= MAX_SEED:
            return f"--seed must be 0 to {MAX_SEED}, not {self.seed}"
        if self.img_size is not None and not 1 <= self.img_size <= MAX_SIDE:
            return f"--img-size must be 1 to {MAX_SIDE} pixels, not {self.img_size}"
        if not 0 <= self.crop <= MAX_SIDE:
            return f"--crop must be 0 to {MAX_SIDE} pixels, not {self.crop}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The settings in ``d``; a key that is no setting (``epoch=``, ``optimiser=``) is refused
        in one line naming the closest ones, not dropped."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            said = ", ".join(f"'{k}'" + _hint(str(k), names) for k in unknown)
            raise NetlensError(
                f"unknown training option{'s' if len(unknown) > 1 else ''} {said} "
                "(see netlens train --help)"
            )
        return cls(**d)


def _not_a_name(option: str, value: Any) -> str:
    """One line for an architecture that is not a name (a model object, say)."""
    what = f"a {type(value).__name__} object" if value is not None else "None"
    return (
        f"{option} takes an architecture name (resnet18, timm:…, tv:…) or FILE.py:Class, not "
        f"{what}; to fine-tune a model object, save its state_dict (torch.save(model."
        "state_dict(), 'init.pt')) and pass --init init.pt (init= in Python) with the --arch "
        "it was built as"
    )


def _hint(name: str, names: list[str]) -> str:
    """`` (did you mean 'epochs'?)``, or nothing when no setting is close."""
    said = hint(name, names).removeprefix("; ")
    return f" ({said})" if said else ""
