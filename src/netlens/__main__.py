"""``python -m netlens`` — and ``torchrun --nproc-per-node N -m netlens COMMAND ...``."""

import sys

from .cli.app import main
from .distributed.setup import exit_on_sigterm, in_torchrun

if __name__ == "__main__":
    sys.argv[0] = "netlens"  # usage lines and the run header's command say netlens
    if in_torchrun():  # a worker stopped by torchrun unwinds (locks released, no empty folder)
        with exit_on_sigterm():
            main()
    else:
        main()
