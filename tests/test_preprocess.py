"""The model's own preprocessing: timm's and torchvision's transforms, sizes, overrides, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.preprocess import Preprocess, preprocess_for

PHOTOS = {name: getattr(skdata, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
TIMM_MODELS = ("resnet50", "vit_base_patch16_224", "efficientnet_b0", "convnext_tiny")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(scope="module", params=TIMM_MODELS)
def timm_model(request: pytest.FixtureRequest) -> nn.Module:
    import timm

    return timm.create_model(request.param, pretrained=False).eval()


def test_timm_models_get_exactly_timms_transform(timm_model: nn.Module) -> None:
    from timm.data import create_transform, resolve_data_config

    lens = netlens.load(timm_model)
    reference = create_transform(**resolve_data_config({}, model=timm_model))
    for img in PHOTOS.values():
        assert max_diff(lens.preprocess(img)[0], reference(Image.fromarray(img))) <= 1e-5
    info = lens.preprocess_info()
    cfg = timm_model.pretrained_cfg
    assert info["source"].startswith("timm data config of " + cfg["architecture"])
    assert info["crop_pct"] == cfg["crop_pct"] and info["interpolation"] == cfg["interpolation"]
    json.dumps(info)


def test_own_engine_agrees_with_timm_on_the_same_spec(timm_model: nn.Module) -> None:
    """netlens' own resize/crop (PIL, torchvision ops) matches timm's transform independently."""
    from timm.data import create_transform, resolve_data_config

    spec = preprocess_for(timm_model).override(engine="netlens")
    reference = create_transform(**resolve_data_config({}, model=timm_model))
    for img in PHOTOS.values():
        assert max_diff(spec(img), reference(Image.fromarray(img))) <= 1e-5


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
        ("resnet50", "ResNet50_Weights.IMAGENET1K_V2"),  # resize 232, crop 224
        ("efficientnet_b3", "EfficientNet_B3_Weights.IMAGENET1K_V1"),  # bicubic 320 → 300
        ("inception_v3", "Inception_V3_Weights.IMAGENET1K_V1"),  # 342 → 299
    ],
)
def test_torchvision_archs_get_their_weights_transforms(name: str, weights: str) -> None:
    import torchvision

    spec = preprocess_for(nn.Conv2d(3, 4, 3), f"tv:{name}")
    reference = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    for img in PHOTOS.values():
        assert max_diff(spec(img), reference(Image.fromarray(img))) <= 1e-5
    assert spec.source.startswith(f"torchvision {weights} transforms")


def test_state_dict_with_tv_arch_uses_the_weights_transform(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    lens = netlens.load(tmp_path / "m.pt", arch="tv:resnet18", device="cpu")
    reference = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    img = PHOTOS["chelsea"]
    assert max_diff(lens.preprocess(img)[0], reference(Image.fromarray(img))) <= 1e-5
    assert "ResNet18_Weights.IMAGENET1K_V1" in lens.preprocess_info()["source"]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("efficientnet_b3", {"num_classes": 3}),  # 300 px, bicubic: a fine-tuned head
        ("inception_v3", {"aux_logits": False, "init_weights": False}),  # 299 px, no aux head
        ("googlenet", {"num_classes": 5, "init_weights": False}),  # aux heads fine-tuned too
        ("resnet50", {}),  # not resnet101, whose layers include all of resnet50's
        ("vit_b_32", {"num_classes": 2}),  # not vit_b_16: other patch and position shapes
    ],
)
def test_a_torchvision_module_is_recognised_by_its_layers(name: str, kwargs: dict) -> None:
    """``Lens(torchvision.models.efficientnet_b3(...))``, no arch named: its own weights'
    transforms, not the 224-px convention."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(name, **kwargs)
    spec = preprocess_for(model)
    reference = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    assert max_diff(spec(PHOTOS["chelsea"]), reference(Image.fromarray(PHOTOS["chelsea"]))) <= 1e-5
    assert spec.source.endswith(f"(recognised as tv:{name} by its layers' shapes)")


def test_a_changed_torchvision_module_keeps_the_convention() -> None:
    """A first layer changed for grayscale input is no torchvision architecture any more."""
    import torchvision

    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    spec = preprocess_for(model)
    assert spec.size == (224, 224) and spec.channels == 1
    assert spec.source.startswith("torchvision ImageNet convention")


def test_resizing_is_antialiased() -> None:
    """A one-pixel checkerboard halved is flat grey, not an aliased pattern."""
    board = (np.indices((448, 448)).sum(0) % 2 * 255).astype(np.uint8)
    img = np.repeat(board[:, :, None], 3, axis=2)
    for interp in ("bilinear", "bicubic"):
        x = Preprocess(size=224, mean=(0, 0, 0), std=(1, 1, 1), interpolation=interp)(img)
        assert float(x.std()) < 0.02 and abs(float(x.mean()) - 0.5) < 0.01


def test_unknown_size_takes_the_first_image_and_says_so() -> None:
    class Bare(nn.Module):  # says nothing about its input
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)))

    lens = netlens.Lens(Bare())
    assert lens.transform.size is None and lens.transform.channels == 1
    with pytest.raises(NetlensError, match="input size of this model is unknown") as err:
        lens.layers()
    assert "\n" not in str(err.value)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    x = lens.preprocess([digit, np.zeros((40, 40), np.uint8)])
    assert tuple(x.shape) == (2, 1, 28, 28)  # the first image sets the size; no resize
    assert torch.allclose(x[0, 0], torch.from_numpy(digit / 255.0 - 0.5).float() / 0.5)
    assert "28×28 from the first image" in lens.preprocess_info()["source"]
    assert len(lens.layers()) == 2  # now known


def test_overrides_and_sources() -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    lens = netlens.load(model, input_size=(160, 128), crop_pct=1.0, interpolation="bilinear")
    info = lens.preprocess_info()
    assert info["size"] == [160, 128] and info["crop_pct"] == 1.0
    assert "user override (size=(160, 128), crop_pct=1.0, interpolation=bilinear)" in info["source"]
    assert lens.preprocess(PHOTOS["coffee"]).shape == (1, 3, 160, 128)
    ex = netlens.load(model, example=torch.zeros(1, 3, 96, 96))
    assert ex.input_size == (3, 96, 96)


def test_a_callable_replaces_the_spec() -> None:
    def mine(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.resize((32, 32)), np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    lens = netlens.load(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), preprocess=mine)
    x = lens.preprocess(PHOTOS["rocket"])
    ref = mine(Image.fromarray(PHOTOS["rocket"]))
    assert torch.equal(x[0], ref)
    assert lens.input_size == (3, 32, 32)
    info = lens.preprocess_info()
    assert info["engine"] == "function" and info["function"].endswith("mine")
    assert lens.transform.denormalize(x[0]).shape == (32, 32, 3)


def test_spec_round_trips_and_checks_fields() -> None:
    spec = Preprocess(size=64, crop_pct=0.9, interpolation="bicubic", source="mine")
    again = Preprocess.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec.override(crop_mode="center", source="mine")
    img = PHOTOS["astronaut"]
    assert torch.equal(again(img), spec(img))
    legacy = {"size": [8, 8], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    assert Preprocess.from_dict(legacy).mode == "squash"  # old checkpoints keep their geometry
    for bad in ({"interpolation": "cubic"}, {"crop_pct": 1.5}, {"channels": 0}, {"std": (0, 1, 1)}):
        with pytest.raises(NetlensError, match="preprocessing"):
            Preprocess(**bad)


def test_denormalize_inverts_the_spec_without_resize() -> None:
    img = PHOTOS["chelsea"][:64, :80]
    spec = Preprocess(size=(64, 80), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    assert np.abs(spec.denormalize(spec(img)).astype(int) - img).max() <= 1


def test_crop_box_matches_the_centre_crop() -> None:
    spec = Preprocess(size=224, crop_pct=0.875, crop_mode="center")
    top, bottom, left, right = spec.crop_box((480, 640))
    # shorter side 480 → 256: the 224×224 crop is 420×420 of the original, centred
    assert (bottom - top, right - left) == (420, 420)
    assert top == 30 and abs(left - 110) <= 1


def test_an_extreme_aspect_ratio_never_builds_a_huge_intermediate() -> None:
    """A 10×100,000 strip at crop_pct 0.875 would be resized to 256×2,560,000 (2.5 GB) before
    the crop; it is cropped in source pixels first, to the same geometry."""
    from netlens.preprocess.engines import box_resize_crop, huge_resize

    spec = Preprocess(size=(224, 224), crop_pct=0.875, mean=(0, 0, 0), std=(1, 1, 1))
    assert huge_resize((100_000, 10), spec) and not huge_resize((480, 640), spec)
    strip = np.zeros((100_000, 10, 3), np.uint8)
    strip[49_998:50_002] = 255  # a white band at the centre: 4 of the ~8.75 rows the crop sees
    x = spec(strip)
    assert x.shape == (3, 224, 224)
    assert x[:, 100:124].mean() > 0.9 and x[:, :40].mean() < 0.05  # the band stays centred
    photo = PHOTOS["chelsea"]
    direct = torch.from_numpy(box_resize_crop(photo, spec).transpose(2, 0, 1).copy()) / 255
    assert (direct - spec(photo)).abs().max() <= 1 / 255 + 1e-6  # same geometry, ±1 grey level


class ImageNormalizer(nn.Module):
    """RobustBench's first layer: the model takes pixels in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@pytest.mark.parametrize("kind", ["torchvision", "robustbench", "timm"])
def test_a_model_that_normalises_its_own_input_is_not_normalised_twice(kind: str) -> None:
    """nn.Sequential(Normalize(mean, std), network) was fed images normalised with ImageNet's
    statistics (guessed), then normalised again by its first layer: other inputs, other logits."""
    import timm
    import torchvision
    from torchvision import transforms as T

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.manual_seed(0)
    if kind == "timm":
        network = timm.create_model("resnet18", num_classes=5).eval()
    else:
        network = torchvision.models.resnet18(num_classes=5).eval()
    first = T.Normalize(mean, std) if kind == "torchvision" else ImageNormalizer(mean, std)
    wrapped = nn.Sequential(first, network).eval()
    plain, lens = netlens.load(network), netlens.load(wrapped)
    assert "first layer (0) normalises them itself" in lens.transform.source
    assert lens.transform.source.startswith(plain.transform.source)
    assert lens.transform.size == plain.transform.size
    photo = skdata.chelsea()
    x = lens.preprocess(photo)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        ref = network(plain.preprocess(photo))
        scale = max(1.0, float(ref.abs().max()))  # float32: relative to the logits' size
        torch.testing.assert_close(wrapped(x), ref, atol=1e-5 * scale, rtol=0)


def test_a_first_layer_normalising_0_255_pixels_gets_0_255_pixels() -> None:
    """mmcv's, Detectron's and Caffe ports' statistics (mean 123.675, std 58.395) are of 0..255
    pixels: the network behind them got [0, 1] pixels, nearly a constant; and the warning
    said netlens guessed ImageNet's mean/std, which it did not use."""
    import warnings

    from torchvision import transforms as T

    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(1))
    wrapped = nn.Sequential(T.Normalize(mean, std), network).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its normalisation is known: nothing is guessed
        lens = netlens.load(wrapped, input_size=32)
    assert "pixels in 0..255" in lens.transform.source
    assert "guessed" not in lens.transform.source
    photo = skdata.chelsea()[:32, :32]
    seen = []
    network.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        wrapped(lens.preprocess(photo))
    pixels = torch.from_numpy(photo).permute(2, 0, 1).float()[None]
    want = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], want, atol=1e-5, rtol=0)


def test_a_head_registered_before_the_convs_and_a_flat_mlp_get_their_channels() -> None:
    """A 1-channel CNN whose classifier is registered before its convs was taken for a
    3-channel model (every command failed in the dry forward); an MLP over a flattened 28×28
    image was fed 3×H×W photos ("mat1 and mat2 shapes cannot be multiplied (1x2352 and
    784x64)")."""
    import warnings

    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(8 * 7 * 7, 10)
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).flatten(1))

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    rgb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    patches = nn.Sequential(nn.Linear(3 * 16 * 16, 10))  # a Linear over patches: no image size
    photo = skdata.chelsea()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head_first = netlens.load(HeadFirst(), input_size=28)
        assert head_first.transform.channels == 1
        assert head_first.predict(photo).shape == (1, 10)
        lens = netlens.load(mlp)
        assert (lens.transform.channels, lens.transform.size) == (1, (28, 28))
        assert "from the image its first Linear flattens" in lens.transform.source
        x = lens.preprocess(photo)
        assert x.shape == (1, 1, 28, 28) and lens.predict(photo).shape == (1, 10)
        lens = netlens.load(rgb)
        assert (lens.transform.channels, lens.transform.size) == (3, (32, 32))
        lens = netlens.load(patches)
        assert lens.transform.size is None


def test_a_wrapper_around_a_timm_backbone_gets_the_backbones_preprocessing() -> None:
    """``class Net(nn.Module): self.model = timm.create_model(...)`` (Kaggle's way, the head
    replaced): it "recorded no preprocessing", got ImageNet's guess and no resize, so a 400×512
    photo went in at full size; timm's data config is the backbone's."""
    import warnings

    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = timm.create_model("resnet18", num_classes=0)
            self.head = nn.Linear(512, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.model(x))

    torch.manual_seed(0)
    net = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing guessed
        lens = netlens.load(net)
    assert "of its timm backbone 'model'" in lens.transform.source
    photo = skdata.astronaut()[:400]
    want = create_transform(**resolve_data_config({}, model=net.model))(Image.fromarray(photo))
    got = lens.preprocess(photo)
    assert got.shape == (1, *want.shape) and (got[0] - want).abs().max() < 0.02

    class Small(nn.Module):  # a timm part holding few of the weights: not the model's input
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.part = timm.create_model("resnet10t", num_classes=0, in_chans=8)
            self.head = nn.Linear(512, 100_000)

    with pytest.warns(Warning, match="guesses"):
        assert "timm" not in netlens.load(Small()).transform.source


def test_a_guessed_normalisation_is_said_once_at_load():
    """A model that records no preprocessing is fed with ImageNet's mean/std, a guess: a model
    trained on [0, 1] pixels (or 0.5/0.5) would be explained on inputs it never saw, without
    a word. One warning says so, unless the user set the normalisation or a function."""
    import warnings

    import timm

    from netlens.errors import NetlensWarning

    def net(channels=3):
        return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.Flatten(), nn.LazyLinear(2))

    with pytest.warns(NetlensWarning, match=r"records no preprocessing: netlens guesses ImageNet"):
        netlens.load(net())
    with pytest.warns(NetlensWarning, match=r"guesses mean 0.5, std 0.5 \(28×28\)"):
        netlens.load(net(1), input_size=28)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        netlens.load(net(), mean=(0.5,) * 3, std=(0.5,) * 3)
        netlens.load(net(), preprocess=lambda image: torch.zeros(3, 8, 8))
        netlens.load(timm.create_model("resnet18", num_classes=2))
        netlens.load("zoo:shapes-allconv")


@pytest.mark.parametrize("hw", [(1, 60), (60, 1), (1, 1), (2, 333)])
def test_a_one_pixel_thin_image_has_a_crop_box_and_an_overlay(hw) -> None:
    """A 1×60 image's centre crop rounded to a 0-pixel-wide box, and drawing its map crashed
    in OpenCV (``inv_scale_x > 0``), killing the whole folder's run."""
    import netlens

    spec = Preprocess(size=(32, 32), crop_pct=0.875, crop_mode="center")
    top, bottom, left, right = spec.crop_box(hw)
    assert 0 <= top < bottom <= hw[0] and 0 <= left < right <= hw[1]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    img = np.full((*hw, 3), 200, np.uint8)
    res = netlens.Lens(torch.nn.Sequential(model, torch.nn.Flatten()).eval(), spec).cam(img)
    assert res.overlay(0).shape[:2] >= (1, 1)


def _shown_error(img: np.ndarray, box: tuple[int, ...], seen: np.ndarray) -> float:
    t, b, left, r = box
    crop = Image.fromarray(img[t:b, left:r]).resize(seen.shape[1::-1], Image.BICUBIC)
    return float(np.abs(np.asarray(crop, np.float32) - seen).mean())


def test_timm_non_square_and_border_inputs_are_located_where_timm_put_them() -> None:
    """timm keeps the aspect ratio for a non-square input size (``ResizeKeepRatio``) and fits
    then pads in ``border`` mode, but overlays assumed a squash: on a 300×451 photo at 128×160
    they covered columns 11–440 where the model saw 45–403 (23 grey levels off)."""
    import timm

    img = skdata.chelsea()
    model = timm.create_model("resnet18", num_classes=3).eval()
    lens = netlens.load(model, input_size=(128, 160))
    seen = lens.transform.denormalize(lens.preprocess(img)[0]).astype(np.float32)
    box = lens.transform.crop_box(img.shape[:2])
    assert _shown_error(img, box, seen) < 3.0 and abs(box[2] - 45) <= 1
    assert "ResizeKeepRatio" in lens.preprocess_info()["resize_rule"]  # the header says it
    lens = netlens.load(model, input_size=96, crop_mode="border")
    seen = lens.transform.denormalize(lens.preprocess(img)[0]).astype(np.float32)
    top, bottom, left, right = lens.transform.input_box(img.shape[:2])
    rows = np.nonzero(seen.std(axis=1).max(axis=1) > 0)[0]  # the image's rows; the pad is flat
    assert (top, bottom - 1) == (rows.min(), rows.max()) and (left, right) == (0, 96)
    inner = seen[top:bottom]
    assert _shown_error(img, lens.transform.crop_box(img.shape[:2]), inner) < 3.0


@pytest.mark.parametrize(
    ("option", "said"),
    [("1e300", "within ±10000"), ("1e-300,1,1", "at least 1e-6"), ("2e4", "within ±10000")],
)
def test_a_std_float32_cannot_hold_is_refused(option: str, said: str, tmp_path) -> None:
    """``--std 1e300`` overflows to inf in float32: every input all zeros, two images given the
    same answer with status 0; ``1e-300`` divides by zero."""
    from hostile_inputs import assert_one_clean_line
    from typer.testing import CliRunner

    from netlens.cli.app import app

    res = CliRunner().invoke(app, ["cam", "--std", option, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert said in assert_one_clean_line(res.output)
    assert not (tmp_path / "o").exists()
