"""evaluate's data paths: masks brought to the input as their images are (whatever their size,
through a user's Dataset wrappers), refused in one line where they cannot be; netlens' own
datasets given the model's preprocessing and class order; the ``fractions`` option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import netlens
from netlens.analyzers.evaluate import mask_at_input
from netlens.analyzers.inputs import resolve_data
from netlens.analyzers.options import OptionError
from netlens.data import ArrayDataset, as_dataset
from netlens.data.shapes import CLASSES, generate, write_folder
from netlens.errors import DataError, NetlensWarning
from netlens.preprocess import Preprocess

SIZE = 32


class Net(nn.Module):
    def __init__(self, k: int = len(CLASSES)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def known_lens(classes=CLASSES, **kw) -> netlens.Lens:
    """A lens whose preprocessing is known (not netlens' guess): a centre crop of half."""
    kw = {"input_size": SIZE, "mean": (0.4,) * 3, "std": (0.2,) * 3, "crop_pct": 0.5} | kw
    return netlens.load(Net(), classes=list(classes), **kw)


def shapes(n: int = 4) -> ArrayDataset:
    images, labels, masks, classes = generate(n, size=SIZE, seed=0)
    return ArrayDataset(images, labels, classes, masks=masks)


def test_a_mask_at_the_input_size_is_cropped_as_its_image() -> None:
    lens = known_lens()
    band = np.zeros((SIZE, SIZE), bool)
    band[SIZE // 4 : SIZE // 2] = True  # zoomed 2x and centre-cropped: the input's top half
    ds = ArrayDataset(
        np.zeros((1, SIZE, SIZE, 3), np.uint8), [0], CLASSES, lens.transform, band[None]
    )
    twice = ArrayDataset(
        ds.images, [0], CLASSES, lens.transform, band.repeat(2, 0).repeat(2, 1)[None]
    )
    at_input = mask_at_input(ds, 0, lens)
    assert at_input.mean() == 0.5 and at_input[: SIZE // 2].all()
    assert np.array_equal(at_input, mask_at_input(twice, 0, lens))


def test_the_named_shapes_masks_follow_the_crop() -> None:
    lens = known_lens()
    ds = lens.dataset(shapes())  # as lens.evaluate("shapes") gets it: the model's preprocessing
    crop = slice(SIZE // 4, 3 * SIZE // 4)
    for i in range(len(ds)):
        want = ds.mask(i)[crop, crop].repeat(2, 0).repeat(2, 1)  # the centre half, zoomed 2x
        assert np.array_equal(mask_at_input(ds, i, lens), want)


def test_masks_of_preprocessed_images_must_be_at_the_input_size() -> None:
    lens = known_lens()
    x, y = torch.zeros(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[:, :4] = True
    assert np.array_equal(mask_at_input(lens.dataset((x, y, masks)), 1, lens), masks[1])
    with pytest.raises(DataError, match=r"mask 0 is 64×64, but the images come preprocessed"):
        lens.evaluate((x, y, masks.repeat(2, 1).repeat(2, 2)), metrics="pointing")


def squash_to_24(image: Image.Image) -> torch.Tensor:
    """A user's preprocessing function: 24×24, [0, 1]."""
    return torch.from_numpy(np.array(image.resize((24, 24)))).permute(2, 0, 1).float() / 255


def test_a_function_preprocess_takes_masks_at_the_input_size_only(tmp_path) -> None:
    lens = netlens.load(Net(), classes=list(CLASSES), preprocess=squash_to_24)
    root, _ = write_folder(tmp_path / "val", n=3, size=SIZE, seed=0)  # masks 32×32
    with pytest.raises(DataError, match="the preprocessing is a function.*24×24"):
        lens.evaluate(root, metrics="pointing,energy")
    assert lens.evaluate(root, metrics="deletion", steps=2).table[0]["n"] == 3  # no masks needed
    small, _ = write_folder(tmp_path / "small", n=3, size=24, seed=0)  # masks at input size
    result = lens.evaluate(small, metrics="energy")
    assert result.table[0]["n"] == 3


class Pairs(Dataset):
    """A user's Dataset of preprocessed tensors with masks at the input size."""

    def __init__(self, lens: netlens.Lens) -> None:
        data = shapes(3)
        self.x = torch.stack([lens.preprocess(data.images[i])[0] for i in range(3)])
        self.masks = np.zeros((3, SIZE, SIZE), bool)
        self.masks[:, 4:20, 8:24] = True

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        return self.x[i], i

    def mask(self, i: int) -> np.ndarray:
        return self.masks[i]


class Dicts(Pairs):
    def __getitem__(self, i: int):
        return {"image": self.x[i], "label": i}


class NamedPairs(Pairs):
    classes = list(CLASSES)


class Photos(Dataset):
    """A user's Dataset of uint8 photos (twice the input size) with masks at photo size."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return np.full((2 * SIZE, 2 * SIZE, 3), 100 + i, np.uint8), i

    def mask(self, i: int) -> np.ndarray:
        m = np.zeros((2 * SIZE, 2 * SIZE), bool)
        m[: SIZE // 2, : SIZE // 2] = True  # a corner square: outside the centre crop
        m[SIZE // 2 : SIZE, SIZE // 2 : SIZE] = True  # its neighbour: inside it
        return m


def test_a_users_dataset_keeps_its_masks_through_the_wrappers() -> None:
    lens = known_lens()
    result = lens.evaluate(Dicts(lens), metrics="pointing", steps=2)
    assert result.table[0]["n"] == 3
    ds = lens.dataset(Photos())  # resized to 64, centre-cropped to 32 as the photos are
    want = np.zeros((SIZE, SIZE), bool)
    want[: SIZE // 2, : SIZE // 2] = True
    assert np.array_equal(mask_at_input(ds, 0, lens), want)
    named = lens.dataset(NamedPairs(lens))  # relabelled by name: still its masks
    assert mask_at_input(named, 2, lens).sum() == 16 * 16


def test_an_array_dataset_gets_the_models_preprocessing() -> None:
    lens, ds = known_lens(), shapes()
    given = lens.dataset(ds)
    assert torch.equal(given[1][0], lens.preprocess(ds.images[1])[0])
    assert resolve_data(lens, ds, what="stats").dataset.preprocess == lens.transform  # and top,
    # ablate, evaluate: every analyzer that takes data reads it through resolve_data
    own = ArrayDataset(ds.images, ds.labels, ds.classes, Preprocess(size=(SIZE, SIZE)))
    assert lens.dataset(own).preprocess == own.preprocess  # given explicitly: kept
    with pytest.warns(NetlensWarning, match="guesses"):
        guessed = netlens.load(Net(), classes=list(CLASSES), input_size=SIZE)
    assert guessed.dataset(ds) is ds  # the model's preprocessing is a guess: the dataset's own


def test_an_array_dataset_is_matched_to_the_model_classes_by_name() -> None:
    order = list(reversed(CLASSES))
    lens, ds = known_lens(order), shapes()
    given = lens.dataset(ds)
    assert [order[y] for y in given.labels] == [CLASSES[y] for y in ds.labels]
    assert given.label_source == "dataset class names matched to model classes"
    result = lens.evaluate(ds, methods="gradcam", metrics="deletion", steps=2)
    assert result.meta["label_source"] == given.label_source
    with pytest.raises(DataError, match="class names the model does not have"):
        known_lens(["a", "b", "c", "d", "e"]).dataset(ds)


def test_a_folder_read_without_the_model_is_matched_to_it(tmp_path) -> None:
    root, _ = write_folder(tmp_path / "val", n=5, size=SIZE, seed=0)
    order = list(reversed(CLASSES))
    lens = known_lens(order)
    plain = as_dataset(root)  # no model: sorted folder names, netlens' default preprocessing
    assert plain.label_source == "sorted folder names"
    ds = lens.dataset(plain)
    assert ds.classes == order and ds.preprocess == lens.transform
    assert [(p.name, y) for p, y in ds.items] == [(p.name, y) for p, y in lens.dataset(root).items]


def test_a_loader_over_an_array_dataset_is_read_as_the_dataset_is() -> None:
    """Its images preprocessed as the model's (centre-cropped), its masks cropped with them."""
    lens, ds = known_lens(), shapes()
    result = lens.evaluate(DataLoader(ds, batch_size=2), metrics="energy", steps=2)
    crop = slice(SIZE // 4, 3 * SIZE // 4)
    share = [m[crop, crop].mean() for m in ds.masks]  # the centre half the images show
    assert np.allclose(result.arrays["gradcam/energy/baseline"], share)
    direct = lens.evaluate(ds, metrics="energy", steps=2)
    assert np.allclose(result.arrays["gradcam/energy/score"], direct.arrays["gradcam/energy/score"])


def test_a_loader_over_an_array_dataset_gets_the_models_preprocessing_and_class_numbers() -> None:
    order = list(reversed(CLASSES))
    lens, ds = known_lens(order), shapes(6)
    for analysis in ("stats", "ablate"):
        kw = {"layers": "features.0", "mode": "zero"} if analysis == "ablate" else {}
        direct = lens.run(analysis, ds, **kw)
        loader = lens.run(analysis, DataLoader(ds, batch_size=4), **kw)
        if analysis == "stats":
            for a, b in zip(direct.table, loader.table, strict=True):  # the same images,
                # preprocessed as the model's
                floats = [k for k, v in a.items() if isinstance(v, float)]
                assert [a[k] for k in floats] == pytest.approx([b[k] for k in floats], rel=1e-6)
        else:
            assert [r["value"] for r in direct.rows] == [r["value"] for r in loader.rows]
            assert direct.baseline["value"] == loader.baseline["value"]  # labels renumbered
    data = resolve_data(lens, DataLoader(ds, batch_size=4), what="top")
    labels = torch.cat([y for _, y in data.loader(4)])
    assert [order[int(y)] for y in labels] == [CLASSES[y] for y in ds.labels]


@pytest.mark.parametrize("bad", [(), (1.5,), (-0.2, 0.5), (0.5, float("nan")), "0.2,x", "", 0.5j])
def test_fractions_are_checked(bad) -> None:
    x, y = torch.zeros(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    with pytest.raises(OptionError, match="fractions"):
        known_lens().evaluate((x, y), metrics="road-morf", fractions=bad)


def test_fractions_as_text_are_sorted_once_each() -> None:
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    result = known_lens().evaluate(
        (x, y), metrics="road-morf", fractions="0.5, 0.2,0.5", random_baseline=False
    )
    assert result.arrays["gradcam/road-morf/curve_x"].tolist() == [0.2, 0.5]


def test_the_blur_is_described_as_the_one_computed() -> None:
    import torchvision.transforms.functional as TF

    from netlens.metrics import deletion

    assert "RISE's Gaussian" not in deletion.__doc__
    assert "torchvision's ``gaussian_blur``" in deletion.__doc__
    x = torch.rand(1, 3, 20, 24)
    assert torch.allclose(deletion.blurred(x), TF.gaussian_blur(x, [11, 11], [5.0, 5.0]))


def test_a_csv_list_dataset_made_without_the_model_is_matched_to_it(tmp_path) -> None:
    """``CsvListDataset("l.csv")`` numbered its labels by sorted name (apple 0, mango 1, zebra
    2) and kept its own default preprocessing, in every analyzer it was handed to."""
    import cv2
    import torchvision

    from netlens.data.csvlist import CsvListDataset

    rows = ["path,label"]
    for i, c in enumerate(["zebra", "apple", "zebra", "mango"]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((50, 70, 3), 40 * i, np.uint8))
        rows.append(f"{i}.png,{c}")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    ds = CsvListDataset(tmp_path / "l.csv")
    model = torchvision.models.resnet18(num_classes=3).eval()
    lens = netlens.load(model, classes=["zebra", "apple", "mango"], size=32)
    got = lens.dataset(ds)
    assert [int(got[i][1]) for i in range(4)] == [0, 1, 0, 2]
    assert got[0][0].shape == (3, 32, 32)
