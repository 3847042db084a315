"""Your own architecture by name, class names for any source, input sizes, unknown archs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensError

NET_PY = '''
import torch
from torch import nn


class WideNet(nn.Module):
    """A user's own architecture: conv width and classes are arguments."""

    def __init__(self, width: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def make(width: int = 8):
    return WideNet(width, num_classes=3)


class LeNet(nn.Module):
    """LeNet-5 for 28x28 digits; says nothing about its input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 84)
        self.fc2 = nn.Linear(84, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
'''


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``usernets/nets.py`` (a package the user can import) in the working folder."""
    pkg = tmp_path / "usernets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NET_PY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg / "nets.py"


def wide(user_code: Path, width: int) -> nn.Module:
    import importlib

    torch.manual_seed(0)
    return importlib.import_module("usernets.nets").WideNet(width).eval()


def test_user_file_and_module_archs_load_a_state_dict(user_code: Path, tmp_path: Path) -> None:
    model = wide(user_code, 64)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    x = torch.randn(2, 3, 20, 20)
    for arch in (f"{user_code}:WideNet", "usernets.nets:make", "usernets/nets.py:WideNet"):
        lens = netlens.load(tmp_path / "w.pt", arch=arch, arch_kwargs={"width": 64}, device="cpu")
        with torch.no_grad():
            assert torch.equal(lens.model(x), model(x)), arch
    with pytest.raises(ModelLoadError, match="do not fit"):
        netlens.load(tmp_path / "w.pt", arch=f"{user_code}:WideNet", device="cpu")  # width 8


def test_user_arch_errors_are_one_line(user_code: Path, tmp_path: Path) -> None:
    torch.save(wide(user_code, 8).state_dict(), tmp_path / "w.pt")
    bad = (tmp_path / "broken.py", "import torch\nraise RuntimeError('boom')\n")
    bad[0].write_text(bad[1])
    cases = {
        f"{user_code}:WideNte": "has no 'WideNte'; did you mean 'WideNet'",
        "nothere.py:Net": "architecture file not found",
        "no_such_pkg.mod:make": "cannot import module 'no_such_pkg.mod'",
        f"{bad[0]}:Net": "importing broken.py failed: RuntimeError: boom",
    }
    for arch, msg in cases.items():
        with pytest.raises(ModelLoadError, match=msg) as err:
            netlens.load(tmp_path / "w.pt", arch=arch, device="cpu")
        assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="check --arch-kwargs"):
        netlens.load(
            tmp_path / "w.pt", arch=f"{user_code}:WideNet", arch_kwargs={"depth": 3}, device="cpu"
        )


def test_a_checkpoint_never_imports_the_code_it_names(user_code: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\nfrom usernets.nets import WideNet\n")
    lens = netlens.load(wide(user_code, 8), arch=f"{evil}:WideNet", classes=["a", "b", "c"])
    netlens.save(lens, tmp_path / "ck.pt")
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="never imports code named inside a model file"):
        netlens.load(tmp_path / "ck.pt", device="cpu")
    assert not marker.exists()
    again = netlens.load(tmp_path / "ck.pt", arch=f"{evil}:WideNet", device="cpu")  # named: runs
    assert marker.exists() and again.classes == ["a", "b", "c"]


def test_unknown_arch_fails_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm
    import torchvision

    torch.save({"w": torch.zeros(1)}, tmp_path / "m.pt")

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the name check")

    monkeypatch.setattr(timm, "create_model", built)
    monkeypatch.setattr(torchvision.models, "get_model", built)
    cases = {
        "resnet5": "did you mean resnet50",
        "tv:resnt18": "did you mean tv:resnet18",
        "alexnet": "torchvision's alexnet is tv:alexnet",
        "convnext_tinny": "convnext_tiny",
    }
    for arch, msg in cases.items():
        with pytest.raises(ModelLoadError, match=msg) as err:
            netlens.load(tmp_path / "m.pt", arch=arch)
        assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        netlens.load(tmp_path / "m.pt", arch="nonexistent")
    assert "did you mean" not in str(err.value)  # no unrelated suggestions


@pytest.fixture
def alexnet2() -> nn.Module:
    """The cats-vs-dogs tutorial model: torchvision AlexNet with a Linear(4096, 2) head."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    model.classifier[6] = nn.Linear(4096, 2)
    return model.eval()


def test_class_names_for_a_bare_state_dict(alexnet2: nn.Module, tmp_path: Path) -> None:
    torch.save(alexnet2.state_dict(), tmp_path / "cvd.pt")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    lens = netlens.load(
        tmp_path / "cvd.pt", arch="tv:alexnet", classes=tmp_path / "classes.txt", device="cpu"
    )
    assert lens.classes == ["cat", "dog"] and lens.class_index("cat", 2) == 0
    netlens.save(lens, tmp_path / "saved.pt")
    assert netlens.load(tmp_path / "saved.pt", device="cpu").classes == ["cat", "dog"]
    with pytest.raises(ModelLoadError, match="3 class names given but the model has 2 outputs"):
        netlens.load(tmp_path / "cvd.pt", arch="tv:alexnet", classes=["a", "b", "c"])
    with pytest.raises(NetlensError, match="3 class names given"):
        netlens.save(alexnet2, tmp_path / "x.pt", arch="tv:alexnet", classes=["a", "b", "c"])


def test_class_names_for_pickles_and_zoo(tiny: nn.Module, tmp_path: Path) -> None:
    torch.save(tiny, tmp_path / "whole.pt")
    names = ["w", "x", "y", "z"]
    (tmp_path / "c.json").write_text(json.dumps(names))
    lens = netlens.load(tmp_path / "whole.pt", trust=True, classes=tmp_path / "c.json")
    assert lens.classes == names
    zoo = netlens.load("zoo:shapes-allconv", classes=["o", "s", "t", "*", "+"], device="cpu")
    assert zoo.class_name(3) == "*"
    with pytest.raises(ModelLoadError, match="has 5 outputs"):
        netlens.load("zoo:shapes-allconv", classes=["a", "b"], device="cpu")


@pytest.fixture
def lenet_files(user_code: Path, tmp_path: Path) -> dict[str, Path]:
    import importlib

    from netlens.data.mnist import read_all

    torch.manual_seed(0)
    model = importlib.import_module("usernets.nets").LeNet().eval()
    torch.save(model, tmp_path / "lenet.pt")
    import cv2

    images, _ = read_all()
    cv2.imwrite(str(tmp_path / "digit.png"), images[0])
    return {"model": tmp_path / "lenet.pt", "image": tmp_path / "digit.png"}


def test_a_bare_28px_model_explains_a_28px_image(lenet_files: dict[str, Path]) -> None:
    lens = netlens.load(lenet_files["model"], trust=True, device="cpu")
    assert lens.transform.size is None
    res = lens.cam(lenet_files["image"])
    assert res.heatmaps.shape == (1, 28, 28)
    assert lens.input_size == (1, 28, 28)
    sized = netlens.load(lenet_files["model"], trust=True, input_size=28, device="cpu")
    assert [r.name for r in sized.layers()][:2] == ["conv1", "conv2"]


def test_cli_input_size_and_classes(lenet_files: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    model, image, out = str(lenet_files["model"]), str(lenet_files["image"]), tmp_path / "o"
    res = runner.invoke(app, ["cam", model, image, "--trust", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    pre = json.loads((out / "cam.json").read_text())["run"]["preprocess"]
    assert pre["size"] == [28, 28] and "from the first image" in pre["source"]
    import cv2

    big = tmp_path / "big.png"  # a 56×56 scan of the digit: resized to the 28×28 given
    cv2.imwrite(str(big), cv2.resize(cv2.imread(image), (56, 56)))
    digits = ",".join(f"d{i}" for i in range(10))
    args = ["cam", model, str(big), "--trust", "--input-size", "28", "--classes", digits]
    res = runner.invoke(app, [*args, "--target", "d3", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o2" / "cam.json").read_text())
    assert doc["images"][0]["target"] == 3 and doc["images"][0]["target_name"] == "d3"
    pre = doc["run"]["preprocess"]
    assert pre["size"] == [28, 28] and "user override (size=(28, 28))" in pre["source"]
    res = runner.invoke(app, ["cam", model, image, "--trust", "--input-size", "a,b"])
    assert res.exit_code == 1 and "--input-size takes" in res.output


def test_cli_user_arch_with_kwargs(user_code: Path, tmp_path: Path) -> None:
    torch.save(wide(user_code, 16).state_dict(), tmp_path / "w.pt")
    img = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    import cv2

    cv2.imwrite(str(tmp_path / "x.png"), img)
    args = ["cam", str(tmp_path / "w.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(
        app, [*args, "--arch", "usernets/nets.py:WideNet", "--arch-kwargs", '{"width": 16}']
    )
    assert res.exit_code == 0, res.output
