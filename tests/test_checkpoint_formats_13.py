"""Checkpoint layouts training code writes (sweep 13): sharded safetensors / ``.bin`` with an
index, torch.distributed.checkpoint folders, unnamed EMA / SWA copies, a config under
``"model"`` beside the weights, and the weights file of a Hugging Face folder passed alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm
import torch
from hostile_inputs import assert_one_clean_line
from torch import nn

import netlens
from netlens.errors import ModelLoadError, NetlensWarning

pytestmark = [pytest.mark.usefixtures("one_thread")]

ARCH = "test_resnet"


def net(seed: int = 0) -> nn.Module:
    """timm's tiny test_resnet, 5 classes, random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def same(a: nn.Module, b: nn.Module) -> bool:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def load(path: Path, **kw) -> netlens.Lens:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netlens.load(path, arch=ARCH, **kw)


def refused(path: Path, **kw) -> str:
    with pytest.raises(ModelLoadError) as info:
        load(path, **kw)
    return assert_one_clean_line(str(info.value))


def shard(model: nn.Module, folder: Path, kind: str = "safetensors") -> dict[str, str]:
    """The model's state_dict in shards as huggingface_hub splits it (Accelerate's
    save_model), with its index; the weight map returned."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    pattern = "model{suffix}.safetensors" if kind == "safetensors" else "pytorch_model{suffix}.bin"
    split = split_torch_state_dict_into_shards(sd, max_shard_size="60KB", filename_pattern=pattern)
    assert len(split.filename_to_tensors) > 2
    for fn, keys in split.filename_to_tensors.items():
        part = {k: sd[k].contiguous() for k in keys}
        if kind == "safetensors":
            save_file(part, str(folder / fn), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fn)
    index = folder / (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    weight_map = dict(sorted(split.tensor_to_filename.items()))  # as transformers sorts it
    index.write_text(json.dumps({"metadata": split.metadata, "weight_map": weight_map}))
    return weight_map


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_weights_load_from_their_index_or_their_folder(tmp_path, kind):
    model = net()
    weight_map = shard(model, tmp_path / "ckpt", kind)
    index = next((tmp_path / "ckpt").glob("*.index.json"))
    assert same(load(index).model, model)
    assert same(load(tmp_path / "ckpt").model, model)
    first = sorted(set(weight_map.values()))[0]
    line = refused(tmp_path / "ckpt" / first)
    assert "shard 1 of" in line and index.name in line


def test_sharded_weights_missing_a_shard_or_a_weight_are_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    model = net()
    weight_map = shard(model, tmp_path / "a")
    files = sorted(set(weight_map.values()))
    (tmp_path / "a" / files[-1]).unlink()
    line = refused(tmp_path / "a")
    assert files[-1] in line and "copy every shard" in line
    weight_map = shard(model, tmp_path / "b")
    name = files[0]
    part = load_file(str(tmp_path / "b" / name))
    gone = sorted(part)[0]
    del part[gone]
    save_file(part, str(tmp_path / "b" / name))
    line = refused(tmp_path / "b" / "model.safetensors.index.json")
    assert gone in line and name in line


def test_a_bin_shard_is_read_weights_only(tmp_path):
    model = net()
    weight_map = shard(model, tmp_path, "bin")
    name = sorted(set(weight_map.values()))[0]
    part = torch.load(tmp_path / name, weights_only=True)
    torch.save({**part, "extra": nn.Linear(2, 2)}, tmp_path / name)  # a module: code to run
    line = refused(tmp_path / "pytorch_model.bin.index.json")
    assert name in line


def test_a_distributed_checkpoint_folder_says_how_to_consolidate_it(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    model = net()
    folder = tmp_path / "step-10"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(folder))
    distcp = next(folder.glob("*.distcp"))
    for path in (folder, folder / ".metadata", distcp):
        line = refused(path)
        assert "torch.distributed.checkpoint" in line and "dcp_to_torch_save" in line
        assert "--trust" not in line
    with warnings.catch_warnings():  # what the line says to do loads
        warnings.simplefilter("ignore")
        dcp_to_torch_save(str(folder), str(tmp_path / "model.pt"))
    assert same(load(tmp_path / "model.pt").model, model)


@pytest.mark.parametrize(
    ("main", "other", "said"),
    [
        ("model_state_dict", "ema_model_state_dict", "its EMA copy"),
        ("model", "ema_model", "its EMA copy"),
        ("state_dict", "model_ema_state_dict", "its EMA copy"),
        ("model", "swa_model", "its averaged copy"),
        ("model", "teacher", "'teacher'"),
    ],
)
def test_a_second_set_of_weights_under_any_name_is_named(tmp_path, main, other, said):
    raw, ema = net(0), net(1)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 5, main: raw.state_dict(), other: ema.state_dict(), "opt": {}}, path)
    with pytest.warns(NetlensWarning) as record:
        lens = netlens.load(path, arch=ARCH)
    lines = [str(w.message) for w in record if f"'{other}'" in str(w.message)]
    assert len(lines) == 1 and said in lines[0] and f"explaining '{main}'" in lines[0]
    assert same(lens.model, raw)


@pytest.mark.parametrize("key", ["model_state", "weights", "params"])
def test_a_config_under_model_beside_the_weights_is_skipped(tmp_path, key):
    model = net()
    config = {"name": ARCH, "num_classes": 5, "drop_rate": 0.0}
    torch.save({"model": config, key: model.state_dict(), "epoch": 2}, tmp_path / "c.pth")
    assert same(load(tmp_path / "c.pth").model, model)


def test_the_weights_file_of_a_hugging_face_folder_points_at_the_folder(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    folder = tmp_path / "my-vit"
    ViTForImageClassification(cfg).save_pretrained(folder)
    with pytest.raises(ModelLoadError) as info:
        netlens.load(folder / "model.safetensors")
    line = assert_one_clean_line(str(info.value))
    assert "weights file of the Hugging Face model folder" in line and "pass the folder" in line


def test_the_cli_takes_a_folder_of_shards_as_the_model(tmp_path):
    """`netlens cam ckpt/ img.png --arch ...` read the folder of shards as images (the default
    model was asked for): it is the model."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from netlens.cli.app import app

    shard(net(), tmp_path / "ckpt", "safetensors")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "img.png")
    args = ["cam", str(tmp_path / "ckpt"), str(tmp_path / "img.png"), "--arch", ARCH]
    r = CliRunner().invoke(app, [*args, "--input-size", "32", "-q", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert any((tmp_path / "o").iterdir())
