"""What timm's ``train.py`` writes: CheckpointSaver files naming a Hub id of timm's
(``--model hf-hub:timm/resnet18.a1_in1k``), and the ``args.yaml`` beside its checkpoints that a
cleaned (bare) state_dict is read with. Checked against timm's own ``resolve_data_config``."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from conftest import randomize_bn
from hostile_inputs import assert_one_clean_line
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensWarning

timm = pytest.importorskip("timm")
yaml = pytest.importorskip("yaml")

pytestmark = [pytest.mark.usefixtures("one_thread")]
runner = CliRunner()
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
# what timm's train.py run with --img-size 160 --mean/--std 0.5/0.25 --crop-pct 0.9 records
YAML_ARGS = {
    "model": "resnet18",
    "num_classes": 10,
    "img_size": 160,
    "input_size": None,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "model_ema": True,
    "lr": 0.05,
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(timm.create_model("resnet18", num_classes=10)).eval()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a file names is ever fetched."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def load(path, **kw):  # noqa: ANN001, ANN201
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = netlens.load(path, **kw)
    return lens, [str(w.message) for w in caught if issubclass(w.category, NetlensWarning)]


def spec(lens) -> tuple:  # noqa: ANN001
    p = lens.preprocess_info()
    return (tuple(p["size"]), tuple(p["mean"]), tuple(p["std"]), p["crop_pct"], p["interpolation"])


def timm_spec(dc: dict) -> tuple:
    return (
        tuple(dc["input_size"][1:]),
        tuple(dc["mean"]),
        tuple(dc["std"]),
        dc["crop_pct"],
        dc["interpolation"],
    )


def saver_file(path, model, name: str):  # noqa: ANN001, ANN201
    """timm's CheckpointSaver layout, ``--model NAME`` recorded as 'arch' and args.model."""
    args = argparse.Namespace(
        model=name, pretrained=True, num_classes=10, img_size=None, input_size=None,
        mean=None, std=None, crop_pct=None, interpolation="",
    )  # fmt: skip
    ckpt = {"epoch": 3, "arch": name, "state_dict": model.state_dict(), "optimizer": {},
            "version": 2, "args": args, "metric": 71.2}  # fmt: skip
    torch.save(ckpt, path)
    return args


# -- 1. a Hub id of timm's own as --model ---------------------------------------------------------
@pytest.mark.parametrize("name", ["hf-hub:timm/resnet18.a1_in1k", "timm/resnet18.a1_in1k"])
def test_a_train_checkpoint_naming_a_timm_hub_id_builds_the_tag(name, model, tmp_path):
    args = saver_file(tmp_path / "model_best.pth.tar", model, name)
    lens, _ = load(tmp_path / "model_best.pth.tar")
    assert lens.card["arch"] == "resnet18.a1_in1k"
    assert lens.card["arch_source"] == "the checkpoint's 'arch'"
    with torch.no_grad():
        assert torch.equal(lens.model(X), model(X))
    ref = timm.data.resolve_data_config(
        vars(args), model=timm.create_model("resnet18.a1_in1k", num_classes=10)
    )
    assert ref["crop_pct"] == 0.95 and ref["interpolation"] == "bicubic"  # the tag's, not 0.875
    assert spec(lens) == timm_spec(ref)
    del_arch = torch.load(tmp_path / "model_best.pth.tar", weights_only=False)
    del del_arch["arch"]  # torchvision-style: the name only in args.model
    torch.save(del_arch, tmp_path / "args_only.pth.tar")
    lens, _ = load(tmp_path / "args_only.pth.tar")
    assert lens.card["arch"] == "resnet18.a1_in1k" and spec(lens) == timm_spec(ref)


@pytest.mark.parametrize("with_arch", [True, False])
def test_another_hub_id_is_refused_saying_give_arch(with_arch, model, tmp_path):
    saver_file(tmp_path / "hub.pth.tar", model, "hf-hub:someone/weights")
    if not with_arch:
        ckpt = torch.load(tmp_path / "hub.pth.tar", weights_only=False)
        del ckpt["arch"]
        torch.save(ckpt, tmp_path / "hub.pth.tar")
    with pytest.raises(ModelLoadError, match="not an architecture name") as err:
        netlens.load(tmp_path / "hub.pth.tar")
    assert str(err.value).endswith("give --arch NAME")
    res = runner.invoke(app, ["layers", str(tmp_path / "hub.pth.tar"), "-o", str(tmp_path)])
    assert res.exit_code != 0
    assert assert_one_clean_line(res.output).endswith("give --arch NAME")
    lens, _ = load(tmp_path / "hub.pth.tar", arch="resnet18")  # as it says
    with torch.no_grad():
        assert torch.equal(lens.model(X), model(X))


# -- 2. args.yaml beside a cleaned checkpoint ----------------------------------------------------
def cleaned(folder, model, suffix: str = ".pth", args: dict | None = YAML_ARGS):  # noqa: ANN001, ANN201
    """clean_checkpoint.py's bare state_dict beside train.py's args.yaml."""
    path = folder / f"resnet18-cleaned{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    if args is not None:
        (folder / "args.yaml").write_text(yaml.safe_dump(args, default_flow_style=False))
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", [None, "resnet18"])
def test_a_cleaned_checkpoint_is_read_with_the_args_yaml_beside_it(suffix, arch, model, tmp_path):
    path = cleaned(tmp_path, model, suffix)
    lens, said = load(path, arch=arch)
    ref = timm.data.resolve_data_config(dict(YAML_ARGS), model=model)
    assert timm_spec(ref) == ((160, 160), (0.5,) * 3, (0.25,) * 3, 0.9, "bicubic")
    assert spec(lens) == timm_spec(ref)
    assert "args.yaml" in lens.preprocess_info()["source"]
    assert lens.card["arch"] == "resnet18" and not said
    if arch is None:
        assert "args.yaml" in lens.card["arch_source"]
    with torch.no_grad():
        assert torch.equal(lens.model(X), model(X))


def test_an_arch_other_than_the_args_yaml_model_is_built_with_its_own_defaults(model, tmp_path):
    """torchvision's resnet18 holds the same weight names: --arch tv:resnet18 is built, and the
    yaml's data options (timm resnet18's training's) are not used; a warning says so."""
    (tmp_path / "plain").mkdir()
    plain, _ = load(cleaned(tmp_path / "plain", model, args=None), arch="tv:resnet18")
    lens, said = load(cleaned(tmp_path, model), arch="tv:resnet18")
    assert lens.card["arch"] == "tv:resnet18"
    assert spec(lens) == spec(plain) and spec(lens)[0] == (224, 224)
    assert len(said) == 1 and "args.yaml" in said[0] and "--arch tv:resnet18 is built" in said[0]


def test_a_checkpoint_naming_another_arch_than_args_yaml_keeps_its_own(model, tmp_path):
    torch.save({"arch": "tv:resnet18", "state_dict": model.state_dict()}, tmp_path / "c.pth")
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(YAML_ARGS))
    lens, said = load(tmp_path / "c.pth")
    assert lens.card["arch"] == "tv:resnet18" and spec(lens)[0] == (224, 224)
    assert any("another run's" in s for s in said)


def test_the_files_own_args_win_over_an_args_yaml(model, tmp_path):
    saver_file(tmp_path / "last.pth.tar", model, "resnet18")
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(YAML_ARGS))
    lens, said = load(tmp_path / "last.pth.tar")
    ref = timm.data.resolve_model_data_config(model)
    assert spec(lens) == timm_spec(ref) and spec(lens)[0] == (224, 224) and not said


@pytest.mark.parametrize(
    "text",
    [
        "lr: 0.1\nepochs: 10\n",  # not timm's: no model
        "model: [resnet18\n",  # not YAML
        "!!python/object/apply:os.system ['true']\n",  # not plain data
        "- resnet18\n",  # not a mapping
    ],
)
def test_an_args_yaml_not_timms_is_ignored(text, model, tmp_path):
    (tmp_path / "args.yaml").write_text(text)
    path = cleaned(tmp_path, model, args=None)
    with pytest.raises(ModelLoadError, match="--arch NAME"):
        netlens.load(path)
    lens, said = load(path, arch="resnet18")
    assert spec(lens) == timm_spec(timm.data.resolve_model_data_config(model)) and not said


def test_netlens_checkpoints_and_hf_folders_ignore_an_args_yaml(model, tmp_path):
    netlens.save(model, tmp_path / "mine.pt", arch="resnet18")
    before = spec(load(tmp_path / "mine.pt")[0])
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(YAML_ARGS))
    lens, said = load(tmp_path / "mine.pt")
    assert spec(lens) == before and "args.yaml" not in lens.preprocess_info()["source"]
    assert not said and "train_args_from" not in lens.card

    tf = pytest.importorskip("transformers")
    cfg = tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=3,
    )  # fmt: skip
    folder = tmp_path / "hf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf.ViTForImageClassification(cfg).save_pretrained(folder)
    before = spec(load(folder)[0])  # (args.yaml beside the folder too: tmp_path's)
    (folder / "args.yaml").write_text(yaml.safe_dump(YAML_ARGS))
    lens, said = load(folder)
    assert spec(lens) == before and "args.yaml" not in lens.preprocess_info()["source"]
    assert not any("args.yaml" in s for s in said) and "train_args_from" not in lens.card
