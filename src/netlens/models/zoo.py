"""The bundled model zoo: small reference models trained with ``netlens train``, inside the package.

Each model is a folder ``netlens/zoo/<name>/`` with ``model.safetensors`` (weights),
``card.json`` (architecture, classes, preprocessing, data, exact command, epochs, test metrics,
device, wall time) and ``samples/*.png`` (real test images; ``samples/masks/`` holds the
ground-truth object masks where the dataset has them). ``zoo:NAME`` works wherever a model path
does; commands called without a model use :data:`DEFAULT`.

Example:
    >>> lens = load_zoo("shapes-allconv")
    >>> lens.predict(lens.samples).argmax(1)
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, hint

if TYPE_CHECKING:
    import torch

    from ..lens import Lens
    from ..plugins.manager import PluginHost

__all__ = ["DEFAULT", "info", "list_models", "load_zoo", "model_dir", "names", "zoo_root"]

DEFAULT = "shapes-allconv"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")


def zoo_root() -> Path:
    """The folder holding the bundled models (``netlens/zoo`` inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "zoo"


def names() -> list[str]:
    """Names of the bundled models, sorted."""
    root = zoo_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "card.json").is_file())


def model_dir(name: str) -> Path:
    """The folder of zoo model ``name``; unknown names fail with one line listing close names."""
    known = names()
    if name not in known:
        listing = ", ".join(known) or "none installed"
        raise ModelLoadError(
            f"no zoo model '{name}'{hint(name, known)} (bundled: {listing}; `netlens zoo list`)"
        )
    return zoo_root() / name


@lru_cache(maxsize=16)
def _read_card(path: Path, mtime: float) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"zoo card {path} is unreadable ({exc}); reinstall netlens") from None


def card(name: str) -> dict[str, Any]:
    """The model card of ``name`` as a dict (a fresh copy)."""
    path = model_dir(name) / "card.json"
    return json.loads(json.dumps(_read_card(path, path.stat().st_mtime)))


def samples(name: str) -> list[Path]:
    """The sample test images shipped with ``name`` (masks excluded), sorted."""
    folder = model_dir(name) / "samples"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


def sample_mask(name: str, image: str | Path) -> Path | None:
    """The ground-truth mask file of a sample image, when the model ships one."""
    path = model_dir(name) / "samples" / "masks" / (Path(image).stem + ".png")
    return path if path.is_file() else None


def _summary(name: str) -> dict[str, Any]:
    c = card(name)
    test = c.get("test") or {}
    folder = model_dir(name)
    return {
        "name": name,
        "default": name == DEFAULT,
        "arch": c.get("arch"),
        "data": c.get("data"),
        "classes": len(c.get("classes") or []),
        "input": [
            c.get("preprocess", {}).get("channels"),
            *c.get("preprocess", {}).get("size", []),
        ],
        "test_accuracy": test.get("accuracy"),
        "target_accuracy": c.get("target_accuracy"),
        "size_mb": round((folder / "model.safetensors").stat().st_size / 2**20, 2),
        "description": c.get("description", ""),
    }


def list_models() -> list[dict[str, Any]]:
    """One summary dict per bundled model: name, arch, data, classes, test accuracy, size."""
    return [_summary(n) for n in names()]


def info(name: str) -> dict[str, Any]:
    """Everything known about zoo model ``name``: the card plus its files and samples."""
    folder = model_dir(name)
    out = card(name)
    out.update(
        {
            "name": name,
            "default": name == DEFAULT,
            "path": str(folder),
            "size_mb": _summary(name)["size_mb"],
            "samples": [str(p) for p in samples(name)],
            "masks": [str(m) for p in samples(name) if (m := sample_mask(name, p)) is not None],
        }
    )
    return out


def load_zoo(
    name: str | None = None,
    host: PluginHost | None = None,
    device: str | torch.device | None = None,
) -> Lens:
    """Load zoo model ``name`` (the default model when None) into a Lens with its samples.

    A zoo model is a model folder (``card.json`` + ``model.safetensors``) read by the same
    loaders as any file, so its card is validated like any checkpoint's.
    """
    from ..lens import Lens
    from ..plugins.manager import PluginHost
    from .load import load_file

    name = DEFAULT if name is None else name  # "zoo:" names none: refused by model_dir
    folder = model_dir(name)
    host = host or PluginHost()
    loaded = load_file(folder, host)
    loaded.model.eval()
    pre = loaded.preprocess
    if pre is not None:
        pre = pre.override(source=f"netlens zoo card of {name}")
    lens = Lens(
        loaded.model,
        pre,
        loaded.classes,
        name=name,
        host=host,
        card={**loaded.card, "source": f"zoo:{name}"},
        samples=samples(name),
    )
    return lens.to(device)
