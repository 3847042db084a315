"""Model sources: checkpoints, state_dicts (+ arch), safetensors, pickles, modules."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import ModelLoadError, UnsafeModelError


@pytest.fixture(scope="module")
def alexnet2():
    """The classic tutorial: torchvision AlexNet whose last layer became Linear(4096, 2)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    model.classifier[6] = nn.Linear(4096, 2)
    return model.eval()


def same_outputs(a: nn.Module, b: nn.Module, shape=(1, 3, 224, 224)) -> bool:
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_alexnet_state_dict_with_arch_alone(alexnet2, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(alexnet2.state_dict(), path)
    lens = netlens.load(path, arch="tv:alexnet", device="cpu")
    assert lens.model.classifier[6].out_features == 2
    assert not lens.model.training
    assert same_outputs(lens.model, alexnet2)
    assert lens.transform.size == (224, 224)


def test_state_dict_needs_arch_and_hints_names(alexnet2, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(alexnet2.state_dict(), path)
    with pytest.raises(ModelLoadError, match="--arch"):
        netlens.load(path)
    with pytest.raises(ModelLoadError, match="alexnet"):
        netlens.load(path, arch="tv:alexnt")
    with pytest.raises(ModelLoadError, match="do not fit"):
        netlens.load(path, arch="tv:vgg11")


def test_timm_safetensors_infers_classes(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    save_file(model.state_dict(), str(tmp_path / "r.safetensors"))
    lens = netlens.load(tmp_path / "r.safetensors", arch="resnet18", device="cpu")
    assert lens.model.fc.out_features == 7
    assert same_outputs(lens.model, model, (1, 3, 64, 64))


def test_state_dict_of_a_headless_default_arch_infers_classes(tmp_path):
    """timm's DINOv2/SigLIP encoders default to ``num_classes=0``: regression, a state_dict
    with a 5-class head was loaded into a model without one and refused."""
    import timm

    kw = {"img_size": 28, "depth": 1}
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=5, **kw)
    assert timm.create_model("vit_small_patch14_dinov2", pretrained=False, **kw).num_classes == 0
    torch.save(model.eval().state_dict(), tmp_path / "enc.pt")
    lens = netlens.load(tmp_path / "enc.pt", arch="vit_small_patch14_dinov2", arch_kwargs=kw)
    assert lens.model.head.out_features == 5
    assert same_outputs(lens.model, model, (1, 3, 28, 28))


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "netlens"])
def test_torchvision_mnasnet_weights_load_in_every_format(tmp_path, fmt):
    """MNASNet refuses a state without its module version: regression, the version was dropped
    (``module.`` prefix stripping) or missing (safetensors, netlens checkpoints)."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=4).eval()
    path = tmp_path / f"m.{fmt}"
    if fmt == "pt":
        torch.save(model.state_dict(), path)
    elif fmt == "safetensors":
        save_file(model.state_dict(), str(path))
    else:
        netlens.save(model, path, arch="tv:mnasnet0_5")
    lens = netlens.load(path, arch=None if fmt == "netlens" else "tv:mnasnet0_5")
    assert same_outputs(lens.model, model, (1, 3, 64, 64))


def test_netlens_checkpoint_round_trip(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    netlens.save(
        model, tmp_path / "ck.pt", arch="resnet18", classes=["a", "b", "c"], record={"epochs": 1}
    )
    raw = torch.load(tmp_path / "ck.pt", weights_only=True)  # safe format
    assert raw["format"] == "netlens-checkpoint"
    lens = netlens.load(tmp_path / "ck.pt", device="cpu")
    assert lens.classes == ["a", "b", "c"] and lens.card["record"] == {"epochs": 1}
    assert same_outputs(lens.model, model, (1, 3, 64, 64))
    netlens.save(lens, tmp_path / "again.pt")
    assert netlens.load(tmp_path / "again.pt").classes == ["a", "b", "c"]


class Evil:
    """Unpickling this would create a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"state_dict": Evil(str(marker))}, fh)
    with pytest.raises(UnsafeModelError, match="--trust") as err:
        netlens.load(path)
    assert not marker.exists()
    assert "unpickling runs" in str(err.value)


def test_whole_module_needs_trust(tiny, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(UnsafeModelError):
        netlens.load(path)
    lens = netlens.load(path, trust=True, device="cpu")
    assert same_outputs(lens.model, tiny, (1, 3, 32, 32))


def test_module_passed_in_python_is_used_as_is(tiny):
    lens = netlens.load(tiny)
    assert lens.model is tiny
    assert lens.transform.size == (32, 32)  # from the model's input_size


@pytest.mark.parametrize(
    ("content", "msg"), [(None, "not found"), (b"garbage", "cannot read"), (b"", "cannot read")]
)
def test_bad_model_files(tmp_path, content, msg):
    path = tmp_path / "m.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=msg) as err:
        netlens.load(path)
    assert "\n" not in str(err.value)


def test_loader_plugins_run_before_builtins(tmp_path, tiny):
    from netlens.models.load import LoadedModel
    from netlens.plugins import hookimpl
    from netlens.plugins.manager import PluginHost

    class Mine:
        @hookimpl
        def netlens_register_model_loaders(self, registry):
            registry.add(
                "mine", lambda src, req: LoadedModel(tiny) if src.suffix == ".pt" else None
            )

    path = tmp_path / "anything.pt"
    path.write_bytes(b"not torch")
    lens = netlens.load(path, host=PluginHost([Mine()]))
    assert lens.model is tiny
