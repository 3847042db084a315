"""netlens.save / netlens.load round trips and state_dicts of models practitioners save:
torch.compile'd and DataParallel models, half precision, and layers still pruned or weight- /
spectral-normed (their state_dicts hold the parts of the weight, not ``weight``)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune
import torchvision
from conftest import randomize_bn
from torch import nn
from torch.nn.utils import parametrizations as P

import netlens
from netlens.errors import ModelLoadError, NetlensWarning

pytestmark = [pytest.mark.usefixtures("one_thread")]

ARCH = "tv:resnet18"


@pytest.fixture(scope="module")
def base() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x.to(next(model.parameters()).dtype)).float()


def _pruned(m: nn.Module) -> nn.Module:
    prune.l1_unstructured(m.conv1, "weight", 0.5)
    prune.ln_structured(m.layer4[1].conv2, "weight", 0.3, n=2, dim=0)
    prune.l1_unstructured(m.fc, "bias", 0.5)
    return m


def _weight_norm_new(m: nn.Module) -> nn.Module:
    P.weight_norm(m.conv1)
    P.weight_norm(m.layer1[0].conv1, dim=1)
    P.weight_norm(m.fc, dim=None)
    return m


def _weight_norm_old(m: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nn.utils.weight_norm(m.conv1)
        nn.utils.weight_norm(m.fc)
    return m


def _spectral_new(m: nn.Module) -> nn.Module:
    P.spectral_norm(m.fc)
    P.spectral_norm(m.layer1[0].conv1)  # square [64, 64, 3, 3]: dim 0 or 1 by shape
    return m


def _spectral_old(m: nn.Module) -> nn.Module:
    nn.utils.spectral_norm(m.fc)
    nn.utils.spectral_norm(m.conv1)
    return m


REPARAMETRIZED = {
    "pruned": _pruned,
    "weight_norm": _weight_norm_new,
    "weight_norm_old": _weight_norm_old,
    "spectral_norm": _spectral_new,
    "spectral_norm_old": _spectral_old,
}


def _made(base: nn.Module, name: str, x: torch.Tensor) -> nn.Module:
    m = REPARAMETRIZED[name](copy.deepcopy(base))
    if name.startswith("spectral"):  # a few training forwards: u and v as training leaves them
        m.train()
        with torch.no_grad():
            for _ in range(2):
                m(x)
    return m.eval()


@pytest.mark.parametrize("name", sorted(REPARAMETRIZED))
def test_a_state_dict_of_a_reparametrized_model_loads_its_effective_weights(
    base: nn.Module, x: torch.Tensor, tmp_path: Path, name: str
) -> None:
    m = _made(base, name, x)
    want = _logits(m, x)  # the in-memory model's own forward (its effective weights)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with pytest.warns(NetlensWarning, match="effective weights"):
        lens = netlens.load(tmp_path / "sd.pt", arch=ARCH)
    assert set(lens.model.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(_logits(lens.model, x), want, atol=1e-5, rtol=0)


def test_the_effective_weights_are_the_formulas(base: nn.Module, x: torch.Tensor) -> None:
    """Independent of the layers' own code: orig * mask, g v / ||v||, W / (u . W v)."""
    from netlens.models.effective_weights import effective_state

    pruned = _made(base, "pruned", x).state_dict()
    wn = _made(base, "weight_norm_old", x).state_dict()
    sn = _made(base, "spectral_norm_old", x).state_dict()
    got = {
        **effective_state(pruned, "p", note=False),
        **{"wn." + k: v for k, v in effective_state(wn, "w", note=False).items()},
        **{"sn." + k: v for k, v in effective_state(sn, "s", note=False).items()},
    }
    torch.testing.assert_close(
        got["conv1.weight"], pruned["conv1.weight_orig"] * pruned["conv1.weight_mask"]
    )
    g, v = wn["conv1.weight_g"], wn["conv1.weight_v"]
    want = g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(got["wn.conv1.weight"], want, atol=1e-6, rtol=1e-6)
    w, u, vv = sn["fc.weight_orig"], sn["fc.weight_u"], sn["fc.weight_v"]
    torch.testing.assert_close(got["sn.fc.weight"], w / (u @ w @ vv), atol=1e-6, rtol=1e-6)


def test_a_parametrization_it_cannot_evaluate_is_refused_in_one_line(
    base: nn.Module, tmp_path: Path
) -> None:
    m = copy.deepcopy(base)
    P.orthogonal(m.fc)
    torch.save(m.state_dict(), tmp_path / "orth.pt")
    with pytest.raises(ModelLoadError, match="remove them before saving") as info:
        netlens.load(tmp_path / "orth.pt", arch=ARCH)
    assert "\n" not in str(info.value) and "'fc.weight'" in str(info.value)


def test_a_weight_norm_whose_dim_cannot_be_told_is_refused(base: nn.Module, tmp_path: Path) -> None:
    state = dict(base.state_dict())
    v = state.pop("conv1.weight")
    state["conv1.weight_g"], state["conv1.weight_v"] = torch.ones(64, 3, 1, 1), v
    torch.save(state, tmp_path / "wn.pt")
    with pytest.raises(ModelLoadError, match="weight-norm g of shape .* prune.remove"):
        netlens.load(tmp_path / "wn.pt", arch=ARCH)


@pytest.mark.parametrize("name", ["pruned", "weight_norm"])
def test_netlens_save_of_a_reparametrized_model_round_trips(
    base: nn.Module, x: torch.Tensor, tmp_path: Path, name: str
) -> None:
    m = _made(base, name, x)
    netlens.save(m, tmp_path / "m.pt", arch=ARCH)
    assert set(torch.load(tmp_path / "m.pt")["state_dict"]) == set(base.state_dict())
    lens = netlens.load(tmp_path / "m.pt")
    torch.testing.assert_close(_logits(lens.model, x), _logits(m, x), atol=1e-5, rtol=0)


def test_a_netlens_checkpoint_holding_pruned_parts_loads(
    base: nn.Module, x: torch.Tensor, tmp_path: Path
) -> None:
    """A file an earlier netlens.save wrote from a pruned model (the parts, not ``weight``)."""
    m = _made(base, "pruned", x)
    ckpt = {"format": "netlens-checkpoint", "version": 1, "arch": ARCH}
    ckpt.update(arch_kwargs={"num_classes": 10}, state_dict=m.state_dict())
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.warns(NetlensWarning, match="pruned"):
        lens = netlens.load(tmp_path / "old.pt")
    torch.testing.assert_close(_logits(lens.model, x), _logits(m, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrap", ["compile", "DataParallel"])
def test_netlens_save_of_a_wrapped_model_saves_the_network(
    base: nn.Module, x: torch.Tensor, tmp_path: Path, wrap: str
) -> None:
    m = copy.deepcopy(base)
    wrapped = torch.compile(m) if wrap == "compile" else nn.DataParallel(m)
    netlens.save(wrapped, tmp_path / "w.pt", arch=ARCH)
    assert set(torch.load(tmp_path / "w.pt")["state_dict"]) == set(base.state_dict())
    lens = netlens.load(tmp_path / "w.pt")
    torch.testing.assert_close(_logits(lens.model, x), _logits(m, x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_netlens_save_of_a_half_model_records_its_classes_and_precision(
    base: nn.Module, x: torch.Tensor, tmp_path: Path, dtype: torch.dtype
) -> None:
    m = copy.deepcopy(base).to(dtype)
    netlens.save(m, tmp_path / "h.pt", arch=ARCH)
    assert torch.load(tmp_path / "h.pt")["arch_kwargs"]["num_classes"] == 10
    lens = netlens.load(tmp_path / "h.pt")
    assert lens.dtype == dtype
    torch.testing.assert_close(_logits(lens.model, x), _logits(m, x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_model_with_too_few_class_names_is_refused_at_load(
    base: nn.Module, dtype: torch.dtype
) -> None:
    m = copy.deepcopy(base).to(dtype)
    with pytest.raises(ModelLoadError, match="5 class names given but the model has 10 outputs"):
        netlens.load(m, classes=["a", "b", "c", "d", "e"])
