"""How netlens reads a user's Dataset / DataLoader: batch samplers, Subsets, ConcatDatasets,
target_transform, limit= on a loader, streams, and the one-line refusals (sweep 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset

import netlens
from netlens.errors import DataError, NetlensError

torch.set_num_threads(1)
MODEL = ["a", "b"]  # the model's classes
OWN = ["b", "a"]  # the datasets' own class names: the other order
N = 12


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def setup():  # noqa: ANN201
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.fc.bias.zero_()
    x = torch.randn(N, 3, 8, 8)
    with torch.no_grad():
        pred = net(x).argmax(1)
    lens = netlens.load(net, classes=MODEL, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=8)
    return lens, net, x, pred


class Own(Dataset):
    """Float image tensors labelled by the dataset's own class order (``OWN``): each label is
    the model's prediction, so by name every image is right (accuracy 1.0)."""

    classes = OWN

    def __init__(self, x: torch.Tensor, pred: torch.Tensor) -> None:
        self.x, self.y = x, [OWN.index(MODEL[int(p)]) for p in pred]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.x[i], self.y[i]


def _top(lens, data, **kw):  # noqa: ANN001, ANN202
    return lens.run("top-activations", data, layer="features", k=1, channels=[0, 1, 2, 3], **kw)


def _naive_top(net: Net, x: torch.Tensor, pos: list[int]) -> np.ndarray:
    with torch.no_grad():
        peak = net.features(x[pos]).flatten(2).amax(2)  # images in drawn order × channels
    return np.asarray(pos)[peak.argmax(0).numpy()]


def test_batch_sampler_numbers_items_by_dataset_position(setup) -> None:  # noqa: ANN001
    lens, net, x, pred = setup
    bs = [[2, 4], [11, 0, 9], [7, 6]]
    r = _top(lens, DataLoader(Own(x, pred), batch_sampler=bs))
    want = _naive_top(net, x, [i for b in bs for i in b])
    assert r.arrays["indices"][:, 0].tolist() == want.tolist()


def test_subset_and_concat_are_matched_by_class_name(setup) -> None:  # noqa: ANN001
    lens, _, x, pred = setup
    ds = Own(x, pred)
    for data in (Subset(ds, [5, 1, 8, 3]), DataLoader(Subset(ds, [5, 1, 8]), batch_size=2)):
        r = lens.ablate(data, layers="features.1")
        assert r.baseline["value"] == 1.0
        assert "class names matched" in r.meta["label_source"]
    assert lens.ablate(ConcatDataset([ds, Subset(ds, [0, 1])]), layers="features.1").baseline[
        "value"
    ] == pytest.approx(1.0)


def test_target_transform_labels_are_model_indices(setup) -> None:  # noqa: ANN001
    lens, _, x, pred = setup

    class TT(Own):
        def __init__(self) -> None:
            super().__init__(x, pred)
            self.target_transform = lambda c: c

        def __getitem__(self, i: int):  # noqa: ANN204
            return self.x[i], int(pred[i])  # already the model's index

    r = lens.ablate(TT(), layers="features.1")
    assert r.baseline["value"] == 1.0
    assert "target_transform" in r.meta["label_source"]


def test_a_label_error_stops_the_run_in_one_line(setup) -> None:  # noqa: ANN001
    lens, _, x, pred = setup

    class OneHot(Own):
        def __getitem__(self, i: int):  # noqa: ANN204
            return self.x[i], nn.functional.one_hot(torch.tensor(self.y[i]), 2).float()

    with pytest.raises(DataError, match="not an index into its classes") as err:
        lens.ablate(OneHot(x, pred), layers="features.1")
    assert "could be read" not in str(err.value)  # a label problem, not unreadable images


def test_limit_takes_the_loaders_first_draws(setup) -> None:  # noqa: ANN001
    lens, net, x, pred = setup
    bs = [[9, 3], [7, 11], [5]]
    r = _top(lens, DataLoader(Own(x, pred), batch_sampler=bs), limit=3)
    assert r.arrays["indices"][:, 0].tolist() == _naive_top(net, x, [9, 3, 7]).tolist()


class Pixels(Dataset):
    """uint8 H×W×3 pixels with masks (the whole image's left half)."""

    classes = OWN

    def __init__(self, x: torch.Tensor, pred: torch.Tensor) -> None:
        self.own = Own(x, pred)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):  # noqa: ANN204
        x, y = self.own[i]
        return ((x.clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy(), y

    def mask(self, i: int) -> np.ndarray:
        m = np.zeros((8, 8), bool)
        m[:, : 4 + i % 3] = True
        return m


def test_subset_of_pixels_takes_its_items_masks(setup) -> None:  # noqa: ANN001
    lens, *_ = setup
    ds = Pixels(*setup[2:])
    whole = lens.evaluate(ds, methods="gradcam", metrics="energy")
    part = lens.evaluate(Subset(ds, [9, 2, 5]), methods="gradcam", metrics="energy")
    got, ref = part.arrays["gradcam/energy/score"], whole.arrays["gradcam/energy/score"]
    np.testing.assert_allclose(got, ref[[9, 2, 5]], atol=1e-5)


def test_name_labels_with_classes(setup) -> None:  # noqa: ANN001
    lens, _, x, pred = setup

    class Named(Own):
        def __getitem__(self, i: int):  # noqa: ANN204
            return self.x[i], OWN[self.y[i]]

    assert lens.ablate(Named(x, pred), layers="features.1").baseline["value"] == 1.0


def test_streams_dict_loaders_and_unbatched_loaders(setup) -> None:  # noqa: ANN001
    lens, net, x, pred = setup
    own = Own(x, pred)

    class Stream(IterableDataset):
        classes = OWN

        def __iter__(self):  # noqa: ANN204
            return (own[i] for i in range(N))

        def __len__(self) -> int:
            return N

    assert lens.ablate(Stream(), layers="features.1").baseline["value"] == 1.0
    r = _top(lens, DataLoader(Stream(), batch_size=4))
    assert r.arrays["indices"][:, 0].tolist() == _naive_top(net, x, list(range(N))).tolist()

    class Dicts(Own):
        def __getitem__(self, i: int):  # noqa: ANN204
            return {"pixel_values": self.x[i], "labels": self.y[i]}

    r = _top(lens, DataLoader(Dicts(x, pred), batch_size=4))
    assert r.arrays["indices"][:, 0].tolist() == _naive_top(net, x, list(range(N))).tolist()
    with pytest.raises(DataError, match="batch_size=None"):
        lens.ablate(DataLoader(own, batch_size=None), layers="features.1")


def test_image_analyzers_refuse_a_dataloader_in_one_line(setup) -> None:  # noqa: ANN001
    lens, _, x, pred = setup
    with pytest.raises(NetlensError, match="cannot read images from a DataLoader"):
        lens.cam(DataLoader(Own(x, pred), batch_size=4))
