"""Where training runs: CUDA, then Apple MPS, then CPU; and a readable name for the card."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["device_name", "pick_device"]


def pick_device(name: str | None = None) -> torch.device:
    """``None``/``auto``: CUDA when available, then MPS, then CPU; else the device named."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from ..lens import check_device  # the analyses' rules: meta, xla... are refused

    return check_device(name)


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(dev: torch.device) -> str:
    """E.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: AMD EPYC 7B13 (2 threads)``."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu: {_cpu_model()} ({n} thread{'' if n == 1 else 's'})"
    return dev.type
