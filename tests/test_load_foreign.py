"""Weights as other tools save them: training-framework checkpoints (PyTorch Lightning's
``model.`` prefix, EMA copies), TorchScript and ``torch.export`` files."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from conftest import randomize_bn
from hostile_inputs import assert_one_clean_line
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensWarning, UnsafeModelError

runner = CliRunner()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """torchvision resnet18 with 4 classes, random BatchNorm statistics."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def lightning(state: dict, *prefixes: str, extra: bool = True) -> dict:
    """A Lightning-style checkpoint: the network under ``prefixes``, a loss weight, a metric."""
    weights: dict[str, torch.Tensor] = OrderedDict()
    for p in prefixes:
        weights.update((p + k, v) for k, v in state.items())
    if extra:
        weights["criterion.weight"] = torch.ones(4)
        weights["train_acc.correct"] = torch.tensor(17)
    return {"state_dict": weights, "epoch": 3, "global_step": 120}


def test_lightning_checkpoint_loads_the_network_under_its_prefix(net, tmp_path):
    path = tmp_path / "epoch=3.ckpt"
    torch.save(lightning(net.state_dict(), "model."), path)
    lens = netlens.load(path, arch="tv:resnet18")  # class count read off the prefixed head
    assert lens.model.fc.out_features == 4
    assert outputs_equal(lens.model, net)
    assert lens.card["state_dict_prefix"] == "model."
    given = netlens.load(path, arch="tv:resnet18", num_classes=4)
    assert outputs_equal(given.model, net)


def test_nested_prefix_and_module_versions_survive(tmp_path):
    """``net.backbone.`` two levels deep; MNASNet refuses weights without its module version,
    so the versions must follow the stripped names."""
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=3).eval()
    wrapper = nn.Module()
    wrapper.net = nn.Module()
    wrapper.net.backbone = model
    wrapper.head_loss = nn.CrossEntropyLoss()
    torch.save(wrapper.state_dict(), tmp_path / "w.pt")
    lens = netlens.load(tmp_path / "w.pt", arch="tv:mnasnet0_5")
    assert lens.card["state_dict_prefix"] == "net.backbone."
    assert outputs_equal(lens.model, model)


def test_two_copies_of_the_weights_are_refused_not_guessed(net, tmp_path):
    path = tmp_path / "ema.ckpt"
    torch.save(lightning(net.state_dict(), "model.", "model_ema.module."), path)
    with pytest.raises(ModelLoadError) as err:
        netlens.load(path, arch="tv:resnet18")
    line = assert_one_clean_line(str(err.value))
    assert "'model.'" in line and "'model_ema.module.'" in line and "conv1.weight" in line


def test_weights_named_otherwise_say_how_each_side_names_them(net, tmp_path):
    renamed = {"backbone." + k: v for k, v in net.state_dict().items() if not k.startswith("fc")}
    renamed |= {"head.fc.weight": net.fc.weight, "head.fc.bias": net.fc.bias}
    torch.save(renamed, tmp_path / "mm.pt")
    with pytest.raises(ModelLoadError) as err:
        netlens.load(tmp_path / "mm.pt", arch="tv:resnet18", num_classes=4)
    line = assert_one_clean_line(str(err.value))
    assert "'backbone.conv1.weight'" in line and "like 'conv1.weight'" in line


def save_compiled(model: nn.Module, how: str, path) -> None:  # noqa: ANN001
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if how == "script":
            torch.jit.save(torch.jit.script(model), str(path))
        elif how == "trace":
            torch.jit.save(torch.jit.trace(model, x), str(path))
        else:
            torch.export.save(torch.export.export(model, (x,)), str(path))


@pytest.mark.parametrize("how", ["script", "trace", "export"])
def test_compiled_files_give_their_weights_to_the_architecture(net, how, tmp_path):
    path = tmp_path / ("m.pt2" if how == "export" else "m.pt")
    save_compiled(net, how, path)
    kind = "torch.export" if how == "export" else "TorchScript"
    with pytest.raises(ModelLoadError, match=f"{kind} file.*--arch") as err:
        netlens.load(path)
    assert_one_clean_line(str(err.value))
    with pytest.raises(UnsafeModelError, match="--trust"):
        netlens.load(path, arch="tv:resnet18")
    lens = netlens.load(path, arch="tv:resnet18", trust=True)
    assert lens.card["weights_from"] == kind
    assert lens.model.fc.out_features == 4
    assert outputs_equal(lens.model, net)


def test_cli_on_a_torchscript_file(net, tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "scripted.pt"
    save_compiled(net, "trace", path)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    out = tmp_path / "out"
    res = runner.invoke(app, ["cam", str(path), str(img), "--out", str(out), "-q"])
    assert res.exit_code == 1
    assert "TorchScript" in assert_one_clean_line(res.stderr)
    assert not out.exists()
    args = ["cam", str(path), str(img), "--arch", "tv:resnet18", "--trust", "-q", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "cam.json").exists()


def test_trusted_checkpoint_dict_holding_the_model(net, tmp_path):
    """``torch.save({"model": model, "epoch": 3})``: the model inside, only with trust."""
    path = tmp_path / "ck.pt"
    torch.save({"model": net, "optimizer": {"lr": 0.1}, "epoch": 3}, path)
    with pytest.raises(UnsafeModelError):
        netlens.load(path)
    lens = netlens.load(path, trust=True)
    assert lens.card["checkpoint_key"] == "model"
    assert outputs_equal(lens.model, net)
    torch.save({"net": net, "ema": net, "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match="several models.*'net', 'ema'"):
        netlens.load(path, trust=True)
    torch.save({"net": net, "epoch": 3}, path)
    assert netlens.load(path, trust=True).card["checkpoint_key"] == "net"


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("model.onnx", b"\x08\x07\x12\x07pytorch\x1a\x032.1", "an ONNX model"),
        ("weights.bin", b"\x89HDF\r\n\x1a\n" + bytes(64), "a Keras (HDF5) model"),
        ("model.tflite", b"\x1c\x00\x00\x00TFL3" + bytes(32), "a TensorFlow Lite model"),
    ],
)
def test_models_of_other_frameworks_are_named_as_such(tmp_path, name, data, what):
    """They were "not a PyTorch file or corrupt", which sends the user looking for damage."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ModelLoadError) as err:
        netlens.load(tmp_path / name)
    line = assert_one_clean_line(str(err.value))
    assert f"is {what}; netlens explains PyTorch models" in line
    real = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    torch.save(real, tmp_path / "real.onnx")  # a torch file under such a name still loads
    assert isinstance(netlens.load(tmp_path / "real.onnx", trust=True).model, nn.Sequential)


def test_a_timm_training_checkpoint_loads_as_the_architecture_it_names(tmp_path):
    """timm's train.py saves ``{"arch", "state_dict", "args": argparse.Namespace, ...}``: the
    Namespace made it a pickle refused without --trust, and --arch was asked for although the
    file names it."""
    import argparse

    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    ckpt = {
        "epoch": 10,
        "arch": "resnet18",
        "state_dict": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "version": 2,
        "args": argparse.Namespace(model="resnet18", lr=0.1, num_classes=3),
        "metric": 71.2,
    }
    torch.save(ckpt, tmp_path / "model_best.pth.tar")
    lens = netlens.load(tmp_path / "model_best.pth.tar")
    assert type(lens.model).__name__ == "ResNet" and lens.transform.source.startswith("timm")
    assert outputs_equal(lens.model, model)
    ckpt["arch"] = "my_own_net"  # not timm's nor torchvision's: the user names it
    torch.save(ckpt, tmp_path / "mine.pth.tar")
    with pytest.raises(ModelLoadError, match="--arch"):
        netlens.load(tmp_path / "mine.pth.tar")
    ckpt["arch"] = "hf-hub:someone/weights"  # never a name to fetch
    torch.save(ckpt, tmp_path / "hub.pth.tar")
    with pytest.raises(ModelLoadError, match="not an architecture name"):
        netlens.load(tmp_path / "hub.pth.tar")
    ckpt["arch"] = "vit_large_patch16_224"  # far more than the file's weights: not built
    torch.save(ckpt, tmp_path / "big.pth.tar")
    with pytest.raises(ModelLoadError, match="--arch"):
        netlens.load(tmp_path / "big.pth.tar")


def test_torchvisions_reference_script_checkpoint_loads(tmp_path):
    """torchvision's references/classification/train.py saves its options as a Namespace."""
    import argparse

    model = torchvision.models.resnet18(num_classes=4).eval()
    ckpt = {"model": model.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=0.1)}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    assert outputs_equal(netlens.load(tmp_path / "checkpoint.pth", arch="tv:resnet18").model, model)


def test_the_data_options_a_training_script_recorded_are_the_preprocessing(tmp_path):
    """timm's train.py with ``--img-size 160 --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5`` feeds the
    model as timm's own scripts resolve those options (not the architecture's 224², ImageNet
    statistics); torchvision's reference train.py (``{"model", "args"}``, no 'arch') names its
    model in ``args.model`` and its evaluation resize and crop in ``--val-*-size``."""
    import argparse

    import numpy as np
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("resnet18", num_classes=3).eval()
    opts = argparse.Namespace(
        model="resnet18", img_size=160, input_size=None, mean=[0.5] * 3, std=[0.5] * 3,
        crop_pct=None, interpolation="", lr=0.1,
    )  # fmt: skip
    torch.save(
        {"arch": "resnet18", "state_dict": model.state_dict(), "args": opts}, tmp_path / "t.pth"
    )
    lens = netlens.load(tmp_path / "t.pth")
    expected = resolve_data_config(vars(opts), model=model)
    assert lens.transform.size == expected["input_size"][1:] == (160, 160)
    assert lens.transform.mean == lens.transform.std == (0.5, 0.5, 0.5)
    assert "--img-size 160" in lens.transform.source
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (200, 260, 3), dtype=np.uint8))
    torch.testing.assert_close(lens.transform(photo), create_transform(**expected)(photo))

    tv = torchvision.models.resnet50(num_classes=4).eval()
    ref = argparse.Namespace(
        model="resnet50", val_resize_size=232, val_crop_size=224, interpolation="bilinear"
    )
    torch.save({"model": tv.state_dict(), "epoch": 3, "args": ref}, tmp_path / "checkpoint.pth")
    lens = netlens.load(tmp_path / "checkpoint.pth")
    assert lens.card["arch"] == "tv:resnet50" and outputs_equal(lens.model, tv)
    assert lens.card["arch_source"] == "the checkpoint's 'args.model'"
    v2 = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()  # resize 232, crop 224
    torch.testing.assert_close(lens.transform(photo), v2(photo), atol=2 / 255, rtol=0)
    assert "--val-resize-size 232" in lens.transform.source


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("vit_tiny_patch16_224", 64),
        ("deit_tiny_distilled_patch16_224", 96),  # 1 and 2 tokens
        ("tv:vit_b_32", 96),
    ],
)
def test_a_vit_trained_at_another_size_loads_at_that_size(tmp_path, arch, size):
    """``timm.create_model(arch, img_size=S)``: its position embedding holds (S/16)² positions
    (plus its class and distillation tokens); built at the name's 224² it did not load."""
    import timm

    torch.manual_seed(0)
    if arch.startswith("tv:"):  # torchvision's vit_b_32(image_size=96)
        model = torchvision.models.get_model(arch[3:], image_size=size, num_classes=3).eval()
    else:
        model = timm.create_model(arch, img_size=size, num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    lens = netlens.load(tmp_path / "vit.pth", arch=arch)
    option = "image_size" if arch.startswith("tv:") else "img_size"
    assert lens.card["arch_kwargs"][option] == size
    assert lens.transform.size == (size, size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), model(x))
    if arch.startswith("tv:"):
        return
    told = netlens.load(tmp_path / "vit.pth", arch=arch, arch_kwargs={"num_classes": 3})
    assert told.transform.size == (size, size)
    with pytest.raises(ModelLoadError, match="pos_embed"):  # told otherwise: as told
        netlens.load(tmp_path / "vit.pth", arch=arch, arch_kwargs={"img_size": 224})


def _as_facebook_names(state: dict) -> dict:
    """A timm ConvNeXt state_dict named as facebookresearch/ConvNeXt saves it."""
    import re

    out = {}
    for k, v in state.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        out[k.replace("head.norm", "norm").replace("head.fc.", "head.")] = v.clone()
    return out


def test_weights_saved_by_the_original_repository_are_renamed_by_timms_filter(
    tmp_path, monkeypatch
):
    """A ConvNeXt fine-tuned with facebookresearch/ConvNeXt's code (``{"model": ...}``,
    ``downsample_layers.0.0.weight``) did not load with --arch convnext_atto ("its names look
    like ..."). timm's own checkpoint_filter_fn renames it; a filter that would change a
    weight (resample, fill) is not used."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=7).eval()
    torch.save({"model": _as_facebook_names(model.state_dict())}, tmp_path / "fb.pth")
    lens = netlens.load(tmp_path / "fb.pth", arch="convnext_atto")
    assert lens.card["state_dict_renamed_by"] == "timm.models.convnext.checkpoint_filter_fn"
    result = lens.cam(torch.rand(1, 3, 64, 64))
    assert result.meta["run"]["model"]["renamed_by"] == lens.card["state_dict_renamed_by"]
    assert lens.card["arch_kwargs"]["num_classes"] == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), model(x))
    original = timm.models.convnext.checkpoint_filter_fn
    monkeypatch.setattr(  # the same renaming, but fresh tensors: not the file's weights
        timm.models.convnext,
        "checkpoint_filter_fn",
        lambda sd, m: {k: v.clone() for k, v in original(sd, m).items()},
    )
    with pytest.raises(ModelLoadError, match="names look like 'downsample_layers"):
        netlens.load(tmp_path / "fb.pth", arch="convnext_atto")


def test_weights_under_the_names_training_scripts_give_them(tmp_path):
    """kuangliu/pytorch-cifar saves ``{"net": DataParallel's state_dict, "acc", "epoch"}``,
    others ``{"model_state": ..., "optimizer_state": ...}`` or a name of their own: each was
    "neither a netlens checkpoint, a state_dict nor a module". Two unnamed sets of weights are
    still not a guess netlens makes."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    state = model.state_dict()
    saved = {
        "cifar.pth": {"net": {f"module.{k}": v for k, v in state.items()}, "acc": 93.1},
        "ms.pth": {"model_state": state, "optimizer_state": {"state": {}, "param_groups": []}},
        "own.pth": {"resnet_weights": state, "epoch": 3},
    }
    for name, ckpt in saved.items():
        torch.save(ckpt, tmp_path / name)
        assert outputs_equal(netlens.load(tmp_path / name, arch="tv:resnet18").model, model)
    torch.save({"a": state, "b": state}, tmp_path / "two.pth")
    with pytest.raises(ModelLoadError, match=r"several sets of weights \(under 'a', 'b'\)"):
        netlens.load(tmp_path / "two.pth", arch="tv:resnet18")


def test_a_replaced_classifier_is_named_with_what_to_do(tmp_path):
    """``model.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Dropout(), nn.Linear(256,
    10))``, as fine-tuning tutorials write it: the weights fit but for the head, which no
    architecture name can rebuild (its activations are not in the file). The line says so and
    how to build it; a difference inside the network keeps the plain message."""
    model = torchvision.models.resnet18()
    model.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.4), nn.Linear(256, 10))
    torch.save(model.state_dict(), tmp_path / "head.pth")
    said = r"fit ResNet but for its head 'fc': the file has fc\.0\.weight, fc\.3\.weight "
    with pytest.raises(ModelLoadError, match=said + r".*--arch yourfile\.py:build_model"):
        netlens.load(tmp_path / "head.pth", arch="tv:resnet18")
    state = torchvision.models.resnet18().state_dict()
    state["layer4.1.conv2.renamed"] = state.pop("layer4.1.conv2.weight")
    torch.save(state, tmp_path / "inside.pth")
    with pytest.raises(ModelLoadError, match="do not fit ResNet: Missing key"):
        netlens.load(tmp_path / "inside.pth", arch="tv:resnet18")
    state = model.state_dict()  # the head replaced and the body changed (a narrower block)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:32].clone()
    torch.save(state, tmp_path / "both.pth")
    with pytest.raises(ModelLoadError, match="do not fit ResNet: Missing key"):
        netlens.load(tmp_path / "both.pth", arch="tv:resnet18")


def test_a_checkpoint_with_an_ema_copy_says_which_weights_it_explains(tmp_path):
    from netlens.errors import NetlensWarning

    model = torchvision.models.resnet18(num_classes=4).eval()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema}, tmp_path / "best.pth")
    with pytest.warns(NetlensWarning, match="'state_dict' and its EMA copy 'state_dict_ema'"):
        lens = netlens.load(tmp_path / "best.pth", arch="tv:resnet18")
    assert outputs_equal(lens.model, model)


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
@pytest.mark.parametrize("aux_replaced", [False, True])
def test_inception_fine_tunes_rescale_their_input_as_torchvision_built_them(
    name, aux_replaced, tmp_path
):
    """torchvision builds Inception v3 and GoogLeNet for their ImageNet weights with
    ``transform_input=True`` (the model turns ImageNet-normalised pixels into the [-1, 1] its
    weights were trained on); a state_dict does not record it. Built without it, a fine-tune
    of those weights ran on other inputs than it was trained on, without a word. A fine-tune
    that replaced ``model.fc`` only keeps ImageNet's 1000-class auxiliary heads, which failed
    to load; they serve training only and are left out, saying so."""
    torch.manual_seed(0)
    builder = getattr(torchvision.models, name)
    model = randomize_bn(builder(weights=None, aux_logits=True, transform_input=True)).eval()
    model.fc = nn.Linear(model.fc.in_features, 5)  # the fine-tune's new head
    if aux_replaced:  # as PyTorch's fine-tuning tutorial does
        for aux in ("AuxLogits.fc", "aux1.fc2", "aux2.fc2"):
            parent, _, leaf = aux.rpartition(".")
            if hasattr(model, parent.split(".")[0]):
                old = model.get_submodule(aux)
                setattr(model.get_submodule(parent), leaf, nn.Linear(old.in_features, 5))
    model.eval()
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    with pytest.warns(NetlensWarning, match="transform_input=True"):
        lens = netlens.load(tmp_path / "ft.pth", arch=f"tv:{name}")
    assert lens.model.transform_input is True
    assert lens.model.aux_logits is aux_replaced
    assert ("not_loaded" in lens.card) is not aux_replaced
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(lens.output(x), model(x), rtol=1e-5, atol=1e-6)
    if not aux_replaced:
        run = lens.cam(x[:1]).meta["run"]["model"]
        assert "auxiliary heads" in run["not_loaded"]
    # trained from scratch (weights=None): the user says so, and is believed
    scratch = netlens.load(
        tmp_path / "ft.pth", arch=f"tv:{name}", arch_kwargs={"transform_input": False}
    )
    assert scratch.model.transform_input is False


def _gray_models() -> dict[str, tuple[str, nn.Module, int]]:
    """Models of 3-channel designs trained on other images: timm's ``in_chans``, torchvision's
    replaced ``conv1`` (how fine-tuning tutorials adapt it to X-rays)."""
    import timm

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=3)
    tv.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return {
        "timm-resnet": ("resnet18", timm.create_model("resnet18", in_chans=1, num_classes=4), 1),
        "timm-vit": (
            "vit_tiny_patch16_224",
            timm.create_model("vit_tiny_patch16_224", in_chans=1, num_classes=4, img_size=64),
            1,
        ),
        "timm-rgbn": ("efficientnet_b0", timm.create_model("efficientnet_b0", in_chans=4), 4),
        "tv-resnet": ("tv:resnet18", tv, 1),
    }


@pytest.mark.parametrize("case", sorted(_gray_models()))
def test_a_grayscale_model_of_an_rgb_design_loads_and_says_its_statistics_are_a_guess(
    case, tmp_path
):
    """Its first convolution takes other channels than the architecture's 3: it failed to
    load ("size mismatch for conv1.weight"), with no word of ``in_chans``. The weights say how
    many; the normalisation stays a guess, said in one warning unless the user gives it."""
    arch, model, channels = _gray_models()[case]
    model = randomize_bn(model).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    with pytest.warns(NetlensWarning, match=f"weights take {channels} channel"):
        lens = netlens.load(tmp_path / "w.pth", arch=arch)
    assert lens.transform.channels == channels
    size = lens.transform.size
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(lens.output(x), model(x), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # told: no guess to warn of
        told = netlens.load(
            tmp_path / "w.pth", arch=arch, mean=(0.5,) * channels, std=(0.25,) * channels
        )
    assert told.transform.mean == (0.5,) * channels
    if channels == 1:  # a grayscale photo, through the CLI
        from PIL import Image
        from skimage import data

        Image.fromarray(data.camera()).save(tmp_path / "camera.png")
        res = runner.invoke(
            app,
            ["cam", str(tmp_path / "w.pth"), str(tmp_path / "camera.png"), "--arch", arch]
            + ["-o", str(tmp_path / "out")],
        )
        assert res.exit_code == 0, res.output
        assert "weights take 1 channel" in res.output


@pytest.mark.parametrize(
    ("recorded", "built"),
    [
        ("resnet18", "resnet18"),
        ("timm/resnet18.a1_in1k", "resnet18.a1_in1k"),  # a Hub id: the name and its tag
        ("hf-hub:timm/resnet18.a1_in1k", "resnet18.a1_in1k"),
    ],
)
def test_a_lightning_checkpoint_builds_the_architecture_its_hyperparameters_name(
    recorded, built, tmp_path
):
    """``self.model = timm.create_model(self.hparams.model_name, num_classes=5)`` with
    ``save_hyperparameters()``: the checkpoint names the architecture under
    ``hyper_parameters``; it needed --arch."""
    import timm

    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("resnet18", num_classes=5)).eval()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hparams = {"model_name": recorded, "num_classes": 5, "lr": 1e-3}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 2}, tmp_path / "a.ckpt")
    lens = netlens.load(tmp_path / "a.ckpt")
    assert lens.card["arch"] == built
    assert lens.card["arch_source"] == "the checkpoint's 'hyper_parameters.model_name'"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(lens.output(x), model(x))


@pytest.mark.parametrize("arch", ["resnet18", "tv:resnet18"])
def test_a_lightning_checkpoints_recorded_data_options_are_its_preprocessing(arch, tmp_path):
    """A CIFAR model's ``save_hyperparameters()`` keeps ``img_size=32`` and CIFAR's mean/std:
    the README promises "the image size, mean/std and crop its recorded options say", and it
    was fed 224×224 with ImageNet's statistics (only ``args`` of train.py scripts were read)."""
    import numpy as np
    import timm
    import torchvision
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    tv = arch.startswith("tv:")
    model = (
        torchvision.models.resnet18(num_classes=10)
        if tv
        else timm.create_model("resnet18", num_classes=10)
    )
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    hparams = {"model_name": arch, "img_size": 32, "mean": list(mean), "std": std, "lr": 0.1}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "c.ckpt")
    lens = netlens.load(tmp_path / "c.ckpt")
    spec = lens.transform
    assert spec.size == (32, 32) and spec.mean == pytest.approx(mean)
    assert spec.std == pytest.approx(std)
    assert "the checkpoint's hyper_parameters (" in spec.source
    photo = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    if not tv:  # as timm's own scripts resolve the recorded options with the model
        cfg = resolve_data_config({"img_size": 32, "mean": mean, "std": std}, model=model)
        want = create_transform(**cfg)(Image.fromarray(photo))[None]
        assert (lens.preprocess(photo) - want).abs().max() < 0.02


def test_a_hyperparameter_naming_another_architecture_says_where_the_name_came_from(tmp_path):
    import timm

    state = timm.create_model("resnet18", num_classes=5).state_dict()
    for hparams, says in [
        ({"backbone": "efficientnet_b0"}, "'hyper_parameters.backbone' names it"),
        ({"model_name": "my_own_net"}, "holds only weights"),  # not a timm/torchvision name
    ]:
        torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "b.ckpt")
        with pytest.raises(ModelLoadError, match=says):
            netlens.load(tmp_path / "b.ckpt")


def test_a_sequential_with_a_batchnorm_head_is_not_taken_for_fastais(tmp_path):
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)),
        nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2)),
    )
    torch.save(model.state_dict(), tmp_path / "seq.pth")
    with pytest.raises(ModelLoadError, match="holds only weights"):
        netlens.load(tmp_path / "seq.pth")


def _fine_tunes() -> dict:
    """State_dicts as fine-tuning scripts leave them, each the whole model: (arch, model)."""
    import timm
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    eff = torchvision.models.efficientnet_b0()
    eff.classifier = nn.Linear(1280, 5)  # the whole Dropout + Linear replaced
    mobile = torchvision.models.mobilenet_v3_small()
    mobile.classifier[-1] = nn.Linear(1024, 3)
    swa = AveragedModel(torchvision.models.resnet18(num_classes=4))
    return {
        "efficientnet-linear": ("tv:efficientnet_b0", eff),
        "mobilenet-last": ("tv:mobilenet_v3_small", mobile),
        "swa": ("tv:resnet18", swa),
        "timm-headless": ("resnet18", timm.create_model("resnet18", num_classes=0)),
    }


@pytest.mark.parametrize("case", sorted(_fine_tunes()))
def test_fine_tunes_that_determine_their_model_load_as_it(case, tmp_path):
    """EfficientNet's classifier replaced by one Linear ("fit but for its head" before), an
    ``AveragedModel`` (SWA) state_dict ("Unexpected key n_averaged"), a timm embedding model
    saved with ``num_classes=0`` ("Missing key fc.weight"): each file says what the model
    is; the loaded model gives the original's outputs."""
    arch, model = _fine_tunes()[case]
    model = randomize_bn(model).eval()
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = netlens.load(tmp_path / "ft.pth", arch=arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.allclose(lens.model(x), model(x), atol=1e-5)
    if case == "efficientnet-linear":
        assert lens.card["head_replaced"] == (
            "classifier: Linear(in_features=1280, out_features=5, bias=True)"
        )
