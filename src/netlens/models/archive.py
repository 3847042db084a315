"""Look inside a torch file's zip archive before ``torch.load`` inflates it.

``torch.save`` stores its records uncompressed, but ``torch.load`` also reads DEFLATE-compressed
records: a 1 MB file can then inflate to 1 GB of "weights" (a zip bomb) before netlens sees a
single field. :func:`check_archive` reads only the zip's central directory.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from ..naming import display_path

__all__ = ["check_archive"]

MAX_INFLATION = 4  # real weights barely compress; a bomb inflates a thousandfold
_SLACK = 64 << 20


def check_archive(path: Path) -> None:
    """Refuse a zip-format torch file whose records inflate far beyond its size on disk.

    Files that are not zip archives (legacy torch files, safetensors) pass untouched.
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            inflated = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load will say it cannot read the file
    on_disk = path.stat().st_size
    if inflated > MAX_INFLATION * on_disk + _SLACK:
        raise ModelLoadError(
            f"{display_path(path.name)} is a {on_disk / 2**20:.1f} MB archive whose records "
            f"inflate to {inflated / 2**20:,.0f} MB (a zip bomb, not a torch.save file); "
            "refusing to read it"
        )
