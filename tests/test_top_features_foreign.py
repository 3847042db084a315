"""`top-activations` and `features` on data and models as users hand them over: headless
backbones, a DataLoader's collate_fn, user wrappers and ConcatDatasets, pointwise layers that
are no nn.Linear on channels-last maps, Datasets of bare images, images of different sizes and
quantized models. Each result is checked against plain hooks and autograd in the test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

import netlens
from netlens.analyzers.top_activations import gradient_box
from netlens.data.items import item_source
from netlens.errors import NetlensWarning
from netlens.images import Preprocess
from netlens.lens import Lens

pytestmark = [pytest.mark.usefixtures("one_thread")]


def hooked(model: nn.Module, module: nn.Module, xs: list[torch.Tensor], nhwc: bool = False):
    """Each image's output of ``module`` by a plain forward hook, as C×H×W."""
    got: list[torch.Tensor] = []
    h = module.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    with torch.no_grad():
        for x in xs:
            model(x[None].clone())
    h.remove()
    return [(o.permute(0, 3, 1, 2) if nhwc else o)[0] for o in got]


def reference_top(maps: list[torch.Tensor], k: int):
    """Per channel: the k samples with the highest peak (stable), their peaks and positions."""
    peaks = torch.stack([m.reshape(m.shape[0], -1).max(1).values for m in maps], 1)  # C×N
    where = [m.reshape(m.shape[0], -1).argmax(1) for m in maps]
    order = torch.sort(peaks, dim=1, descending=True, stable=True).indices[:, :k]
    pos = torch.zeros(*order.shape, 2, dtype=torch.long)
    for c in range(order.shape[0]):
        for r in range(k):
            i = int(order[c, r])
            w = maps[i].shape[-1]
            pos[c, r] = torch.tensor([int(where[i][c]) // w, int(where[i][c]) % w])
    return torch.gather(peaks, 1, order), order, pos


def reference_box(model, module, x, ch, y, xx, nhwc: bool = False):
    x = x[None].clone().requires_grad_(True)
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.__setitem__("o", o))
    model(x)
    h.remove()
    o = got["o"].permute(0, 3, 1, 2) if nhwc else got["o"]
    (g,) = torch.autograd.grad(o[0, ch, y, xx], x)
    return list(gradient_box(g[0]))


# 1. features auto on headless backbones


def _backbone() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )


@pytest.mark.parametrize("head", ["identity", "embedding"])
def test_features_auto_keeps_the_last_maps_of_a_headless_or_embedding_model(head: str) -> None:
    """A backbone whose output width equals its last maps' channel count (a head set to
    Identity; a 16-d embedding Linear) is no all-conv class-map head: auto keeps its last
    maps (it stepped back to 8-channel maps by the count alone)."""
    body = _backbone()
    tail = nn.Identity() if head == "identity" else nn.Linear(16, 16)
    net = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), tail).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    r = Lens(net, Preprocess(size=(16, 16))).features(x, top=3)
    assert r.meta["layers"] == ["4"]
    ref = hooked(net, net[4], list(x))
    np.testing.assert_allclose(
        r.arrays["4:means"], torch.stack([m.mean((1, 2)) for m in ref]).numpy(), atol=1e-5
    )


# 2. a DataLoader's collate_fn


class Stored(Dataset):
    def __init__(self, images: torch.Tensor, jitter: bool = False) -> None:
        self.images, self.jitter, self.reads = images, jitter, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.reads += 1
        x = self.images[i]
        if self.jitter:  # a random augmentation: another image on every read
            x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(self.reads))
        return x, 0


def _mirrored(batch):
    return torch.stack([b[0].flip(-1) for b in batch]), torch.tensor([b[1] for b in batch])


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


def test_top_images_and_boxes_come_through_the_loaders_collate_fn() -> None:
    """The patch pass re-read dataset[i], not the collate_fn's output: the images shown
    were not mirrored as the model saw them."""
    net = _conv_net()
    g = torch.Generator().manual_seed(2)
    base = torch.rand(6, 3, 16, 16, generator=g) * 0.2
    for i in range(6):
        base[i, :, 2 + 2 * i : 5 + 2 * i, 1:4] += 1.0  # a bright spot on the left
    loader = DataLoader(Stored(base), batch_size=4, collate_fn=_mirrored)
    lens = Lens(net, Preprocess(size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1)))
    r = lens.run("top-activations", loader, layer="2", k=2, channels=[0, 1])
    seen = base.flip(-1)
    scores, order, pos = reference_top(hooked(net, net[2], list(seen)), 2)
    a = r.arrays
    np.testing.assert_allclose(a["scores"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["indices"], order.numpy())
    for i, ch in enumerate(a["channels"]):
        for rank in range(2):
            idx, (y, xx) = a["indices"][ch, rank], a["positions"][ch, rank]
            true = np.clip(seen[idx].permute(1, 2, 0).numpy() * 255, 0, 255)
            assert np.abs(a["images"][i, rank].astype(float) - true).mean() < 1
            box = reference_box(net, net[2], seen[idx], int(ch), int(y), int(xx))
            assert a["boxes"][i, rank].tolist() == box
    assert not r.meta.get("warnings")


def test_top_says_when_inputs_read_again_do_not_give_their_peaks() -> None:
    """Random augmentation: the image read for the patch is not the one the model saw."""
    net = _conv_net()
    base = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    loader = DataLoader(Stored(base, jitter=True), batch_size=2)
    lens = Lens(net, Preprocess(size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1)))
    r = lens.run("top-activations", loader, layer="2", k=2, channels=[0])
    (line,) = r.meta["warnings"]
    assert "do not give their recorded peak" in line and "\n" not in line


# 3. the path column


def _image_folder(root) -> list[str]:
    import torchvision

    paths = []
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(3):
            p = root / c / f"{c}{i}.png"
            v = np.random.default_rng(len(paths)).integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(v).save(p)
            paths.append(str(p))
    tf = torchvision.transforms.ToTensor()
    return torchvision.datasets.ImageFolder(str(root), transform=tf), paths


class Reordered(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[len(self) - 1 - i]


def test_item_source_names_no_file_under_a_users_wrapper_and_each_concat_part(tmp_path) -> None:
    folder, paths = _image_folder(tmp_path)
    wrapped = Reordered(folder)
    assert [item_source(wrapped, i) for i in range(6)] == [None] * 6  # not paths[i]: wrong
    cat = ConcatDataset([Subset(folder, [1, 2]), Subset(folder, [5, 0, 3])])
    assert [item_source(cat, i) for i in range(5)] == [paths[j] for j in (1, 2, 5, 0, 3)]


def test_top_path_column_of_a_concat_of_image_folders(tmp_path) -> None:
    folder, paths = _image_folder(tmp_path)
    cat = ConcatDataset([Subset(folder, [4, 1]), Subset(folder, [0, 5, 2])])
    lens = Lens(_conv_net(), Preprocess(size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1)))
    r = lens.run("top-activations", cat, layer="2", k=2, channels=[0, 1])
    order = [4, 1, 0, 5, 2]
    assert [row["path"] for row in r.table] == [paths[order[row["sample"]]] for row in r.table]
    wrapped = lens.run("top-activations", Reordered(folder), layer="2", k=2, channels=[0])
    assert all("path" not in row for row in wrapped.table)


# 4. pointwise layers that are no nn.Linear on N×H×W×C maps


class LoRA(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.b = nn.Parameter(torch.randn(base.out_features, r) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T


class FLinear(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(o, i) / i**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)


class ChannelsLastBlock(nn.Module):
    """conv → permute → LayerNorm → LoRA(Linear) → GELU → F.linear → permute back (7×5 maps,
    6 and 9 channels: no axis length is ambiguous)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 4, stride=4)
        self.norm = nn.LayerNorm(6)
        self.up = LoRA(nn.Linear(6, 9))
        self.act = nn.GELU()
        self.down = FLinear(9, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x).permute(0, 2, 3, 1))
        y = self.down(self.act(self.up(y))).permute(0, 3, 1, 2)
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("layer", ["up", "act", "down"])
def test_pointwise_layers_that_are_no_linear_keep_channels_last(layer: str) -> None:
    """A LoRA adapter and an F.linear module on N×H×W×C were read as N×C×H×W (the map's rows
    as channels); GELU after the adapter went with it."""
    net = ChannelsLastBlock().eval()
    xs = torch.randn(5, 3, 28, 20, generator=torch.Generator().manual_seed(4))
    lens = Lens(net, Preprocess(size=(28, 20)))
    module = getattr(net, layer)
    maps = hooked(net, module, list(xs), nhwc=True)
    r = lens.run("top-activations", (xs, torch.zeros(5, dtype=torch.long)), layer=layer, k=2)
    scores, order, pos = reference_top(maps, 2)
    np.testing.assert_allclose(r.arrays["scores"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.arrays["indices"], order.numpy())
    np.testing.assert_array_equal(r.arrays["positions"], pos.numpy())
    f = lens.features(xs[:2], layer=layer, top=2)
    np.testing.assert_allclose(
        f.arrays[f"{layer}:means"],
        torch.stack([m.mean((1, 2)) for m in maps[:2]]).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert {i.name: i.layout for i in lens.layers()}[layer] == "NHWC"


# 5. a Dataset of bare images


class Bare(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_a_dataset_of_bare_image_tensors_runs_top_and_stats() -> None:
    """A 3×H×W tensor item is one image, not (image, label, ...) parts: top and stats crashed
    in the model (an image's rows unpacked as the image)."""
    net = _conv_net()
    xs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    lens = Lens(net, Preprocess(size=(16, 16)))
    r = lens.run("top-activations", Bare(list(xs)), layer="2", k=2)
    scores, order, pos = reference_top(hooked(net, net[2], list(xs)), 2)
    np.testing.assert_allclose(r.arrays["scores"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.arrays["indices"], order.numpy())
    stats = lens.run("stats", Bare(list(xs)), layers="2")
    assert stats.table[0]["channels"] == 6


def test_a_dataset_of_bare_pil_images_is_preprocessed_as_the_models() -> None:
    net = _conv_net()
    rng = np.random.default_rng(6)
    pils = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    lens = Lens(net, Preprocess(size=(16, 16)))
    r = lens.run("top-activations", Bare(pils), layer="2", k=1, channels=[0])
    xs = [lens.transform(np.asarray(p)) for p in pils]
    scores, order, _ = reference_top(hooked(net, net[2], xs), 1)
    np.testing.assert_allclose(r.arrays["scores"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.arrays["indices"], order.numpy())


# 6. images of different sizes


def test_top_of_images_of_different_sizes_one_per_batch() -> None:
    """Each batch's map has its own grid: sample and position were decoded with the first
    batch's, and images of different sizes could not be stacked for the patches."""
    net = _conv_net()
    sizes = [(16, 16), (24, 12), (12, 20), (20, 20), (8, 12)]
    g = torch.Generator().manual_seed(7)
    ims = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    loader = DataLoader(Bare([(x, 0) for x in ims]), batch_size=1)
    lens = Lens(net, Preprocess(size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1)))
    r = lens.run("top-activations", loader, layer="2", k=3, channels=[0, 1, 2])
    scores, order, pos = reference_top(hooked(net, net[2], ims), 3)
    a = r.arrays
    np.testing.assert_allclose(a["scores"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["indices"], order.numpy())
    np.testing.assert_array_equal(a["positions"], pos.numpy())
    assert a["images"].shape[2:] == (24, 20, 3)  # padded to the largest
    for i, ch in enumerate(a["channels"]):
        for rank in range(3):
            idx, (y, xx) = int(a["indices"][ch, rank]), a["positions"][ch, rank]
            box = reference_box(net, net[2], ims[idx], int(ch), int(y), int(xx))
            assert a["boxes"][i, rank].tolist() == box


# 7. quantized models


class _Quantizable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.conv(self.quant(x))).mean((2, 3))


def test_a_quantized_model_says_why_its_boxes_are_cells_and_its_figure_says_so() -> None:
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("fbgemm", "qnnpack", "x86") if e in engines), None)
    if engine is None:
        pytest.skip("no quantized engine")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _Quantizable().eval()
        net.qconfig = torch.ao.quantization.get_default_qconfig(engine)
        torch.ao.quantization.prepare(net, inplace=True)
        xs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
        net(xs)
        torch.ao.quantization.convert(net, inplace=True)
    lens = Lens(net, Preprocess(size=(16, 16)))
    with pytest.warns(NetlensWarning, match="quantized") as caught:
        r = lens.run("top-activations", (xs, torch.zeros(4, dtype=torch.long)), layer="conv", k=2)
    said = [str(w.message) for w in caught if "quantized" in str(w.message)]
    assert "no_grad" not in said[0]
    np.testing.assert_array_equal(r.arrays["boxes"], r.arrays["cells"])
    assert r.meta["boxes"] == "cells"
    figs = r.figures()
    titles = [" ".join(ax.get_title() for ax in f.axes) for f in figs.values()]
    assert all("gradient support" not in t for t in titles)
    assert any("map cell" in t for t in titles)
    plain = netlens.Lens(_conv_net(), Preprocess(size=(16, 16))).run(
        "top-activations", (xs, torch.zeros(4, dtype=torch.long)), layer="2", k=1
    )
    assert plain.meta["boxes"] == "gradient"
