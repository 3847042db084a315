"""The reproducibility header: versions, model checksums, data, seeds, and commands to rerun."""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["Invocation", "file_sha256", "versions"]

EXTRA = {"torchvision": "torchvision", "timm": "timm", "numpy": "numpy", "opencv": "cv2"}


def versions() -> list[tuple[str, str]]:
    """(name, version): the run header's (netlens, torch, Python) and the libraries under it."""
    from ..provenance import versions as core

    out = list(core().items())
    for name, module in EXTRA.items():
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__version__", None):
            out.append((name, str(loaded.__version__)))
    return out


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Invocation:
    """How to name the model, images and data on a command line, to rerun any part."""

    model: str = ""
    images: list[str] = field(default_factory=list)
    data: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # --arch, --size, --label-map...
    unnamed: str = ""  # why the model cannot be named (held in memory): MODEL stands for it
    data_options: dict[str, Any] = field(default_factory=dict)  # with --data only
    # placeholder word (IMAGES, DATA, CLASSES.json, ...) → what it stands for, told after
    # every command that holds it
    remarks: dict[str, str] = field(default_factory=dict)

    def command(
        self, name: str, *args: str, images: bool = False, data: bool = False, **flags: Any
    ) -> str:
        """``netlens NAME MODEL [IMAGES] [--data D] --flag value ...`` as a shell line."""
        words = ["netlens", name]
        words += ["MODEL"] if self.unnamed else [self.model] if self.model else []
        words += self.images if images else []
        words += list(args)
        if data and self.data:
            words += ["--data", self.data]
        extra = self.data_options if data and self.data else {}
        for key, value in {**self.options, **extra, **flags}.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [flag, str(value)]
        line = " ".join(shlex.quote(w) for w in words)
        remarks = [f"MODEL: {self.unnamed}"] if self.unnamed else []
        remarks += [f"{w}: {self.remarks[w]}" for w in dict.fromkeys(words) if w in self.remarks]
        return f"{line}  # {'; '.join(remarks)}" if remarks else line


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def host() -> list[tuple[str, str]]:
    """Where the report was built: platform, Python executable, torch threads."""
    import torch

    return [
        ("platform", platform.platform()),
        ("python executable", sys.executable),
        ("torch threads", str(torch.get_num_threads())),
    ]
