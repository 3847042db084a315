"""The reproducibility header: versions, model checksums, data, seeds, and commands to rerun."""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Invocation", "file_sha256", "state_sha256", "versions"]

PACKAGES = {  # distribution → module, whose __version__ names the build (2.14.1+cpu)
    "netlens": "netlens",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "opencv-python-headless": "cv2",
}


def versions() -> list[tuple[str, str]]:
    """(name, version) of Python and the packages a result depends on."""
    out = [("python", platform.python_version())]
    for dist, module in PACKAGES.items():
        loaded = getattr(sys.modules.get(module), "__version__", None)
        try:
            out.append((dist, str(loaded or metadata.version(dist))))
        except metadata.PackageNotFoundError:
            continue
    return out


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, dtypes, shapes, bytes), whatever file it came
    from: the same weights give the same checksum in .pt, .pth or .safetensors."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(_raw(t))
    return h.hexdigest()


def _raw(t: Any) -> bytes:
    """A flat, contiguous tensor's bytes (any dtype, bfloat16 and bool included)."""
    import torch

    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


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
    options: dict[str, str] = field(default_factory=dict)  # --arch, --num-classes, --trust

    def command(
        self, name: str, *args: str, images: bool = False, data: bool = False, **flags: Any
    ) -> str:
        """``netlens NAME MODEL [IMAGES] [--data D] --flag value ...`` as a shell line."""
        words = ["netlens", name]
        words += [self.model] if self.model else []
        words += self.images if images else []
        words += list(args)
        if data and self.data:
            words += ["--data", self.data]
        for key, value in {**self.options, **flags}.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [flag, str(value)]
        return " ".join(shlex.quote(w) for w in words)


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
