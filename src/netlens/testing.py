"""A pytest helper for plugin authors (and netlens' own tests).

Enable it in a ``conftest.py`` (or a test module)::

    pytest_plugins = ["netlens.testing"]

Fixtures:
    tiny_model: a small seeded CNN (``input_size = (3, 32, 32)``, 4 classes, eval mode).
    tiny_lens: a :class:`netlens.Lens` around ``tiny_model`` with class names.
    tiny_model_file: a netlens checkpoint of a small timm CNN (48 px) for CLI tests.
    sample_images: a few generated PNG files (coloured shapes) in ``tmp_path``.
    plugin_host: a factory for fresh :class:`~netlens.plugins.manager.PluginHost` objects,
        ``plugin_host(my_plugin_module)``, unaffected by ``NETLENS_DISABLE_PLUGINS``.

Helpers:
    assert_no_hooks(model): fail when any module (or torch globally) still holds a hook.
    assert_model_unchanged(model): a context manager that fails when the block changed the
        model's weights, buffers, ``.grad``, ``requires_grad``, train/eval flags or hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from torch import nn

if TYPE_CHECKING:
    from .lens import Lens
    from .plugins.manager import PluginHost

__all__ = [
    "TINY_CLASSES",
    "TinyCNN",
    "assert_model_unchanged",
    "assert_no_hooks",
    "make_sample_images",
    "model_snapshot",
]

TINY_CLASSES = ["circle", "square", "triangle", "cross"]
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class TinyCNN(nn.Module):
    """conv → BN → ReLU → conv → ReLU → global average pool → linear (32×32 RGB in)."""

    input_size = (3, 32, 32)

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def make_tiny_model(seed: int = 0, num_classes: int = 4) -> TinyCNN:
    """A seeded :class:`TinyCNN` in eval mode, with non-trivial BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(num_classes)
    with torch.no_grad():
        model.bn1.running_mean.copy_(0.1 * torch.randn(8, generator=gen))
        model.bn1.running_var.copy_(1 + 0.2 * torch.rand(8, generator=gen))
    return model.eval()


def make_sample_images(
    folder: str | Path, n: int = 3, size: tuple[int, int] = (40, 48), seed: int = 0
) -> list[Path]:
    """Write ``n`` PNG files (a bright disc or square on a noisy background) into ``folder``."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    paths = []
    for i in range(n):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        cx, cy, r = (
            int(rng.integers(w // 4, 3 * w // 4)),
            int(rng.integers(h // 4, 3 * h // 4)),
            h // 5,
        )
        if i % 2 == 0:
            cv2.circle(img, (cx, cy), r, colour, -1)
        else:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
        path = folder / f"sample{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        paths.append(path)
    return paths


# -- assertions ------------------------------------------------------------------------------
def _hooks(model: nn.Module) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        for attr in _HOOK_DICTS:
            keys = list(getattr(mod, attr, {}) or {})
            if keys:
                found[f"{name or '<root>'}.{attr}"] = keys
    return found


def _global_hooks() -> dict[str, int]:
    from torch.nn.modules import module as m

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return {n: len(getattr(m, n, {})) for n in names if getattr(m, n, {})}


def assert_no_hooks(model: nn.Module) -> None:
    """Fail when any sub-module of ``model``, or torch's global module hooks, hold a hook."""
    left = {**_hooks(model), **_global_hooks()}
    assert not left, f"hooks left behind: {', '.join(sorted(left))}"


def model_snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything :func:`assert_model_unchanged` compares, copied."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad": {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": _hooks(model),
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("requires_grad", "training", "hooks"):
        if before[key] != after[key]:
            changed = {
                k
                for k in before[key].keys() | after[key].keys()
                if before[key].get(k) != after[key].get(k)
            }
            out.append(f"{key} changed: {', '.join(sorted(changed)[:5])}")
    for key in ("state", "grad"):
        b, a = before[key], after[key]
        changed = sorted(k for k in b.keys() | a.keys() if not _same(b.get(k), a.get(k)))
        if changed:
            out.append(
                f"{'weights/buffers' if key == 'state' else '.grad'} changed: "
                f"{', '.join(changed[:5])}"
            )
    return out


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


@contextmanager
def assert_model_unchanged(model: nn.Module) -> Iterator[nn.Module]:
    """Fail if the block changes the model (weights, buffers, ``.grad``, flags or hooks).

    Example:
        >>> with assert_model_unchanged(lens.model):
        ...     lens.run("my-analyzer", images)
    """
    before = model_snapshot(model)
    yield model
    problems = _diff(before, model_snapshot(model))
    assert not problems, "the model was changed: " + "; ".join(problems)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def tiny_model() -> TinyCNN:
    """A small seeded CNN (3×32×32 in, 4 classes), fresh for every test."""
    return make_tiny_model()


@pytest.fixture
def tiny_lens(tiny_model: TinyCNN, plugin_host: Callable[..., PluginHost]) -> Lens:
    """A Lens around ``tiny_model`` with class names and a fresh plugin host."""
    from .lens import Lens

    return Lens(tiny_model, classes=TINY_CLASSES, name="tiny", host=plugin_host())


@pytest.fixture
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A netlens checkpoint (timm ``test_resnet``, 4 classes, 48 px input) for CLI tests."""
    import timm

    from .images import Preprocess
    from .lens import Lens
    from .models.save import save

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    lens = Lens(model, Preprocess(size=(48, 48)), TINY_CLASSES, name="tiny")
    return save(lens, tmp_path_factory.mktemp("model") / "tiny.pt", arch="test_resnet")


@pytest.fixture
def sample_images(tmp_path: Path) -> list[Path]:
    """Three generated PNG files (40×48, shapes on noise) in ``tmp_path/images``."""
    return make_sample_images(tmp_path / "images")


@pytest.fixture
def plugin_host(monkeypatch: pytest.MonkeyPatch) -> Callable[..., PluginHost]:
    """Make fresh plugin hosts: ``plugin_host(*plugins, entry_points=True, disable=())``."""
    from .plugins.manager import PluginHost

    monkeypatch.delenv("NETLENS_DISABLE_PLUGINS", raising=False)

    def make(*plugins: Any, entry_points: bool = True, disable: tuple[str, ...] = ()) -> PluginHost:
        return PluginHost(plugins, entry_points=entry_points, disable=disable)

    return make
