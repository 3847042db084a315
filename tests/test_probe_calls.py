"""Probes on single calls (``name@k``) and on outputs as consumed (``name:consumed``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.testing import assert_model_unchanged


class SharedAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.conv(x))
        return self.fc(x.mean((2, 3)))


class Head(nn.Module):
    """A feature stack whose output ``forward`` rewrites in place before the head reads it."""

    def __init__(self, rewrite: str = "relu") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 4)
        self.rewrite = rewrite
        nn.init.normal_(self.features[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        assert f.dim() == 4 and f.shape[1] == 8  # metadata: not a read
        if self.rewrite == "relu":
            f = F.relu(f, inplace=True)
        elif self.rewrite == "leaky":
            f = F.leaky_relu(f, 0.1, True)  # inplace given by position
        elif self.rewrite == "ops":
            f.mul_(2)
            f[:, 0] = 0
            torch.sub(f, 1, out=f)
        return self.classifier(F.adaptive_avg_pool2d(f, 1).flatten(1))

    def after(self, f: torch.Tensor) -> torch.Tensor:
        """What ``forward`` makes of the features before the head reads them (reference)."""
        if self.rewrite == "relu":
            return F.relu(f)
        if self.rewrite == "leaky":
            return F.leaky_relu(f, 0.1)
        g = f * 2
        g[:, 0] = 0
        return g - 1


def _x(seed: int = 0, shape: tuple[int, ...] = (2, 3, 8, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_one_call_of_a_shared_module():
    model = SharedAct().eval()
    x = _x(1, (2, 3, 16, 16))
    with torch.no_grad():
        first = torch.relu(model.stem(x))
        second = torch.relu(model.conv(first))
    with torch.no_grad(), netlens.probe(model, "act@0, act@1, act@-1, act@-2, act") as p:
        model(x)
    assert torch.equal(p["act@0"].output, first)
    assert torch.equal(p["act@1"].output, second)
    assert torch.equal(p["act@-1"].output, second)
    assert torch.equal(p["act@-2"].output, first)
    assert len(p["act"].outputs) == 2
    with pytest.raises(NetlensError, match=r"act@0 \(2×8×16×16\), act@1 \(2×16×8×8\)") as err:
        _ = p["act"].output
    assert "\n" not in str(err.value)


def test_a_call_that_does_not_exist_lists_the_calls():
    model = SharedAct().eval()
    with torch.no_grad(), netlens.probe(model, "act@2, act@-3") as p:
        model(_x(2, (1, 3, 16, 16)))
    for name in ("act@2", "act@-3"):
        with pytest.raises(NetlensError, match=r"ran 2 time\(s\) per forward.*act@0.*act@1"):
            _ = p[name].output


def test_calls_are_counted_per_forward():
    model = SharedAct().eval()
    xs = [_x(3, (1, 3, 16, 16)), _x(4, (1, 3, 16, 16))]
    with torch.no_grad(), netlens.probe(model, "act@1, act@-1") as p:
        for x in xs:
            model(x)
    with torch.no_grad():
        ref = [torch.relu(model.conv(torch.relu(model.stem(x)))) for x in xs]
    for name in ("act@1", "act@-1"):
        outs = p[name].outputs
        assert len(outs) == 2 and all(torch.equal(a, b) for a, b in zip(outs, ref, strict=True))
    with pytest.raises(NetlensError, match="in 2 forwards"):
        _ = p["act@1"].output


@pytest.mark.parametrize("rewrite", ["relu", "leaky", "ops"])
def test_consumed_is_the_tensor_the_head_reads(rewrite):
    model = Head(rewrite).eval()
    x = _x(5)
    with torch.no_grad():
        plain = model(x)
        f = model.features(x)
    with torch.no_grad(), netlens.probe(model, "features, features:consumed") as p:
        out = model(x)
    assert torch.equal(out, plain)  # the model computes the same
    assert torch.equal(p["features"].output, f) and f.min() < 0  # as the module returned it
    assert torch.allclose(p["features:consumed"].output, model.after(f), rtol=0, atol=0)


def test_consumed_gradients_match_a_hand_split():
    model = Head("relu").eval()
    x = _x(6)
    with assert_model_unchanged(model), netlens.probe(model, "features:consumed", grads=True) as p:
        logits = model(x)
        p.compute_grads(logits[:, 2].sum())
    with torch.no_grad():
        a = F.relu(model.features(x))
    leaf = a.double().requires_grad_(True)
    w, b = (t.detach().double() for t in (model.classifier.weight, model.classifier.bias))
    ref_logits = F.linear(F.adaptive_avg_pool2d(leaf, 1).flatten(1), w, b)
    (ref,) = torch.autograd.grad(ref_logits[:, 2].sum(), leaf)
    # the model's float32 logits against a float64 reference: float32's precision, not 1e-6
    assert torch.allclose(logits.double(), ref_logits, rtol=1e-5, atol=1e-6)
    got = p["features:consumed"].grad
    assert got is not None and torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-7)
    assert torch.equal(p["features:consumed"].output.detach(), a)


def test_consumed_never_read_is_the_final_value():
    class ReturnsIt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y.relu_()
            return y

    model = ReturnsIt().eval()
    x = _x(7)
    with torch.no_grad(), netlens.probe(model, "conv:consumed, conv") as p:
        y = model(x)
    assert torch.equal(p["conv:consumed"].output, y) and y.min() >= 0
    assert p["conv"].output.min() < 0


def test_consumed_leaves_no_mode_behind_when_the_model_raises():
    model = Head("relu").eval()

    def explode(m, i, o):
        raise RuntimeError("boom")

    handle = model.classifier.register_forward_hook(explode)
    with assert_model_unchanged(model), pytest.raises(RuntimeError, match="boom"):
        with netlens.probe(model, "features:consumed"):
            model(_x(8))
    handle.remove()
    assert torch._C._len_torch_function_stack() == 0


def test_hook_call_replaces_one_call_only():
    from netlens.call_hooks import hook_call
    from netlens.testing import assert_no_hooks

    model = SharedAct().eval()
    x = _x(9, (2, 3, 16, 16))
    seen: list[torch.Tensor] = []

    def zero(out: torch.Tensor) -> torch.Tensor:
        seen.append(out)
        return torch.zeros_like(out)

    with torch.no_grad():
        for layer in ("act@1", "act@-1"):
            seen.clear()
            with hook_call(model, layer, zero, example=x[:1]):
                out = model(x)
            assert len(seen) == 1 and seen[0].shape[1] == 16  # the second call only
            assert torch.allclose(out, model.fc.bias.expand(2, -1))
        with hook_call(model, "act@0", zero):
            out = model(x)
        ref = model.fc(torch.relu(model.conv(torch.zeros(2, 8, 16, 16))).mean((2, 3)))
        assert torch.allclose(out, ref)
    assert_no_hooks(model)
    with pytest.raises(NetlensError, match="takes one layer"):
        with hook_call(model, "stem, conv", zero):
            pass


def test_hook_call_on_consumed_sees_and_replaces_what_the_head_reads():
    from netlens.call_hooks import hook_call

    model = Head("relu").eval()
    x = _x(10)
    seen: list[torch.Tensor] = []

    def halve(out: torch.Tensor) -> torch.Tensor:
        seen.append(out.clone())
        return out * 0.5

    with torch.no_grad():
        f = model.features(x)
        with hook_call(model, "features:consumed", halve):
            out = model(x)
        ref = model.classifier(F.adaptive_avg_pool2d(F.relu(f) * 0.5, 1).flatten(1))
    assert len(seen) == 1 and torch.equal(seen[0], F.relu(f))
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert torch._C._len_torch_function_stack() == 0


def test_hook_call_removes_its_hooks_when_the_model_raises():
    from netlens.call_hooks import hook_call
    from netlens.testing import assert_no_hooks

    model = Head("relu").eval()

    def explode(out: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt

    for layer in ("features", "features:consumed"):
        with pytest.raises(KeyboardInterrupt), hook_call(model, layer, explode):
            model(_x(11))
        assert_no_hooks(model)
        assert torch._C._len_torch_function_stack() == 0


def test_a_missing_call_lists_the_last_forwards_calls() -> None:
    """After forwards with 4 and then 2 calls, "ran 2 time(s)" listed step@0 … step@3."""

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
            for _ in range(n):
                x = torch.tanh(self.step(x))
            return x

    model, x = Loop(), torch.randn(2, 4)
    with torch.no_grad(), netlens.probe(model, "step@5") as p:
        model(x, 4)
        model(x, 2)
    with pytest.raises(
        NetlensError, match=r"ran 2 time\(s\).*pick step@0 \(2×4\), step@1 \(2×4\);"
    ):
        _ = p["step@5"].output


@pytest.mark.parametrize("style", ["setitem", "masked_fill", "isfinite"])
def test_consumed_is_what_the_next_layer_reads_after_a_masked_rewrite(style: str) -> None:
    """``y[y < 0] = 0`` reads ``y`` first to make its mask: ``:consumed`` took that read, the
    tensor before the rewrite (off by 1.7), and ``auto`` chose it for Grad-CAM."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if style == "setitem":
                y[y < 0] = 0
            elif style == "masked_fill":
                y.masked_fill_(y > 0.3, 0.3)
            else:
                assert torch.isfinite(y).all()
                y.relu_()
            self.read = y.clone()
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad(), netlens.probe(model, "conv:consumed") as p:
        model(x)
    assert torch.equal(p["conv:consumed"].output, model.read)
