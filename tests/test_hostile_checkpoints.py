"""Hostile checkpoints: validated before anything is built, refused in one line, never unpickled
without trust, bounded in memory (issue 14, items 1 and 5)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from hostile_inputs import (
    HOSTILE_CHECKPOINTS,
    assert_one_clean_line,
    base_checkpoint,
    evil_pickles,
    netlens_cli,
    run_measured,
    zip_bomb,
)
from typer.testing import CliRunner

import netlens
import netlens.plugins
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensError, UnsafeModelError
from netlens.models import checkpoint as checkpoint_module
from netlens.models.arch_options import ALLOWED_OPTIONS, DENIED
from netlens.models.meta import AllocationBudget, OverBudget, shapes_on_meta
from netlens.plugins.manager import PluginHost

runner = CliRunner()
MB = 1024


@pytest.fixture(scope="module")
def base() -> dict:
    return base_checkpoint()


def write(ckpt: dict, path: Path) -> Path:
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_is_one_line_and_builds_nothing(case, base, tmp_path, monkeypatch):
    mutate, fragment = HOSTILE_CHECKPOINTS[case]
    path = write(mutate(copy.deepcopy(base)), tmp_path / f"{case}.pt")

    def no_real_build(*args, **kwargs):
        raise AssertionError("a model was built for real from a bad checkpoint")

    monkeypatch.setattr(checkpoint_module, "build_within", no_real_build)
    with pytest.raises(NetlensError) as err:
        netlens.load(path)
    line = assert_one_clean_line(str(err.value))
    assert fragment in line


def test_honest_checkpoints_of_every_family_still_load(tmp_path):
    """netlens, timm and torchvision checkpoints pass validation and give the same outputs."""
    import timm
    import torchvision

    from netlens.models import archs

    torch.manual_seed(0)
    vgg_kwargs = {"widths": [4, 8, 8], "depth": 1}
    cases = {  # arch: (model, arch_kwargs, input shape)
        "vgg": (archs.vgg(3, **vgg_kwargs), vgg_kwargs, (1, 28, 28)),
        "test_resnet": (timm.create_model("test_resnet", num_classes=3), {}, (3, 96, 96)),
        "tv:squeezenet1_1": (torchvision.models.squeezenet1_1(num_classes=3), {}, (3, 96, 96)),
    }
    for arch, (model, kwargs, shape) in cases.items():
        model.eval()
        path = tmp_path / "m.pt"
        netlens.save(model, path, arch=arch, arch_kwargs={"num_classes": 3, **kwargs})
        lens = netlens.load(path, device="cpu")
        x = torch.randn(2, *shape)
        with torch.no_grad():
            torch.testing.assert_close(lens.model(x), model(x), rtol=1e-5, atol=1e-6)


class MetaShy(torch.nn.Module):
    """Like torchvision's RegNet: reads a tensor's value while building, so not on meta."""

    def __init__(self, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        width = int(torch.tensor(float(width)).item())
        self.conv = torch.nn.Conv2d(1, width, 3)
        self.fc = torch.nn.Linear(width, num_classes)
        self.input_size = (1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class MetaShyPlugin:
    @netlens.plugins.hookimpl
    def netlens_register_archs(self, registry):
        registry.add("metashy", MetaShy)


def test_an_arch_that_cannot_build_on_meta_gets_a_bounded_real_build(tmp_path):
    import torchvision

    host = PluginHost([MetaShyPlugin()])
    assert shapes_on_meta(lambda: MetaShy()) is None
    assert shapes_on_meta(lambda: torchvision.models.regnet_x_400mf()) is None  # .numpy()
    torch.manual_seed(0)
    model = MetaShy().eval()
    path = netlens.save(model, tmp_path / "m.pt", arch="metashy", arch_kwargs={"width": 8})
    lens = netlens.load(path, device="cpu", host=host)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), model(x))
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch_kwargs"]["width"] = 1 << 24  # 64M-wide conv and linear: GBs for 1 KB of weights
    with pytest.raises(ModelLoadError, match="needs more than") as err:
        netlens.load(write(ckpt, tmp_path / "wide.pt"), host=host)
    assert_one_clean_line(str(err.value))


@pytest.mark.parametrize(
    "arch",
    ["vgg", "resnet", "allconv", "lenet5", "resnet18", "test_vit", "tv:resnet18"],
)
def test_meta_shapes_equal_a_real_build(arch):
    from netlens.models.factory import create_arch

    host = PluginHost()
    shapes = shapes_on_meta(lambda: create_arch(arch, 5, host))
    real = create_arch(arch, 5, host)
    assert shapes is not None
    assert shapes.shapes == {k: tuple(v.shape) for k, v in real.state_dict().items()}
    tensors = list(real.parameters()) + list(real.buffers())
    assert shapes.nbytes == sum(t.numel() * t.element_size() for t in tensors)


def test_allocation_budget_counts_new_storage_only():
    with AllocationBudget(1 << 20) as budget:
        a = torch.zeros(1000)  # 4000 bytes
        a.add_(1)  # in place: free
        a.view(10, 100)  # view: free
        torch.ones(10, device="meta")  # meta: free
    assert budget.used == 4000
    with pytest.raises(OverBudget), AllocationBudget(1 << 20):
        torch.empty(1 << 20)  # 4 MB


def test_no_allowed_option_reads_files():
    assert not [name for name in ALLOWED_OPTIONS if DENIED.search(name)]
    for name in ("pretrained", "checkpoint_path", "pretrained_cfg_overlay", "cache_dir", "weights"):
        assert DENIED.search(name)


def test_checkpoint_path_kwarg_never_reaches_timm(tmp_path, monkeypatch):
    """Issue 14: ``arch_kwargs.checkpoint_path`` made timm open another file."""
    other = write({"w": torch.zeros(1)}, tmp_path / "other.pt")
    ckpt = base_checkpoint()
    ckpt["arch"] = "test_resnet"
    ckpt["arch_kwargs"] = {"num_classes": 3, "checkpoint_path": str(other)}
    path = write(ckpt, tmp_path / "ck.pt")
    opened: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda f, *a, **k: (opened.append(str(f)), real_load(f, *a, **k))[1]
    )
    with pytest.raises(ModelLoadError, match="checkpoint_path"):
        netlens.load(path)
    assert opened == [str(path)]


@pytest.mark.parametrize("name", sorted(evil_pickles(Path("m"))))
def test_pickles_never_run_without_trust(name, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(evil_pickles(marker)[name])
    with pytest.raises(NetlensError) as err:
        netlens.load(path)
    assert not marker.exists()
    assert_one_clean_line(str(err.value))
    if isinstance(err.value, UnsafeModelError):
        assert "--trust" in str(err.value)


@pytest.mark.parametrize("name", ["raw-protocol-2.pt", "torch-zip.pt"])
def test_the_same_pickles_do_run_with_trust(name, tmp_path):
    """The marker is real: with trust, unpickling runs the code (and netlens says what it got)."""
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(evil_pickles(marker)[name])
    with pytest.raises(ModelLoadError, match="model") as err:
        netlens.load(path, trust=True)
    assert marker.exists()
    assert_one_clean_line(str(err.value))


def test_zip_bomb_refused_before_torch_inflates_it(tmp_path):
    path = tmp_path / "bomb.pt"
    path.write_bytes(zip_bomb())
    for trust in (False, True):
        with pytest.raises(ModelLoadError, match="zip bomb") as err:
            netlens.load(path, trust=trust)
        assert_one_clean_line(str(err.value))


CLI_CASES = ["huge-width", "arch-int", "kwargs-list", "version-str", "odd-key", "preprocess-huge"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_says_one_line_and_writes_nothing(case, base, tmp_path):
    mutate, fragment = HOSTILE_CHECKPOINTS[case]
    path = write(mutate(copy.deepcopy(base)), tmp_path / "m.pt")
    img = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(img), np.zeros((28, 28), np.uint8))
    out = tmp_path / "out"
    res = runner.invoke(app, ["cam", str(path), str(img), "--out", str(out)])
    assert res.exit_code == 1
    assert fragment in assert_one_clean_line(res.stderr)
    assert not out.exists()


def test_checkpoint_bombs_stay_under_1gb_in_a_child_process(base, tmp_path):
    """Peak RSS of one process that meets the width, zip, budget and preprocess bombs."""
    wide = copy.deepcopy(base)
    wide["arch_kwargs"]["widths"] = [100_000] * 3
    big = copy.deepcopy(base)
    big["arch"], big["arch_kwargs"] = "tv:regnet_y_128gf", {"num_classes": 3}
    pre = copy.deepcopy(base)
    pre["preprocess"]["size"] = [60000, 60000]
    files = [write(c, tmp_path / f"{n}.pt") for n, c in (("w", wide), ("b", big), ("p", pre))]
    (tmp_path / "z.pt").write_bytes(zip_bomb())
    files.append(tmp_path / "z.pt")
    script = (
        "import sys, netlens\n"
        "for f in sys.argv[1:]:\n"
        "    try: netlens.load(f)\n"
        "    except netlens.NetlensError as e: print(e)\n"
    )
    res = run_measured([sys.executable, "-c", script, *map(str, files)])
    assert res["rc"] == 0, res["err"]
    assert len(res["out"].splitlines()) == 4, res["out"]
    assert res["peak_kb"] < 1024 * MB, res
    cli = run_measured([*netlens_cli(), "layers", str(files[0])])
    assert cli["rc"] == 1 and "do not fit" in assert_one_clean_line(cli["err"])
    assert cli["peak_kb"] < 1024 * MB, cli
