"""The ``netlens`` command line (typer + rich). Heavy imports happen inside commands only."""
