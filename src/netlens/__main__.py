"""``python -m netlens`` — and ``torchrun --nproc-per-node N -m netlens COMMAND ...``."""

import sys

from .cli.app import main

if __name__ == "__main__":
    sys.argv[0] = "netlens"  # usage lines and the run header's command say netlens
    main()
