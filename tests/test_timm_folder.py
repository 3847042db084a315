"""timm's Hugging Face Hub folders (``config.json`` with ``architecture`` + weights), as
``huggingface-cli download timm/NAME.TAG`` and ``timm``'s ``save_for_hf`` leave them: they failed
to load through transformers' timm wrapper ("got multiple values for keyword argument
'num_classes'")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError


@pytest.mark.parametrize("safe", [True, False])
def test_a_fine_tuned_timm_model_saved_for_the_hub_loads_with_its_labels(
    tmp_path: Path, safe: bool
) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    names = ["ant", "bee", "cat", "dog"]
    save_for_hf(
        model, tmp_path / "r18", model_config={"label_names": names}, safe_serialization=safe
    )
    lens = netlens.load(tmp_path / "r18")
    assert list(lens.classes) == names
    assert lens.classes.source == "r18/config.json's 'label_names'"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), model(x))
    assert lens.transform.source == "timm data config of resnet18.a1_in1k"


def test_label_ids_are_named_by_their_descriptions(tmp_path: Path) -> None:
    """timm's ImageNet Hub configs keep WordNet IDs as ``label_names`` and the readable names as
    ``label_descriptions``: classes were called ``n02123045`` and ``--target tabby`` refused."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    ids = ["n02123045", "n02012849", "n03126707", "n01440764"]
    described = {
        "n02123045": "tabby, tabby cat",
        "n02012849": "crane",
        "n03126707": "crane",
        "n01440764": "tench, Tinca tinca",
    }
    config = {"label_names": ids, "label_descriptions": described}
    save_for_hf(model, tmp_path / "r18", model_config=config)
    lens = netlens.load(tmp_path / "r18")
    assert list(lens.classes) == ["tabby", "crane (n02012849)", "crane (n03126707)", "tench"]
    x = torch.randn(1, 3, 64, 64)
    for target, idx in (("tabby", 0), ("tabby cat", 0), ("n02123045", 0), ("Tinca tinca", 3)):
        assert lens.cam(x, target=target).targets.tolist() == [idx], target
    assert lens.cam(x, target="n03126707").rows()[0]["target_name"] == "crane (n03126707)"
    from netlens.models.hf import hf_class_names  # transformers' TimmWrapper keeps them alike

    assert hf_class_names(config) == list(lens.classes)


def test_the_folders_tag_sets_the_preprocessing(tmp_path: Path) -> None:
    """``timm/resnet18.tv_in1k`` takes 224² crops of 256 (crop_pct 0.875) with bilinear
    resizing, ``a1_in1k`` 0.95 and bicubic: the folder's own tag decides, as timm's loader does,
    and an ImageNet head gets ImageNet's names."""
    model = timm.create_model("resnet18.tv_in1k", num_classes=1000).eval()
    save_for_hf(model, tmp_path / "tv")
    config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "tv_in1k"
    lens = netlens.load(tmp_path / "tv")
    expected = timm.data.resolve_model_data_config(model)
    assert lens.transform.crop_pct == expected["crop_pct"] == 0.875
    assert lens.transform.interpolation == expected["interpolation"] == "bilinear"
    assert lens.transform.source == "timm data config of resnet18.tv_in1k"
    assert lens.classes[0] == "tench"
    result = CliRunner().invoke(app, ["layers", str(tmp_path / "tv")])
    assert result.exit_code == 0, result.output


def test_a_folder_whose_config_does_not_fit_its_weights_says_so(tmp_path: Path) -> None:
    model = timm.create_model("resnet18", num_classes=4)
    save_for_hf(model, tmp_path / "r18", safe_serialization=True)
    config_path = tmp_path / "r18" / "config.json"
    config = json.loads(config_path.read_text())
    config["architecture"] = "vit_large_patch16_224"  # 1.2 GB against 45 MB of weights
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="config does not belong to these weights"):
        netlens.load(tmp_path / "r18")
    config["architecture"] = "resnet18"
    config["model_args"] = {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="pretrained_cfg_overlay"):
        netlens.load(tmp_path / "r18")
    (tmp_path / "r18" / "model.safetensors").unlink()
    config["model_args"] = {}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="holds config.json but no weights"):
        netlens.load(tmp_path / "r18")
