"""Where a model's input normalisation is, and weights files that hold more or less than the
network: a normaliser that forward calls first though __init__ defines it last, one defined
but not called, a wrapper normalising with buffers of its own, a normaliser's mean/std beside
the network's weights in a state_dict, non-persistent buffers in TorchScript files, and a
checkpoint holding only EMA weights. References are plain forwards with the normalisation
written out by hand, on pixels prepared by timm's transform without normalisation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
import torchvision.transforms as T
from conftest import randomize_bn
from PIL import Image
from timm.data import create_transform
from torch import nn
from torch.nn import functional as F

import netlens
from netlens.errors import NetlensWarning

torch.set_num_threads(1)
SIZE = 32
IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OWN = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # neither ImageNet's nor test_resnet's (0.5, 0.5)


def timm_net(name: str = "test_resnet", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(name, num_classes=5), seed).eval()


def images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def pixels(lens: netlens.Lens, imgs: list[Image.Image]) -> torch.Tensor:
    """The images in [0, 1], resized and cropped as the lens does, not normalised."""
    info = lens.preprocess_info()
    tf = create_transform(
        input_size=(3, SIZE, SIZE),
        crop_pct=info["crop_pct"],
        crop_mode=info["crop_mode"],
        interpolation=info["interpolation"],
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return torch.stack([tf(im) for im in imgs])


def normalised(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def check(lens: netlens.Lens, forward, imgs: list[Image.Image]) -> None:  # noqa: ANN001
    with torch.no_grad():
        ref = forward(pixels(lens, imgs)).softmax(1)
    assert (lens.predict(imgs) - ref).abs().max().item() < 1e-5


def netlens_warnings(caught: list) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, NetlensWarning)]


class ImageNormalizer(nn.Module):  # RobustBench's
    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BackboneFirst(nn.Module):  # the normaliser defined after the backbone, called first
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.backbone = net
        self.normalize = T.Normalize(*OWN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


class NormalizeNotInForward(nn.Module):  # a Normalize for predict(); forward takes tensors
    def __init__(self, net: nn.Module) -> None:  # normalised as the backbone's config says
        super().__init__()
        self.normalize = T.Normalize((0.5,) * 3, (0.5,) * 3)
        self.backbone = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class BufferNorm(nn.Module):  # normalises with buffers of its own in forward
    def __init__(self, net: nn.Module, used: bool = True, resize: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(OWN[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(OWN[1]).view(1, 3, 1, 1))
        self.backbone, self.used, self.resize = net, used, resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.used:
            x = (x - self.mean) / self.std
        if self.resize:
            x = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        return self.backbone(x)


def test_normaliser_runs_first_though_defined_after_the_backbone() -> None:
    model = BackboneFirst(timm_net())
    lens = netlens.load(model, input_size=SIZE)
    assert lens.preprocess_info()["mean"] == [0.0, 0.0, 0.0]
    assert "(normalize) normalises them itself" in lens.preprocess_info()["source"]
    check(lens, model, images())


def test_normaliser_not_called_in_forward_is_not_assumed() -> None:
    model = NormalizeNotInForward(timm_net())
    lens = netlens.load(model, input_size=SIZE)
    assert lens.preprocess_info()["mean"] == [0.5, 0.5, 0.5]
    check(lens, lambda x: model(normalised(x, (0.5,) * 3, (0.5,) * 3)), images())


def test_wrapper_normalising_with_its_own_buffers_is_fed_pixels() -> None:
    model = BufferNorm(timm_net())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = netlens.load(model, input_size=SIZE)
    assert not netlens_warnings(caught)
    assert "with its mean/std buffers" in lens.preprocess_info()["source"]
    check(lens, model, images())
    # buffers its forward does not use: the backbone's own normalisation, no warning
    unused = BufferNorm(timm_net(), used=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = netlens.load(unused, input_size=SIZE)
        netlens.load(timm_net(), input_size=SIZE)
        netlens.load(torchvision.models.resnet18(num_classes=3), input_size=SIZE)
    assert not netlens_warnings(caught)
    check(lens, lambda x: unused(normalised(x, (0.5,) * 3, (0.5,) * 3)), images())
    # buffers netlens cannot see applied (the first conv takes a resized input): one line
    with pytest.warns(NetlensWarning, match="holds mean/std buffers of its own"):
        netlens.load(BufferNorm(timm_net(), resize=True), input_size=SIZE)


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_normaliser_beside_the_weights_gives_the_statistics(tmp_path, scale: float) -> None:
    full = nn.Sequential(
        ImageNormalizer(tuple(v * scale for v in OWN[0]), tuple(v * scale for v in OWN[1])),
        timm_net(),
    ).eval()
    torch.save(full.state_dict(), tmp_path / "sd.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(full), tmp_path / "ts.pt")
    for name in ("sd.pt", "ts.pt"):
        with pytest.warns(NetlensWarning, match="'0.mean'/'0.std'"):
            lens = netlens.load(tmp_path / name, arch="test_resnet", input_size=SIZE, trust=True)
        assert lens.preprocess_info()["mean"] == pytest.approx(OWN[0])
        assert lens.card["state_dict_prefix"] == "1."
        check(lens, lambda x: full(x * scale), images())


def test_other_tensors_left_out_are_listed(tmp_path) -> None:
    net = timm_net()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["loss.pos_weight"] = torch.ones(5)
    torch.save(state, tmp_path / "lightning.pt")
    with pytest.warns(NetlensWarning, match=r"left out: loss\.pos_weight"):
        lens = netlens.load(tmp_path / "lightning.pt", arch="test_resnet", input_size=SIZE)
    check(lens, lambda x: net(normalised(x, (0.5,) * 3, (0.5,) * 3)), images())


NET_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        gain = torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1)
        self.register_buffer("gain", gain, persistent=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc((torch.relu(self.conv(x)) * self.gain).mean((2, 3)))
"""


def test_torchscript_with_non_persistent_buffers_loads(tmp_path, monkeypatch) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from net import Net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    net = Net().eval()
    relpos = timm_net("test_vit_relpos")
    size = relpos.pretrained_cfg["input_size"][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), tmp_path / "s.pt")
        torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, SIZE, SIZE)), tmp_path / "t.pt")
        traced = torch.jit.trace(relpos, torch.rand(1, 3, size, size))
        torch.jit.save(traced, tmp_path / "vit.pt")
    for name in ("s.pt", "t.pt"):
        lens = netlens.load(tmp_path / name, arch=f"{tmp_path / 'net.py'}:Net", trust=True)
        assert lens.card["weights_from"] == "TorchScript"
        x = torch.rand(2, 3, SIZE, SIZE)
        with torch.no_grad():
            assert torch.allclose(lens.model(x), net(x), atol=1e-6)
    lens = netlens.load(tmp_path / "vit.pt", arch="test_vit_relpos", trust=True)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(lens.model(x), relpos(x), atol=1e-5)


@pytest.mark.parametrize("key", ["ema", "model_ema", "state_dict_ema"])
def test_checkpoint_of_ema_weights_only_loads_them(tmp_path, key: str) -> None:
    net = timm_net()
    torch.save({key: net.state_dict(), "epoch": 3}, tmp_path / "ema.pt")
    with pytest.warns(NetlensWarning, match=f"only an EMA copy of the weights \\('{key}'\\)"):
        lens = netlens.load(tmp_path / "ema.pt", arch="test_resnet", input_size=SIZE)
    check(lens, lambda x: net(normalised(x, (0.5,) * 3, (0.5,) * 3)), images())
