"""Sanity's cascade, sweep 10: weight_norm layers re-drawn with their own initialiser (not
N(0, 0.02) through their ParametrizationList), spectral norms with fresh power-iteration
vectors, frozen BatchNorms reset like BatchNorms, models inside thin wrappers, a head that is a
parameter of the model itself randomised first, and quantized models refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import netlens
from netlens.errors import NetlensError
from netlens.metrics.randomization import (
    ROOT_STEP,
    cascade_blocks,
    cascading_randomization,
    model_copy,
    randomize_modules,
)

pytestmark = [pytest.mark.usefixtures("one_thread")]


def cascade(model: nn.Module, x: torch.Tensor, upto: str | None = None) -> nn.Module:
    """A copy of ``model`` randomised step by step (seed k at step k), as sanity does."""
    work = model_copy(model)
    for k, (step, members) in enumerate(cascade_blocks(work, 4, x)):
        randomize_modules(work, members, k)
        if step == upto:
            break
    return work


def fresh(layer: nn.Module, seed: int) -> nn.Module:
    """``layer`` re-initialised by its own ``reset_parameters`` under ``seed``: the reference."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer.reset_parameters()
    return layer


def input_gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return g.abs().sum(1)


# -- 1. weight_norm under torch.nn.utils.parametrizations ------------------------------------
def test_weight_norm_layer_gets_its_own_initialiser() -> None:
    """The layer was reset, then its ParametrizationList (a module of its own, with no
    reset_parameters) overwrote g and v with N(0, 0.02): filter norms 0.02, g negative."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), parametrizations.weight_norm(nn.Conv2d(8, 16, 3)),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    steps = [s for s, _ in cascade_blocks(net, 4, x)]
    assert steps == ["6", "2", "0"]
    work = cascade(net, x, upto="2")
    ref = fresh(nn.Conv2d(8, 16, 3), steps.index("2"))
    with torch.no_grad():
        assert torch.allclose(work[2].weight, ref.weight, atol=1e-6)
        assert torch.equal(work[2].bias, ref.bias)
        g = work[2].parametrizations.weight.original0
        assert torch.allclose(g.flatten(), ref.weight.flatten(1).norm(dim=1), atol=1e-6)
    assert parametrize.is_parametrized(work[2], "weight")


class LowRank(nn.Module):
    """A LoRA-like parametrization: learned factors, no ``right_inverse``."""

    def __init__(self, out: int, fan_in: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(2, fan_in))
        self.b = nn.Parameter(torch.randn(out, 2))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.b @ self.a).view_as(w)


def test_parametrization_without_right_inverse_is_reset_not_a_crash() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    parametrize.register_parametrization(conv, "weight", LowRank(4, 27))
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(1, 3, 8, 8)
    trained = conv.parametrizations.weight[0].a.detach().clone()
    work = cascade(net.eval(), x)
    ref = fresh(nn.Conv2d(3, 4, 3), len(cascade_blocks(net, 4, x)) - 1)
    plist = work[0].parametrizations.weight
    assert torch.allclose(plist.original, ref.weight, atol=1e-6)
    assert not torch.equal(plist[0].a, trained)
    assert torch.equal(conv.parametrizations.weight[0].a, trained)  # the user's model


# -- 2. spectral norm: power-iteration vectors of the new weight ------------------------------
@pytest.mark.parametrize("kind", ["parametrization", "hook"])
def test_spectral_norm_is_of_the_new_weight(kind: str) -> None:
    """u and v were the trained weight's: in eval mode the new weight was divided by u·Wv of the
    old singular vectors, so its top singular value was 12.7 (33.4 with the old hook), not 1."""
    torch.manual_seed(0)
    sn = parametrizations.spectral_norm if kind == "parametrization" else nn.utils.spectral_norm
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), sn(nn.Conv2d(8, 8, 3)), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    for _ in range(5):
        net(torch.randn(2, 3, 12, 12))  # training: the vectors converge on the trained weight
    net.eval()
    x = torch.randn(1, 3, 12, 12)
    trained_u = (
        net[2].parametrizations.weight[0]._u if kind != "hook" else net[2].weight_u
    ).clone()
    work = cascade(net, x, upto="2")
    with torch.no_grad():
        work(x)  # eval: no power iteration, u·Wv as stored
        raw = work[2].parametrizations.weight.original if kind != "hook" else work[2].weight_orig
        ref = raw / torch.linalg.matrix_norm(raw.flatten(1), 2)  # the new weight, normalised
        assert torch.allclose(work[2].weight, ref, rtol=0.02, atol=1e-5)
        assert torch.linalg.matrix_norm(work[2].weight.flatten(1), 2) == pytest.approx(1, abs=0.02)
    again = cascade(net, x, upto="2")
    assert torch.equal(again[2].weight, work[2].weight)  # seeded
    u = net[2].parametrizations.weight[0]._u if kind != "hook" else net[2].weight_u
    assert torch.equal(u, trained_u)  # the user's model untouched


# -- 3. frozen BatchNorm ---------------------------------------------------------------------
def test_frozen_batchnorm_is_reset_like_a_batchnorm() -> None:
    """FrozenBatchNorm2d keeps scale, shift and statistics in buffers with no reset method: it
    was never randomised (80 trained tensors left on a resnet18) and had no step."""
    ops = pytest.importorskip("torchvision.ops")

    def net(norm: type[nn.Module]) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), norm(8), nn.ReLU(), nn.Conv2d(8, 8, 3), norm(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip

    bn, frozen = net(nn.BatchNorm2d), net(ops.FrozenBatchNorm2d)
    with torch.no_grad():
        for i in (1, 4):
            bn[i].weight.uniform_(0.5, 2)
            bn[i].bias.uniform_(-1, 1)
            bn[i].running_mean.uniform_(-1, 1)
            bn[i].running_var.uniform_(0.5, 2)
    frozen.load_state_dict(bn.state_dict(), strict=False)
    bn.eval(), frozen.eval()
    x = torch.randn(1, 3, 12, 12)
    assert torch.allclose(bn(x), frozen(x), atol=1e-5)
    steps = [s for s, _ in cascade_blocks(frozen, 4, x)]
    assert steps == [s for s, _ in cascade_blocks(bn, 4, x)] == ["8", "4", "3", "1", "0"]
    got, ref = cascade(frozen, x).state_dict(), cascade(bn, x).state_dict()
    for key, value in got.items():
        assert torch.equal(value, ref[key]), key  # the BatchNorm twin's fresh values
    trained = frozen.state_dict()
    assert not [k for k in trained if torch.equal(trained[k], got[k])]


# -- 4. a model inside thin wrappers ---------------------------------------------------------
class Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.net = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


def test_wrapped_model_gets_the_bare_models_cascade() -> None:
    """Wrap(Wrap(Wrap(net))) was one step, ['net.net.net'], with no warning: the grouping's
    depth counted the wrappers."""
    bare = small_cnn()
    wrapped = Wrap(Wrap(Wrap(bare))).eval()
    x = torch.randn(2, 3, 16, 16)
    steps = [s for s, _ in cascade_blocks(bare, 4, x)]
    assert [s for s, _ in cascade_blocks(wrapped, 4, x)] == [f"net.net.net.{s}" for s in steps]
    assert len(steps) == 5
    t = torch.tensor([0, 1])
    a = cascading_randomization(bare, x, t, input_gradient)
    b = cascading_randomization(wrapped, x, t, input_gradient)
    np.testing.assert_allclose(a.spearman, b.spearman, atol=1e-6)


# -- 5. a head that is a parameter of the model itself ---------------------------------------
class Cosine(nn.Module):
    """A cosine classifier: the head is the model's own ``prototypes`` parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
            nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.prototypes = nn.Parameter(torch.randn(4, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * F.normalize(self.backbone(x), dim=1) @ F.normalize(self.prototypes, dim=1).t()


class Prototypes(nn.Module):
    def __init__(self, p: torch.Tensor) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(p.detach().clone())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return 10 * F.normalize(f, dim=1) @ F.normalize(self.prototypes, dim=1).t()


def test_a_root_parameter_head_is_randomised_first() -> None:
    """It was the last step, "(root parameters)": the trained head survived every step. The
    reference is the same model with the head in a module of its own."""
    model = Cosine().eval()
    twin = nn.Sequential()
    twin.add_module("backbone", model.backbone)
    twin.add_module("head", Prototypes(model.prototypes))
    x = torch.randn(1, 3, 16, 16)
    steps = cascade_blocks(model, 4, x)
    expected = [s for s, _ in cascade_blocks(twin.eval(), 4, x)]
    assert expected[0] == "head"
    assert [s for s, _ in steps] == [ROOT_STEP, *expected[1:]]
    assert steps[0][1] == [""]
    trained = model.prototypes.detach().clone()
    work = model_copy(model)
    randomize_modules(work, steps[0][1], 0)
    assert not torch.equal(work.prototypes, trained)
    assert torch.equal(work.backbone[0].weight, model.backbone[0].weight)


class ClipLike(nn.Module):
    """open_clip's layout: class and position embeddings at the input, ``proj`` at the top."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 4, 4, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(8))
        self.positional_embedding = nn.Parameter(torch.randn(17, 8))
        self.ln_pre = nn.LayerNorm(8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
        self.ln_post = nn.LayerNorm(8)
        self.proj = nn.Parameter(torch.randn(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(len(x), 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding
        x = self.blocks(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


def test_root_parameters_on_both_sides_split() -> None:
    model = ClipLike().eval()
    x = torch.randn(1, 3, 16, 16)
    steps = cascade_blocks(model, 4, x)
    assert steps[0] == ("(root parameters: proj)", [".proj"])
    assert steps[1][0] == "ln_post"
    assert steps[-2][0] == "conv1"  # the input side stays the last step
    assert steps[-1] == (ROOT_STEP, [".class_embedding", ".positional_embedding"])
    work = model_copy(model)
    randomize_modules(work, steps[0][1], 0)
    assert not torch.equal(work.proj, model.proj)
    assert torch.equal(work.class_embedding, model.class_embedding)
    res = cascading_randomization(model, x, torch.tensor([0]), input_gradient)
    assert res.steps == [s for s, _ in steps]
    # without an example (no forward to follow) they are one last step, as before
    assert cascade_blocks(model, 4)[-1] == (ROOT_STEP, [""])


# -- 7. a quantized model --------------------------------------------------------------------
def test_quantized_model_is_refused_with_what_to_do() -> None:
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    engine = torch.backends.quantized.engine
    if engine == "none":
        pytest.skip("no quantized engine")

    class Q(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.dq = QuantStub(), DeQuantStub()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.c2(F.relu(self.c1(self.q(x)))))
            return self.dq(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

    x = torch.randn(2, 3, 16, 16)
    q = Q().eval()
    q.qconfig = get_default_qconfig(engine)
    prepare(q, inplace=True)
    q(x)
    convert(q, inplace=True)
    with pytest.raises(NetlensError) as err:
        netlens.load(q, input_size=(3, 16, 16)).run("sanity", x, method="gradcam")
    msg = str(err.value)
    assert "no parameters" not in msg and "\n" not in msg
    assert "quantized" in msg and "float model" in msg and "3 layer(s)" in msg
