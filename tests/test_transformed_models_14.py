"""Models transformed by training or deployment code: a dynamically quantized model's state_dict,
timm's reparameterized (deploy-form) weights, probes whose gradient never reaches a layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import ModelLoadError, NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class _Detached(nn.Module):
    """A conv whose output is detached before the head: no gradient reaches ``conv``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.conv(x)).detach()
        return self.fc(f.mean((2, 3)))


class _Twice(nn.Module):
    """``conv`` runs twice; only its first call's output reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.conv(y)  # computed, never used
        return y.mean((1, 2, 3))


def _x() -> torch.Tensor:
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_probe_grad_that_no_gradient_reaches_is_refused_not_none() -> None:
    m = _Detached().eval()
    with netlens.probe(m, ["conv", "fc"], grads=True) as p:
        out = m(_x())
        p.compute_grads(out[:, 1].sum())
    assert p["fc"].grad is not None  # the layer the output depends on still has its gradient
    with pytest.raises(NetlensError, match="no gradient flows .* to layer 'conv' .*scorecam"):
        p["conv"].grad  # noqa: B018
    with pytest.raises(NetlensError, match="no gradient flows .* to layer 'conv'"):
        p["conv"].grads  # noqa: B018


def test_probe_grad_under_a_dynamically_quantized_head_is_refused() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    q = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    with netlens.probe(q, ["0"], grads=True) as p:
        out = q(_x())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: no autograd kernel
            p.compute_grads(out[:, 0].sum())
    with pytest.raises(NetlensError, match="no gradient flows .* to layer '0' .*quantized"):
        p["0"].grad  # noqa: B018


def test_probe_grad_is_still_none_before_compute_grads_and_without_grads() -> None:
    m = _Detached().eval()
    with netlens.probe(m, ["conv"], grads=True) as p:
        m(_x())
    assert p["conv"].grad is None  # not computed yet
    with netlens.probe(m, ["conv"]) as p:
        m(_x())
    assert p["conv"].grad is None


def test_probe_grads_of_a_call_the_output_does_not_use_stay_none() -> None:
    m = _Twice().eval()
    with netlens.probe(m, ["conv"], grads=True) as p:
        out = m(_x())
        p.compute_grads(out.sum())
    first, second = p["conv"].grads
    assert first is not None and second is None  # one call reached: the list says which
    with netlens.probe(m, ["conv@1"], grads=True) as p:
        out = m(_x())
        p.compute_grads(out.sum())
    with pytest.raises(NetlensError, match="no gradient flows .* to layer 'conv@1'"):
        p["conv@1"].grad  # noqa: B018


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x).mean(), self.b(x).mean()


def test_probe_grad_reached_by_a_later_target_is_given() -> None:
    """A capture one target did not reach gets its gradient from a later target that does."""
    m = _TwoOutputs().eval()
    with netlens.probe(m, ["b"], grads=True) as p:
        first, second = m(_x())
        p.compute_grads(first, retain_graph=True)
        with pytest.raises(NetlensError, match="to layer 'b'"):
            p["b"].grad  # noqa: B018
        p.compute_grads(second)
    assert p["b"].grad is not None


def _quantized_state(tmp_path, wrap: str | None = None):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    path = tmp_path / "q.pt"
    torch.save(q.state_dict() if wrap is None else {wrap: q.state_dict(), "epoch": 3}, path)
    return path


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_a_dynamically_quantized_state_dict_is_named_as_such(tmp_path, wrap) -> None:  # noqa: ANN001
    path = _quantized_state(tmp_path, wrap)
    for arch in (None, "tv:resnet18"):
        with pytest.raises(ModelLoadError, match=r"dynamically quantized model \(2\._packed_") as e:
            netlens.load(path, arch=arch, device="cpu")
        assert "neither" not in str(e.value) and "before quantize_dynamic" in str(e.value)


def _random_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine weights made random, so fusing them changes numbers."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def test_timm_reparameterized_weights_load_into_the_reparameterized_arch(tmp_path) -> None:  # noqa: ANN001
    timm = pytest.importorskip("timm")
    from timm.utils import reparameterize_model

    torch.manual_seed(0)
    trained = _random_bn(timm.create_model("repvgg_a0", num_classes=7))
    deployed = reparameterize_model(trained)
    assert any(".reparam_conv." in k for k in deployed.state_dict())
    torch.save(deployed.state_dict(), tmp_path / "deploy.pt")
    lens = netlens.load(tmp_path / "deploy.pt", arch="repvgg_a0", device="cpu")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = trained(x), lens.model.eval()(x)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert torch.equal(got, deployed(x))


def test_reparameterized_weights_for_an_arch_without_that_form_are_named(tmp_path) -> None:  # noqa: ANN001
    timm = pytest.importorskip("timm")
    from timm.utils import reparameterize_model

    deployed = reparameterize_model(timm.create_model("repvgg_a0", num_classes=7).eval())
    torch.save(deployed.state_dict(), tmp_path / "deploy.pt")
    with pytest.raises(ModelLoadError, match=r"reparameterized \(deploy\).*reparam_conv") as e:
        netlens.load(tmp_path / "deploy.pt", arch="tv:resnet18", device="cpu")
    assert "Missing key" not in str(e.value)


def test_reparameterized_weights_save_and_load_again(tmp_path) -> None:  # noqa: ANN001
    """netlens.save checks the weights against the deploy form, and loading the checkpoint
    builds that form (it refused 349 missing tensors of the unfused build)."""
    timm = pytest.importorskip("timm")
    from timm.utils import reparameterize_model

    torch.manual_seed(0)
    deployed = reparameterize_model(_random_bn(timm.create_model("repvgg_a0", num_classes=7)))
    torch.save(deployed.state_dict(), tmp_path / "deploy.pt")
    lens = netlens.load(tmp_path / "deploy.pt", arch="repvgg_a0", device="cpu")
    netlens.save(lens, tmp_path / "saved.pt")
    again = netlens.load(tmp_path / "saved.pt", device="cpu")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again.model.eval()(x), deployed(x))


def test_a_users_module_named_fuse_is_left_alone_by_the_deploy_form(tmp_path) -> None:  # noqa: ANN001
    """Only timm's modules are fused: a decoder's ``fuse`` convolution is no deploy method
    (timm's own function would call it, and fail)."""
    timm = pytest.importorskip("timm")
    from timm.utils import reparameterize_model

    from netlens.models.deploy_form import deployed

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("repvgg_a0", num_classes=0, global_pool="")
            self.fuse = nn.Conv2d(1280, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fuse(self.backbone(x))

    torch.manual_seed(0)
    model = Seg().eval()
    want = reparameterize_model(model.backbone)
    got = deployed(model)
    assert isinstance(got.fuse, nn.Conv2d)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(got.backbone(x), want(x))
