"""Hostile inputs to loading (sweep 13): a shard's stale copy of a weight the index places in
another shard, an index naming shards outside its folder, args.yaml data options of a type
timm cannot take, and an ``output=`` that the saved model cannot give."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import netlens
from netlens.errors import ModelLoadError, NetlensError, NetlensWarning

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=5).eval()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


# --- 1. shards: each weight from the shard the index names ---------------------------------


def test_shard_stale_copy_of_weight_is_ignored_with_a_warning(model, tmp_path: Path) -> None:
    sd = _state(model)
    keys = list(sd)
    half = len(keys) // 2
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    s1 = {k: sd[k] for k in keys[:half]}
    s1["fc.weight"] = sd["fc.weight"]
    s2 = {k: sd[k] for k in keys[half:] if k != "fc.weight"}
    s2["fc.weight"] = torch.zeros_like(sd["fc.weight"])  # stale, not indexed in shard 2
    safetensors_torch.save_file(s1, str(tmp_path / one))
    safetensors_torch.save_file(s2, str(tmp_path / two))
    wm = {k: one for k in s1}
    wm.update({k: two for k in s2 if k != "fc.weight"})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = netlens.load(index, arch="test_resnet")
    got = lens.model.state_dict()
    for k, v in sd.items():  # every weight as the original model has it
        assert torch.equal(got[k].cpu(), v), k
    said = [str(w.message) for w in caught if issubclass(w.category, NetlensWarning)]
    lines = [m for m in said if "'fc.weight'" in m and "index" in m]
    assert len(lines) == 1, said
    assert "ignored" in lines[0]


@pytest.mark.parametrize("outside", ["../a/model-00001-of-00001.safetensors", "ABS"])
def test_shard_path_outside_the_index_folder_is_named(model, tmp_path: Path, outside) -> None:
    sd = _state(model)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shard = tmp_path / "a" / "model-00001-of-00001.safetensors"
    safetensors_torch.save_file(sd, str(shard))
    where = str(shard) if outside == "ABS" else outside
    index = tmp_path / "b" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: where for k in sd}}))
    with pytest.raises(ModelLoadError) as exc:
        netlens.load(index, arch="test_resnet")
    msg = str(exc.value)
    assert "leaves the index's folder" in msg
    assert "not the index of a sharded checkpoint" not in msg
    assert "\n" not in msg


# --- 3. args.yaml data options of a type timm cannot take ----------------------------------


def _yaml_dir(model, tmp_path: Path, text: str) -> Path:
    torch.save(model.state_dict(), tmp_path / "model_best.pth.tar")
    (tmp_path / "args.yaml").write_text("model: test_resnet\n" + text)
    return tmp_path / "model_best.pth.tar"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("img_size: [64, 64]", "img_size"),
        ("img_size: abc", "img_size"),
        ("mean: [0.5, 0.5]", "mean"),
        ("mean: 0.5", "mean"),
        ("crop_pct: big", "crop_pct"),
        ("crop_pct: 0", "crop_pct"),  # timm drops it for its default without a word
        ("input_size: [3, 64]", "input_size"),
    ],
)
def test_args_yaml_bad_data_option_is_one_line(model, tmp_path: Path, line, key) -> None:
    path = _yaml_dir(model, tmp_path, line + "\n")
    with pytest.raises(ModelLoadError) as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            netlens.load(path)
    msg = str(exc.value)
    assert "args.yaml" in msg and f"{key}:" in msg and "should be" in msg
    assert "\n" not in msg


def test_args_yaml_one_mean_for_all_channels_still_used(model, tmp_path: Path) -> None:
    path = _yaml_dir(model, tmp_path, "mean: [0.5]\nstd: [0.25]\nimg_size: 64\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = netlens.load(path).preprocess_info()
    assert tuple(info["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(info["std"]) == (0.25, 0.25, 0.25)


# --- 4. save's output= checked against the model -------------------------------------------


@pytest.mark.parametrize("output", [0, -1, "logits", "", "a\nb"])
def test_save_refuses_output_a_one_tensor_model_cannot_give(model, tmp_path, output) -> None:
    with pytest.raises(NetlensError) as exc:
        netlens.save(model, tmp_path / "m.pt", arch="test_resnet", output=output)
    assert "output=" in str(exc.value)
    assert not (tmp_path / "m.pt").exists()


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = timm.create_model("test_resnet", num_classes=5)

    def forward(self, x):
        y = self.body(x)
        return {"main": y, "aux": y[:, :2]}


def test_save_keeps_output_the_model_gives(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = _TwoHeads().eval()
    path = netlens.save(m, tmp_path / "m.pt", arch="heads.py:TwoHeads", output="main")
    assert torch.load(path, weights_only=False)["record"]["output"] == "main"
    with pytest.raises(NetlensError, match="output='nope'"):
        netlens.save(m, tmp_path / "n.pt", arch="heads.py:TwoHeads", output="nope")


def test_load_drops_a_recorded_output_the_model_cannot_give(model, tmp_path: Path) -> None:
    path = netlens.save(model, tmp_path / "m.pt", arch="test_resnet")
    ckpt = torch.load(path, weights_only=False)
    ckpt.setdefault("record", {})["output"] = 0  # as an older netlens.save wrote it
    torch.save(ckpt, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = netlens.load(path)
    said = [str(w.message) for w in caught if "records output 0" in str(w.message)]
    assert len(said) == 1
    assert lens.output_key is None
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(lens.output(x), want, atol=1e-5)
