"""Scale-out on ``torch.distributed``: the same analyses and training, sharded over processes.

- :mod:`.group`: :class:`Group`, this process's share of the work and the exchanges analyzers
  combine their partial results with (no-ops in one process), and the failure protocol.
- :mod:`.setup`: joining the job ``torchrun`` started (process group, backend, one device per
  rank).
- :mod:`.sinks`: progress drawn and rows written by rank 0 only.
- :mod:`.launch`: ``netlens COMMAND --distributed N``, which re-launches the command through
  torch's launcher (the code path of ``torchrun --nproc-per-node N -m netlens COMMAND``).
- :mod:`.parent`: a ``--distributed`` worker's tie to its launcher (it ends with the launcher,
  and leaves Ctrl-C to it).

See ``docs/scaling-out.md``.
"""

from __future__ import annotations

from .group import EXIT_LOST, DistributedError, Group, LostContact, RankFailed, describe

__all__ = ["EXIT_LOST", "DistributedError", "Group", "LostContact", "RankFailed", "describe"]
